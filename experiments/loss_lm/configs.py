"""Configurations of the LM-pretraining experiment.

The recipe follows the paper's GPT-2 runs scaled down: AdamW (b2 0.95, weight
decay 0.01), linear LR warm-up then cosine decay to a fifth of the peak, global
gradient clipping at 1.0, uniform weights for a warm-up period twice the LR
warm-up (1000 vs 500 steps in the paper), then r = 0.4 for LinUpper and Extremes
and r = 1.0 for Quadratic (the paper's defaults), delta = 1.
"""

from __future__ import annotations

from experiments import common
from experiments.common import Config

# The paper's temperatures per strategy.
PAPER_R = {"linupper": 0.4, "extremes": 0.4, "quadratic": 1.0}


def quick() -> Config:
  """Tiny model, 1.5 MB of stdlib, 4 methods x 3 seeds x 400 steps.

  About 0.75 epochs of the training tokens, so it is still a (short)
  pretraining run rather than memorisation. Resources: one CPU process, < 1 GB
  RAM; a few minutes on 2 CPU cores (each step ~40 ms uncontended).
  """
  return Config(
    name="quick",
    methods=("uniform", "linupper", "quadratic", "extremes"),
    seeds=(0, 1, 2),
    corpus=dict(vocab_size=1024, max_bytes=1_500_000, test_fraction=0.1, seed=0),
    # Cache of the tokenised corpus (None: ~/.cache/jaxweights).
    cache_dir=None,
    # "transformer" (jaxweights.TransformerLM) or "llama" (jaxweights.Llama).
    model_kind="transformer",
    # The model config's fields besides vocab_size and max_len
    # (= TransformerConfig.tiny()).
    model=dict(d_model=96, n_layers=2, n_heads=4, d_ff=384),
    # None: a data mesh over every device; dict(data=, fsdp=, tensor=): a sharded
    # train state on jaxweights.make_mesh (see experiments/lm_recipe.py).
    mesh=None,
    seq_len=64,
    batch_size=16,
    num_steps=400,
    peak_lr=1e-3,
    end_lr=2e-4,
    lr_warmup_steps=20,
    weight_decay=0.01,
    b2=0.95,
    clip_norm=1.0,
    r=PAPER_R,
    delta=1.0,
    weight_warmup_steps=40,
    log_every=5,
    eval_every=50,
    eval_batch_size=64,
    # None: every held-out window at every evaluation.
    eval_max_batches=None,
    # 0: no checkpoints. Otherwise orbax checkpoints every N steps under
    # <out>/loss_lm/checkpoints/<method>_seed<k>/ and a rerun continues every
    # run from its latest checkpoint (a finished run is only re-evaluated);
    # delete that folder to start over after changing the config.
    checkpoint_every=0,
    # Shard the batch over all devices (jaxweights.data_mesh) when more than one
    # is present; on one device the step runs unsharded.
    use_mesh=True,
    # Mixed-precision check: these methods are run again with bf16 compute
    # (float32 params, optimiser state and weights), same seeds and batches,
    # and compared with their float32 runs (bf16_vs_f32 in the table).
    bf16_methods=("uniform", "linupper"),
  )


def full() -> Config:
  """The accelerator run: TransformerConfig.small(), the whole stdlib, 20k steps.

  Sizes: d_model 256, 4 layers, vocab 4096 (~5.3M parameters), seq 256,
  batch 64 (16k tokens/step, ~0.6 TFLOP/step), 20k steps, 5 seeds x 4 methods =
  20 runs. Expected resources: one GPU (A100/H100 class) with < 8 GB of memory,
  roughly 3-6 GPU-minutes per run, i.e. about 1-2 GPU-hours in all (runs are
  sequential; the batch is sharded over every visible device if there are
  several). Not feasible on a laptop CPU (days). The whole stdlib is ~10 MB of
  source, ~3M training tokens at vocab 4096, so 20k x 16k tokens is roughly
  100 epochs: unlike the paper's single pass over SlimPajama, this is a
  multi-epoch regime (the table states the epoch count), so held-out loss may
  turn up late in training. Checkpoints every 2000 steps make it resumable.
  """
  return quick().replace(
    name="full",
    seeds=(0, 1, 2, 3, 4),
    corpus=dict(vocab_size=4096, max_bytes=None, test_fraction=0.1, seed=0),
    model=dict(d_model=256, n_layers=4, n_heads=4, d_ff=1024),
    seq_len=256,
    batch_size=64,
    num_steps=20_000,
    peak_lr=5e-4,
    end_lr=1e-4,
    lr_warmup_steps=500,
    weight_warmup_steps=1000,
    log_every=50,
    eval_every=1000,
    eval_batch_size=64,
    checkpoint_every=2000,
    bf16_methods=("uniform", "linupper", "quadratic", "extremes"),
  )


