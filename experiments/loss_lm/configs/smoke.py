"""The end-to-end test: a 1-layer toy on 3 x 40 kB of the mixture, 12 steps, 2 seeds."""

import ml_collections

from experiments.loss_lm.configs import quick


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "smoke"
  config.seeds = (0, 1)
  config.corpus.vocab_size = 300
  config.corpus.max_bytes_per_domain = 40_000
  config.model = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64)
  config.seq_len = 16
  config.batch_size = 8
  config.num_steps = 12
  config.lr_warmup_steps = 2
  config.weight_warmup_steps = 4
  config.log_every = 2
  config.eval_every = 6
  config.eval_batch_size = 16
  config.bf16_methods = ("linupper",)
  return config
