"""``python -m experiments.tiw_digits.main --config=quick --config.num_steps=500 --workdir=DIR``.

The shared command line of :mod:`experiments.cli`.
"""

from experiments import cli
from experiments.tiw_digits.train import EXPERIMENT, train_and_evaluate


def main(argv=None) -> dict:
  return cli.main(EXPERIMENT, train_and_evaluate, argv)


if __name__ == "__main__":
  main()
