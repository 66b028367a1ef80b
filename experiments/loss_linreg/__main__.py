"""``python -m experiments.loss_linreg [--config quick|full|smoke] [--out results]``."""

from __future__ import annotations

from experiments import common
from experiments.loss_linreg import get_config, run


def main(argv=None) -> None:
  args = common.parse_args(argv, "Loss-based reweighting on linear regression.")
  run(get_config(args.config), args.out)


if __name__ == "__main__":
  main()
