"""TIW-DSM on a 2-D Gaussian mixture with overlapping modes and a biased mode mix (Kim et al., ICLR 2024)."""

from experiments.tiw_gmm.configs import get_config
from experiments.tiw_gmm.train import EXPERIMENT, train_and_evaluate

__all__ = ["EXPERIMENT", "get_config", "train_and_evaluate"]
