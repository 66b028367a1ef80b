"""The end-to-end test: two-digit problems (a copying LM is right a third of the time), tiny LMs, 6 x 4 prompts of 24 samples, 3 epochs, 1 seed, 1 diagnostic.

XLA compilation is most of its time (every LM and every probe compiles its own step).
"""

import ml_collections

from experiments.qprobe_arith.configs import quick


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "smoke"
  config.methods = ("L_Q", "L_CE", "L_PG", "api_L_PG")
  config.seeds = (0,)
  config.task.n_digits = 2
  config.task.max_digit = 4
  config.task.n_probe_train = 6
  config.task.n_probe_test = 4
  for lm in (config.base_lm, config.api_lm):
    lm.model = dict(d_model=16, n_layers=2, n_heads=2, d_ff=32)
    lm.num_steps = 150
    lm.batch_size = 16
    lm.lr_warmup_steps = 2
  config.max_new_tokens = 6
  config.n_samples = 24
  config.num_steps = 3
  config.probe.batch_size = 40
  config.probe.group_size = 4
  config.k = 8
  config.diagnostics = dict(L_PG_lr1e3=dict(method="L_PG", learning_rate=1e-3))
  config.ks = (1, 2, 8)
  config.policy_batch_size = 256
  return config
