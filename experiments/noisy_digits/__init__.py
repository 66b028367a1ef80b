"""Noisy labels on 8x8 digits: CE / Forward / Reweight / DWS / RENT (Bae et al., ICLR 2024)."""

from experiments.noisy_digits.configs import get_config
from experiments.noisy_digits.train import EXPERIMENT, train_and_evaluate

__all__ = ["EXPERIMENT", "get_config", "train_and_evaluate"]
