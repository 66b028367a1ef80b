"""Experiment C: PRESENCE self-influence reweighting of a small LM on noisy stdlib data."""

from experiments.presence_lm.configs import get_config
from experiments.presence_lm.train import EXPERIMENT, run

__all__ = ["EXPERIMENT", "get_config", "run"]
