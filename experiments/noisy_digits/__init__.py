"""Experiment C: noisy labels on 8x8 digits, Forward / Reweight / DWS / RENT (Bae et al.)."""

from experiments.noisy_digits.configs import get_config
from experiments.noisy_digits.train import EXPERIMENT, run

__all__ = ["EXPERIMENT", "get_config", "run"]
