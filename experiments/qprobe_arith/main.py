"""``python -m experiments.qprobe_arith.main --config=quick --config.n_samples=96 --workdir=DIR``.

The shared command line of :mod:`experiments.cli`.
"""

from experiments import cli
from experiments.qprobe_arith.train import EXPERIMENT, train_and_evaluate


def main(argv=None) -> dict:
  return cli.main(EXPERIMENT, train_and_evaluate, argv)


if __name__ == "__main__":
  main()
