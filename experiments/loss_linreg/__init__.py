"""Experiment A: loss-based reweighting on linear regression (Sow et al., Fig. 7)."""

from experiments.loss_linreg.configs import get_config
from experiments.loss_linreg.train import EXPERIMENT, run

__all__ = ["EXPERIMENT", "get_config", "run"]
