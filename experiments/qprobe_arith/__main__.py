"""``python -m experiments.qprobe_arith [--config quick|full|smoke] [--out results]``."""

from __future__ import annotations

from experiments import common
from experiments.qprobe_arith import get_config, run


def main(argv=None) -> None:
  args = common.parse_args(argv, "Q-probes on an arithmetic task with an executable reward.")
  run(get_config(args.config), args.out)


if __name__ == "__main__":
  main()
