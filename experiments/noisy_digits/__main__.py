"""``python -m experiments.noisy_digits``: the same as ``python -m experiments.noisy_digits.main``."""

from experiments.noisy_digits.main import main

if __name__ == "__main__":
  main()
