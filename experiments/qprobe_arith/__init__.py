"""Experiment: Q-probes on an arithmetic task with an executable reward (Li et al., 2024)."""

from experiments.qprobe_arith.configs import get_config
from experiments.qprobe_arith.experiment import EXPERIMENT, run

__all__ = ["EXPERIMENT", "get_config", "run"]
