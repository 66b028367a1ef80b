"""``python -m experiments.tiw_gmm [--config quick|full|smoke] [--out results]``."""

from __future__ import annotations

from experiments import common
from experiments.tiw_gmm import get_config, run


def main(argv=None) -> None:
  args = common.parse_args(argv, "TIW-DSM on a 2-D Gaussian mixture.")
  run(get_config(args.config), args.out)


if __name__ == "__main__":
  main()
