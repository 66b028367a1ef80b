"""The longer CPU run: 5 seeds, a larger model (4 x 128), the same one pass of data.

The offline domains hold ~0.4M training tokens at a uniform mix (the English
prose domain, ~0.5 MB, is the smallest), so one pass bounds the steps; ``full``
adds seeds and model size, not passes. About 15-20 minutes on 2 CPU cores.
"""

import ml_collections

from experiments.loss_lm.configs import quick


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "full"
  config.seeds = (0, 1, 2, 3, 4)
  config.model = dict(d_model=128, n_layers=4, n_heads=4, d_ff=512)
  config.bf16_methods = ("uniform", "linupper")
  return config
