"""Experiment B: loss-based reweighting for causal-LM pretraining (Sow et al.)."""

from experiments.loss_lm.configs import get_config
from experiments.loss_lm.train import EXPERIMENT, run

__all__ = ["EXPERIMENT", "get_config", "run"]
