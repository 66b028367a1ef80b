"""``python -m experiments.noisy_digits.main --config=quick --config.num_steps=1120 --workdir=DIR``.

The shared command line of :mod:`experiments.cli`.
"""

from experiments import cli
from experiments.noisy_digits.train import EXPERIMENT, train_and_evaluate


def main(argv=None) -> dict:
  return cli.main(EXPERIMENT, train_and_evaluate, argv)


if __name__ == "__main__":
  main()
