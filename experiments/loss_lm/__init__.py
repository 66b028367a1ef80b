"""Loss-based reweighting for causal-LM pretraining on a mixture of domains (Sow et al.)."""

from experiments.loss_lm.configs import get_config
from experiments.loss_lm.train import EXPERIMENT, train_and_evaluate

__all__ = ["EXPERIMENT", "get_config", "train_and_evaluate"]
