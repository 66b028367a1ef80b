"""``python -m experiments.loss_linreg``: the same as ``python -m experiments.loss_linreg.main``."""

from experiments.loss_linreg.main import main

if __name__ == "__main__":
  main()
