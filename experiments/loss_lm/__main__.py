"""``python -m experiments.loss_lm``: the same as ``python -m experiments.loss_lm.main``."""

from experiments.loss_lm.main import main

if __name__ == "__main__":
  main()
