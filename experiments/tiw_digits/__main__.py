"""``python -m experiments.tiw_digits [--config quick|full|smoke] [--out results]``."""

from __future__ import annotations

from experiments import common
from experiments.tiw_digits import get_config, run


def main(argv=None) -> None:
  args = common.parse_args(argv, "TIW-DSM on long-tailed 8x8 digits.")
  run(get_config(args.config), args.out)


if __name__ == "__main__":
  main()
