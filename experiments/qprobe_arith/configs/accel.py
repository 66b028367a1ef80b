"""The accelerator run: ``full`` with the authors' 464 training prompts and 10 seeds.

Not run here; the sampling of 192 completions per prompt dominates on CPU (the
library's sampler re-runs the whole row for each token).
"""

import ml_collections

from experiments.qprobe_arith.configs import full


def get_config() -> ml_collections.ConfigDict:
  config = full.get_config()
  config.name = "accel"
  config.seeds = tuple(range(10))
  config.task.n_probe_train = 464
  return config
