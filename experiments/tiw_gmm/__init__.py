"""Experiment: TIW-DSM on a 2-D Gaussian mixture with a mode-proportion bias (Kim et al.)."""

from experiments.tiw_gmm.configs import get_config
from experiments.tiw_gmm.train import EXPERIMENT, run

__all__ = ["EXPERIMENT", "get_config", "run"]
