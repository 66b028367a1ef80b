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

from experiments import lm_recipe
from experiments.presence_lm.configs import quick


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "pod"
  config.methods = ("uniform", "presence_mb")
  lm_recipe.pod_overrides(config)
  config.layers = None
  config.diagnostic = None
  return config
