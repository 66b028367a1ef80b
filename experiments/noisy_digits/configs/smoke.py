"""The end-to-end test: one noise setting, 2 seeds, 96 steps; one compile per method kind.

Reweight shares the importance weights of DWS and RENT; it, VolMinNet and the
robustness studies run in the slow tests.
"""

import ml_collections

from experiments.noisy_digits.configs import quick


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "smoke"
  config.seeds = (0, 1)
  config.settings = ("sym50",)
  config.hidden = (64, 64)
  config.num_steps = 96
  config.warmup_steps = 48
  config.eval_every = 16
  config.methods = ("ce", "forward_est", "rent_est", "dws_true")
  return config
