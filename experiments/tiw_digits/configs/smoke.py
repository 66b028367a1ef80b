"""The end-to-end test: every headline method, tiny sizes, 2 seeds, 20 steps."""

import ml_collections

from experiments.tiw_digits.configs import quick


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "smoke"
  config.seeds = (0, 1)
  config.num_steps = 20
  config.log_every = 10
  config.eval_every = 10
  config.n_generate = 200
  config.sampler_steps = 3
  config.batch_size = 32
  config.model = dict(kind="mlp", hidden=32, depth=1, embed_dim=8, channels=8)
  config.encoder = dict(hidden=16, depth=1, embed_dim=8, num_steps=10, learning_rate=1e-3)
  config.disc.candidates = ((8, 1, 10),)
  config.disc.batch_size = 32
  config.disc.draws = 2
  config.classifier = dict(hidden=16, max_iter=50)
  return config
