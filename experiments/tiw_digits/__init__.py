"""TIW-DSM on long-tailed 8x8 digits with a small balanced reference set (Kim et al., ICLR 2024)."""

from experiments.tiw_digits.configs import get_config
from experiments.tiw_digits.train import EXPERIMENT, train_and_evaluate

__all__ = ["EXPERIMENT", "get_config", "train_and_evaluate"]