def smoke() -> Config:
  """The end-to-end test: a 1-layer toy on 150 kB of stdlib, 12 steps, 2 seeds."""
  return quick().replace(
    name="smoke",
    seeds=(0, 1),
    corpus=dict(vocab_size=300, max_bytes=150_000, test_fraction=0.1, seed=0),
    model=dict(d_model=32, n_layers=1, n_heads=2, d_ff=64),
    seq_len=16,
    batch_size=8,
    num_steps=12,
    lr_warmup_steps=2,
    weight_warmup_steps=4,
    log_every=2,
    eval_every=6,
    eval_batch_size=16,
    bf16_methods=("linupper",),
  )


# The ~1B Llama-style decoder of the pod configurations (benchmarks.pod_memory
# checks its per-device memory by ahead-of-time compilation).
POD_MODEL = dict(d_model=2048, n_layers=18, n_heads=16, d_ff=5632, tied=False, dtype="bfloat16", remat=True)


def pod() -> Config:
  """A TPU v5e-64 slice: the ~1B Llama (1.06B parameters at vocab 32000), pure FSDP.

  Mesh ``(data 1, fsdp 64, tensor 1)``; 8 sequences of 2048 tokens per chip (512
  per step, ~1M tokens); parameters and AdamW moments sharded 64 ways (198 MB of
  state per chip), activations rematerialised per block; each host loads only its
  chips' rows. Ahead-of-time compilation on 64 fake CPU devices puts the per-chip
  peak at ~12.4 GB of v5e's 16 GiB and the step at 13.9 TFLOP per chip: about
  0.12-0.18 s per step at 40-60% MFU (6-9M tokens/s). Launch on every worker at
  once: ``gcloud compute tpus tpu-vm ssh NAME --worker=all --command "cd jaxweights
  && .venv/bin/python -m experiments.loss_lm --config pod --distributed auto"``.
  The offline corpus (~3M stdlib tokens) is 3 steps per epoch at this batch: on a
  pod this config checks throughput and memory; real pretraining needs a real
  corpus behind the same loader.
  """
  return full().replace(
    name="pod",
    seeds=(0,),
    methods=("uniform", "linupper"),
    corpus=dict(vocab_size=32000, max_bytes=None, test_fraction=0.1, seed=0),
    model_kind="llama",
    model=POD_MODEL,
    mesh=dict(data=1, fsdp=64, tensor=1),
    seq_len=2048,
    batch_size=512,
    eval_batch_size=512,
    eval_max_batches=4,
    num_steps=200,
    peak_lr=3e-4,
    end_lr=3e-5,
    lr_warmup_steps=20,
    weight_warmup_steps=40,
    log_every=10,
    eval_every=100,
    checkpoint_every=100,
    bf16_methods=(),
  )


def pod_gpu8() -> Config:
  """One 8-GPU node (80 GB H100/A100 class): the pod model on mesh (1, 8, 1).

  8 sequences of 2048 tokens per GPU (64 per step); 1.6 GB of train state per GPU.
  ``python -m experiments.loss_lm --config pod_gpu8`` (one process drives the 8
  GPUs); under SLURM across nodes add ``--distributed auto`` and scale ``mesh``.
  """
  return pod().replace(
    name="pod_gpu8", mesh=dict(data=1, fsdp=8, tensor=1), batch_size=64, eval_batch_size=64
  )


def pod_smoke() -> Config:
  """The pod pipeline at toy size for the tests: a 2-block Llama on a
  (data 2, fsdp 2, tensor 2) mesh of 8 (fake) devices, sharded state, per-process rows."""
  return smoke().replace(
    name="pod_smoke",
    seeds=(0,),
    methods=("uniform", "linupper"),
    model_kind="llama",
    model=dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, tied=False, remat=True),
    mesh=dict(data=2, fsdp=2, tensor=2),
    bf16_methods=(),
  )


CONFIGS = {
  "smoke": smoke,
  "quick": quick,
  "full": full,
  "pod": pod,
  "pod_gpu8": pod_gpu8,
  "pod_smoke": pod_smoke,
}


get_config = common.config_getter(CONFIGS)
