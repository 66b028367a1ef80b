"""The headline run: 5 seeds, the small U-Net, the ablation rows; about an hour on 2 CPU cores.

``python -m experiments.tiw_digits --config=full``
"""

import ml_collections

from experiments.tiw_digits.configs import quick


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "full"
  config.seeds = (0, 1, 2, 3, 4)
  config.methods = quick.METHODS + ("tiw_weight_only", "tiw_correction_only")
  config.model.kind = "unet"
  config.num_steps = 10000
  config.eval_every = 1000
  config.learning_rate = 5e-4
  config.n_generate = 2000
  config.encoder.num_steps = 4000
  config.disc.candidates = ((16, 1, 100), (32, 1, 300), (32, 1, 1200), (128, 2, 1200))
  config.disc.select_seeds = ()  # choose the head on every seed's own validation split
  return config
