"""The end-to-end test: tiny data, 40 steps, 2 seeds."""

import ml_collections

from experiments.loss_linreg.configs import quick


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "smoke"
  config.seeds = (0, 1)
  config.num_steps = 40
  config.eval_every = 10
  config.data.n_train = 256
  config.data.n_test = 128
  return config
