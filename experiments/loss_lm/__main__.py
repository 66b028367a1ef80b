"""``python -m experiments.loss_lm [--config quick|full|smoke] [--out results]``."""

from __future__ import annotations

from experiments import common
from experiments.loss_lm import get_config, run


def main(argv=None) -> None:
  args = common.parse_args(argv, "Loss-based reweighting for LM pretraining.")
  config = get_config(args.config)
  if args.checkpoint_every is not None:
    config["checkpoint_every"] = args.checkpoint_every
  run(config, args.out)


if __name__ == "__main__":
  main()
