"""Q-probes on a task with many distinct correct completions and an executable reward (Li et al., 2024)."""

from experiments.qprobe_arith.configs import get_config
from experiments.qprobe_arith.train import EXPERIMENT, train_and_evaluate

__all__ = ["EXPERIMENT", "get_config", "train_and_evaluate"]
