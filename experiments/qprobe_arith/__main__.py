"""``python -m experiments.qprobe_arith``: the same as ``python -m experiments.qprobe_arith.main``."""

from experiments.qprobe_arith.main import main

if __name__ == "__main__":
  main()
