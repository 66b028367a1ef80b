"""The accelerator run: a 4 x 256 model (~2.3M parameters), 10 seeds, one pass.

Every domain is read whole (the standard library ~10 MB, the C headers ~0.9 MB,
the prose ~0.5 MB) at vocab 4096; the uniform mix is bounded by the prose domain,
so one pass is ~0.35M tokens: 40 steps of 32 x 256 tokens. The run is short; its
value is the seed count (10 seeds x 4 methods, minutes on one GPU). A faithful
longer run needs a larger corpus behind the same loader.
"""

import ml_collections

from experiments.loss_lm.configs import quick


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "accel"
  config.seeds = tuple(range(10))
  config.corpus.vocab_size = 4096
  config.corpus.max_bytes_per_domain = None
  config.model = dict(d_model=256, n_layers=4, n_heads=4, d_ff=1024)
  config.seq_len = 256
  config.batch_size = 32
  config.num_steps = 40
  config.lr_warmup_steps = 2
  config.weight_warmup_steps = 3
  config.log_every = 2
  config.eval_every = 10
  config.bf16_methods = ("uniform", "linupper", "quadratic", "extremes")
  return config
