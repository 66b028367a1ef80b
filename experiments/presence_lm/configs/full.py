"""The longer CPU run: 5 seeds, the paper's stage ablations, a larger model; one pass.

Adds the paper's ablations at microbatch level (direct-only, inverse-only,
reversed order) to the headline, 5 seeds, a 4 x 128 model; the diagnostic gets 5
seeds and the per-sample ablations. About 40-60 minutes on 2 CPU cores.
"""

import ml_collections

from experiments.presence_lm.configs import quick


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "full"
  config.methods = ("uniform", "presence_mb", "presence", "direct_mb", "inverse_mb", "reversed_mb")
  config.seeds = (0, 1, 2, 3, 4)
  config.model = dict(d_model=128, n_layers=4, n_heads=4, d_ff=512)
  config.diagnostic.methods = ("uniform", "presence", "presence_mb", "direct", "inverse")
  return config
