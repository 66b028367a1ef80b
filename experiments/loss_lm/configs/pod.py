"""A TPU v5e-64 slice: the ~1B Llama (1.06B parameters at vocab 32000), pure FSDP.

Mesh ``(data 1, fsdp 64, tensor 1)``; 8 sequences of 2048 tokens per chip (512 per
step, ~1M tokens); parameters and AdamW moments sharded 64 ways (198 MB of state
per chip), activations rematerialised per block; each host loads only its chips'
rows. Ahead-of-time compilation on 64 fake CPU devices puts the per-chip peak at
~12.4 GB of v5e's 16 GiB and the step at 13.9 TFLOP per chip: about 0.12-0.18 s per
step at 40-60% MFU (6-9M tokens/s). Launch on every worker at once: ``gcloud
compute tpus tpu-vm ssh NAME --worker=all --command "cd jaxweights &&
.venv/bin/python -m experiments.loss_lm --config pod --distributed auto"``. The
offline mixture (~3M tokens) is a few steps per pass at this batch: on a pod this
config checks throughput and memory (``max_passes`` is off); real pretraining
needs a real corpus behind the same loader.
"""

import ml_collections

from experiments import lm_recipe
from experiments.loss_lm.configs import quick

# Re-exported for benchmarks.pod_memory.
POD_MODEL = lm_recipe.POD_MODEL


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "pod"
  config.methods = ("uniform", "linupper")
  lm_recipe.pod_overrides(config)
  config.weight_warmup_steps = 40
  config.checkpoint_every = 100
  config.bf16_methods = ()
  return config
