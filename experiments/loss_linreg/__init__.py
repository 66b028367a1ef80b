"""Loss-based reweighting on linear regression (Sow et al., ICLR 2025, Fig. 7)."""

from experiments.loss_linreg.configs import get_config
from experiments.loss_linreg.train import EXPERIMENT, train_and_evaluate

__all__ = ["EXPERIMENT", "get_config", "train_and_evaluate"]
