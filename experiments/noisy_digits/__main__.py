"""``python -m experiments.noisy_digits [--config quick|full|smoke] [--out results]``."""

from __future__ import annotations

from experiments import common
from experiments.noisy_digits import get_config, run


def main(argv=None) -> None:
  args = common.parse_args(argv, "Noisy labels on digits: CE, Forward, Reweight, DWS, RENT.")
  run(get_config(args.config), args.out)


if __name__ == "__main__":
  main()
