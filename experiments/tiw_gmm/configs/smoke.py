"""The end-to-end test: every headline method, tiny sizes, 2 seeds, 30 steps."""

import ml_collections

from experiments.tiw_gmm.configs import quick


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "smoke"
  config.seeds = (0, 1)
  config.methods = quick.METHODS + ("tiw_oracle",)
  config.n_bias = 500
  config.n_heldout = 300
  config.n_generate = 300
  config.num_steps = 30
  config.log_every = 10
  config.eval_every = 15
  config.sampler_steps = 4
  config.model = dict(hidden=16, depth=1, embed_dim=8)
  config.disc = dict(hidden=16, depth=1, num_steps=20, batch_size=64, learning_rate=3e-4)
  config.ratio_grid = dict(t_min=1e-3, t_max=1.0, num=3, points=100)
  config.n_target_mc = 20_000
  return config
