"""``python -m experiments.presence_lm [--config quick|full|smoke] [--out results]``."""

from __future__ import annotations

from experiments import common
from experiments.presence_lm import get_config, run


def main(argv=None) -> None:
  args = common.parse_args(argv, "PRESENCE self-influence reweighting on a noisy LM corpus.")
  run(get_config(args.config), args.out)


if __name__ == "__main__":
  main()
