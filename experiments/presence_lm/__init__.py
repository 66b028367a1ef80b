"""PRESENCE self-influence reweighting of a small LM on a mixture of domains (Thakkar et al.)."""

from experiments.presence_lm.configs import get_config
from experiments.presence_lm.train import EXPERIMENT, train_and_evaluate

__all__ = ["EXPERIMENT", "get_config", "train_and_evaluate"]
