"""``python -m experiments.tiw_gmm``: the same as ``python -m experiments.tiw_gmm.main``."""

from experiments.tiw_gmm.main import main

if __name__ == "__main__":
  main()
