"""Experiment: TIW-DSM on 8x8 digits with a long-tailed class mix (Kim et al.)."""

from experiments.tiw_digits.configs import get_config
from experiments.tiw_digits.train import EXPERIMENT, run

__all__ = ["EXPERIMENT", "get_config", "run"]
