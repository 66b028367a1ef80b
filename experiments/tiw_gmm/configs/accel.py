"""The accelerator run: ``full`` with the authors' 20k discriminator steps and 10 seeds.

Not run here; on one GPU each seed takes minutes.
"""

import ml_collections

from experiments.tiw_gmm.configs import full


def get_config() -> ml_collections.ConfigDict:
  config = full.get_config()
  config.name = "accel"
  config.seeds = tuple(range(10))
  config.disc.num_steps = 20000
  config.num_steps = 20000
  config.eval_every = 5000
  return config
