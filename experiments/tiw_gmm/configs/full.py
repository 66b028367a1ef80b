"""5 seeds, longer training, plus the ablation and oracle rows; 17 min on 2 shared CPU cores.

``python -m experiments.tiw_gmm --config=full``

21 min of CPU (2026-11-30). The measured results are in the generated table and
README.md.
"""

import ml_collections

from experiments.tiw_gmm.configs import quick


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "full"
  config.methods = quick.METHODS + ("tiw_weight_only", "tiw_correction_only", "tiw_oracle")
  config.model = dict(hidden=128, depth=3, embed_dim=32)
  config.num_steps = 5000
  config.eval_every = 1000
  config.n_generate = 8000
  config.sampler_steps = 32
  config.disc.num_steps = 4000
  config.disc.batch_size = 256
  config.ratio_grid.num = 14
  config.ratio_grid.points = 1000
  return config
