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

from experiments.loss_lm.configs import quick

# The ~1B Llama-style decoder of the pod configurations (benchmarks.pod_memory
# checks its per-device memory by ahead-of-time compilation).
POD_MODEL = dict(d_model=2048, n_layers=18, n_heads=16, d_ff=5632, tied=False, dtype="bfloat16", remat=True)


def get_config() -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.name = "pod"
  config.seeds = (0,)
  config.methods = ("uniform", "linupper")
  config.corpus.vocab_size = 32000
  config.corpus.max_bytes_per_domain = None
  config.model_kind = "llama"
  config.model = POD_MODEL
  config.mesh = dict(data=1, fsdp=64, tensor=1)
  config.seq_len = 2048
  config.batch_size = 512
  config.eval_batch_size = 512
  config.eval_max_batches = 4
  config.num_steps = 200
  config.max_passes = None
  config.peak_lr = 3e-4
  config.end_lr = 3e-5
  config.lr_warmup_steps = 20
  config.weight_warmup_steps = 40
  config.log_every = 10
  config.eval_every = 100
  config.checkpoint_every = 100
  config.bf16_methods = ()
  return config
