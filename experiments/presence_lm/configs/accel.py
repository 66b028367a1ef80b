"""The accelerator run: a 4 x 256 model, 10 seeds, every stage ablation, one pass.

Every domain read whole at vocab 4096 (bounded by the prose domain: ~0.35M tokens
per pass); batch 64 x 128 in 8 microbatches, so one pass is ~40 steps and the
switch falls at step 4. Minutes on one GPU; its value is the seed count.
"""

import ml_collections

from experiments.presence_lm.configs import full


def get_config() -> ml_collections.ConfigDict:
  config = full.get_config()
  config.name = "accel"
  config.seeds = tuple(range(10))
  config.corpus.vocab_size = 4096
  config.corpus.max_bytes_per_domain = None
  config.model = dict(d_model=256, n_layers=4, n_heads=4, d_ff=1024)
  config.seq_len = 128
  config.batch_size = 64
  config.num_steps = 40
  config.lr_warmup_steps = 1
  config.log_every = 2
  config.eval_every = 10
  config.diagnostic.batch_size = 32
  config.diagnostic.num_steps = 60
  return config
