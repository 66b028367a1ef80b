"""10 seeds x 2000 steps; a few minutes on 2 CPU cores, no accelerator needed."""

import ml_collections

from experiments.loss_linreg.configs import quick


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "full"
  config.seeds = tuple(range(10))
  config.num_steps = 2000
  config.eval_every = 10
  return config
