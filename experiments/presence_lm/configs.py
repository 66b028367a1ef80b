"""Configurations of the PRESENCE experiment (self-influence reweighting, noisy LM data).

Training recipe = the loss-based LM experiment's (AdamW b2 0.95, weight decay
0.01, linear LR warm-up then cosine decay to a fifth of the peak, global
gradient clipping at 1.0). Into every training batch a fixed number of rows is
injected: ``noise_fraction`` of the rows are corrupted (half "shuffled": a
random permutation of the window's own tokens; half "random": uniform token
ids) and ``duplicate_fraction`` are exact copies of windows from a fixed pool of
``duplicate_pool`` windows (each repeated many times over training). The
held-out data stay clean.

PRESENCE (Thakkar et al. 2023): ``w = softmax(tau * zscore(||grad l_i||^2))``
over the batch, tau = +1 for the first ``switch_fraction`` of the steps
("direct"), then -1 ("inverse"); the paper switched after 10% of its 1M steps
and found |tau| = 1 better than 2.
"""

from __future__ import annotations

from experiments import common
from experiments.common import Config

# method -> (tau: "two_stage" | number, microbatches: None | "config")
METHODS = {
  "uniform": None,
  "presence": ("two_stage", None),
  "direct": (1.0, None),
  "inverse": (-1.0, None),
  "presence_mb": ("two_stage", "config"),
}


def quick() -> Config:
  """Tiny model, 1.5 MB of stdlib, 5 methods x 3 seeds x 300 steps.

  Batch 16 = 12 clean + 1 shuffled + 1 random + 2 duplicate rows (12.5% noise,
  12.5% duplicates from a pool of 16 windows, each seen ~37 times). About 0.5
  epochs of the clean training tokens. Resources: one CPU process, < 1 GB RAM;
  measured 15 min on 2 CPU cores shared with other jobs (load average ~10),
  25-60 s per run (PRESENCE runs ~1.5-3x a uniform run).
  """
  return Config(
    name="quick",
    methods=("uniform", "presence", "direct", "inverse", "presence_mb"),
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
    num_steps=300,
    peak_lr=1e-3,
    end_lr=2e-4,
    lr_warmup_steps=20,
    weight_decay=0.01,
    b2=0.95,
    clip_norm=1.0,
    # Injection (rows per batch = round(fraction * batch_size); the noise rows
    # are split evenly between "shuffled" and "random").
    noise_fraction=0.125,
    duplicate_fraction=0.125,
    duplicate_pool=16,
    # PRESENCE: tau = +tau for the first round(switch_fraction * num_steps)
    # steps, then -tau; per-sample scores over `layers` (None = all layers;
    # the paper used the first encoder and decoder layers of mT5), exact
    # ghost norms with the one-backward book-keeping step.
    tau=1.0,
    switch_fraction=0.25,
    layers=None,
    norm_method="ghost",
    microbatches=4,  # for "presence_mb": the batch split into 4 groups of 4
    log_every=10,
    eval_every=50,
    eval_batch_size=64,
    eval_max_batches=None,
    # Offline TracIn on every uniform run: checkpoints at these fractions of
    # the steps; a scoring pool of training rows drawn from evenly spaced
    # training batches (per kind), plus every window of the duplicate pool.
    tracin_fractions=(0.2, 0.4, 0.6, 0.8, 1.0),
    tracin_pool=dict(clean=160, shuffled=32, random=32),
    # Shard the batch over all devices when more than one is present.
    use_mesh=True,
  )


def full() -> Config:
  """The accelerator run: TransformerConfig.small(), the whole stdlib, 8000 steps.

  d_model 256, 4 layers, vocab 4096 (~5.3M parameters), seq 256, batch 64
  (8 noise rows + 8 duplicates from a pool of 64 windows per batch), 8000
  steps, switch to the inverse stage at step 2000, 5 seeds x 5 methods = 25
  runs. Expected resources (not measured here; scaled from the loss-based LM
  experiment's estimate of 3-6 GPU-minutes per 20k plain steps and the ~1.3-2.5x
  cost of a ghost-norm step on CPU): one A100/H100-class GPU with < 8 GB of
  memory, roughly 2-5 GPU-minutes per run, about 1-2 GPU-hours in all. Not
  feasible on a laptop CPU (days). The whole stdlib is ~3M training tokens at
  vocab 4096, so 8000 x 16k tokens is ~40 epochs of the clean text: a
  multi-epoch regime.
  """
  return quick().replace(
    name="full",
    seeds=(0, 1, 2, 3, 4),
    corpus=dict(vocab_size=4096, max_bytes=None, test_fraction=0.1, seed=0),
    model=dict(d_model=256, n_layers=4, n_heads=4, d_ff=1024),
    seq_len=256,
    batch_size=64,
    num_steps=8000,
    peak_lr=5e-4,
    end_lr=1e-4,
    lr_warmup_steps=400,
    duplicate_pool=64,
    microbatches=8,
    log_every=50,
    eval_every=500,
    tracin_pool=dict(clean=640, shuffled=128, random=128),
  )


def smoke() -> Config:
  """The end-to-end test: a 1-layer toy on 150 kB of stdlib, 12 steps, 2 seeds."""
  return quick().replace(
    name="smoke",
    methods=("uniform", "presence", "presence_mb"),
    seeds=(0, 1),
    corpus=dict(vocab_size=300, max_bytes=150_000, test_fraction=0.1, seed=0),
    model=dict(d_model=32, n_layers=1, n_heads=2, d_ff=64),
    seq_len=16,
    batch_size=16,
    num_steps=12,
    lr_warmup_steps=2,
    duplicate_pool=4,
    log_every=2,
    eval_every=6,
    eval_batch_size=16,
    eval_max_batches=4,
    tracin_fractions=(0.5, 1.0),
    tracin_pool=dict(clean=16, shuffled=8, random=8),
  )


def pod() -> Config:
  """A TPU v5e-64 slice: PRESENCE on the ~1B Llama of ``loss_lm``'s pod config.

  Mesh ``(data 1, fsdp 64, tensor 1)``, 512 sequences of 2048 tokens per step (8
  per chip); ghost norms of the first block only (``layers``: the paper scores the
  first layer(s)), 8 microbatches; the book-keeping step forms the weighted
  gradient in the same backward pass. Every process builds the whole injected
  batch and transfers its own rows. Launch as ``loss_lm``'s pod config
  (``--config pod --distributed auto`` on every worker). The offline corpus makes
  this a throughput and memory check, not a pretraining run.
  """
  from experiments.loss_lm.configs import POD_MODEL  # pylint: disable=import-outside-toplevel

  return full().replace(
    name="pod",
    seeds=(0,),
    methods=("uniform", "presence_mb"),
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
    log_every=10,
    eval_every=100,
    # TracIn diagnostics read TransformerLM's layers; the pod configs skip them.
    tracin_fractions=(),
  )


def pod_smoke() -> Config:
  """The pod pipeline at toy size for the tests: a 2-block Llama on a
  (data 2, fsdp 2, tensor 2) mesh of 8 (fake) devices with a sharded state."""
  return smoke().replace(
    name="pod_smoke",
    seeds=(0,),
    methods=("uniform", "presence"),
    model_kind="llama",
    model=dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, tied=False),
    mesh=dict(data=2, fsdp=2, tensor=2),
    tracin_fractions=(),
  )


CONFIGS = {"smoke": smoke, "quick": quick, "full": full, "pod": pod, "pod_smoke": pod_smoke}


get_config = common.config_getter(CONFIGS)
