"""The longer CPU run behind RESULTS.md: the quick recipe with 5 seeds and 200 training prompts.

``python -m experiments.qprobe_arith --config=full``. Same LMs and samples per
prompt as ``quick``; more training prompts (200, theirs 464) and seeds. About
twice the quick config's time on 2 CPU cores.
"""

import ml_collections

from experiments.qprobe_arith.configs import quick


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "full"
  config.seeds = (0, 1, 2, 3, 4)
  config.task.n_probe_train = 200
  config.methods = ("L_Q", "L_CE", "L_PG", "api_L_Q", "api_L_CE", "api_L_PG")
  return config
