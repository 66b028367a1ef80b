"""The accelerator run: ``full`` (U-Net, the head chosen on every seed's own validation
split) with 10 seeds and 4x the score-model steps. Not run here (``full`` alone is about
an hour of CPU)."""

import ml_collections

from experiments.tiw_digits.configs import full


def get_config() -> ml_collections.ConfigDict:
  config = full.get_config()
  config.name = "accel"
  config.seeds = tuple(range(10))
  config.num_steps = 40000
  config.eval_every = 5000
  return config
