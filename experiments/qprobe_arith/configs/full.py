"""The longer CPU run behind RESULTS.md: the quick recipe with 5 seeds and 200 training prompts.

``python -m experiments.qprobe_arith --config=full``. The quick recipe with more
training prompts (200, theirs 464), seeds and API rows. The split differs, so the
LMs' text and hence the LMs differ from ``quick``'s. About 8.4 min of CPU (28 min
wall on 2 cores shared with three other jobs, 2026-11-30). The results are in the
generated table and README.md.
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
