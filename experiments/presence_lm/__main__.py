"""``python -m experiments.presence_lm``: the same as ``python -m experiments.presence_lm.main``."""

from experiments.presence_lm.main import main

if __name__ == "__main__":
  main()
