"""``python -m experiments.tiw_digits``: the same as ``python -m experiments.tiw_digits.main``."""

from experiments.tiw_digits.main import main

if __name__ == "__main__":
  main()
