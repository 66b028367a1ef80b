"""A TPU v5e-64 slice: PRESENCE on the ~1B Llama of ``loss_lm``'s pod config.

Mesh ``(data 1, fsdp 64, tensor 1)``, 512 sequences of 2048 tokens per step (8 per
chip), 8 microbatches; the book-keeping step forms the weighted gradient in the
same backward pass. Llama stacks its blocks with ``nnx.scan``, so ``layers``
cannot name the first block alone: every layer is scored. Launch as ``loss_lm``'s
pod config (``--config pod --distributed auto`` on every worker). The offline
corpus makes this a throughput and memory check, not a pretraining run
(``max_passes`` is off), without the diagnostic.
"""

import ml_collections

from experiments.loss_lm.configs.pod import POD_MODEL
from experiments.presence_lm.configs import quick


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "pod"
  config.seeds = (0,)
  config.methods = ("uniform", "presence_mb")
  config.corpus.vocab_size = 32000
  config.corpus.max_bytes_per_domain = None
  config.model_kind = "llama"
  config.model = POD_MODEL
  config.mesh = dict(data=1, fsdp=64, tensor=1)
  config.layers = None
  config.seq_len = 2048
  config.batch_size = 512
  config.eval_batch_size = 512
  config.eval_max_batches = 4
  config.num_steps = 200
  config.max_passes = None
  config.peak_lr = 3e-4
  config.end_lr = 3e-5
  config.lr_warmup_steps = 20
  config.log_every = 10
  config.eval_every = 100
  config.diagnostic = None
  return config
