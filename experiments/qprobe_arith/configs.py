"""Configurations of the Q-probe arithmetic experiment.

The probe recipe is the paper's (linear probe with bias, AdamW, 150 epochs,
batches of 1000 samples or 100 PG groups of 10, k = 48, beta = 0.1, L_PG trained
at beta = 1) except for the learning rate (see ``probe``). The base LM's
training length and text were tuned so that its pass@1 lands between 10% and
60% (choosing the task's difficulty): see ``base_lm`` and ``lm_text``.
"""

from __future__ import annotations

from experiments import common
from experiments.common import Config

METHODS = ("L_Q", "L_CE", "L_PG", "L_BT", "api_L_Q", "api_L_CE", "api_L_PG")


def quick() -> Config:
  """The CPU run: 100 training x 100 test prompts, 50 samples each, 3 probe seeds.

  Resources: one CPU process, < 2 GB RAM; a few minutes on 2 cores (two tiny
  LMs of 3000 steps each are most of it; sampling 200 x 50 completions and
  each probe take seconds).
  """
  return Config(
    name="quick",
    methods=METHODS,
    seeds=(0, 1, 2),
    task=dict(
      add_max=99, mul_max=9, mul_fraction=0.5, n_probe_train=100, n_probe_test=100, lm_train_size=None, seed=0
    ),
    # The LMs' text: graded worksheet lines "a+b=c;Y\n" / "a+b=c';N\n", the
    # answer wrong (a uniform guess) with probability wrong_fraction.
    lm_text=dict(wrong_fraction=0.3, verdicts=True, wrong_kind="guess", n_wrong=4, seed=0),
    max_len=16,
    # The base policy (sampling, and the hidden states of the main probes).
    base_lm=dict(
      model=dict(d_model=64, n_layers=2, n_heads=4, d_ff=256),
      steps=3000,
      batch_size=64,
      learning_rate=2e-3,
      warmup_steps=50,
      seed=0,
    ),
    # The separately trained "API" embedder: other seed and width, same text.
    api_lm=dict(
      model=dict(d_model=48, n_layers=2, n_heads=4, d_ff=192),
      steps=3000,
      batch_size=64,
      learning_rate=2e-3,
      warmup_steps=50,
      seed=1,
    ),
    n_samples=50,
    max_new_tokens=5,
    temperature=1.0,
    top_p=1.0,
    # Embedding block (None: the last block, before the final LayerNorm).
    layer=None,
    sample_seed=0,
    # Probe training: num_steps = epochs (logged as steps in runs/*.jsonl).
    num_steps=150,
    probe=dict(learning_rate=1e-3, weight_decay=0.0, batch_size=1000, group_size=10, train_beta=1.0),
    bt_pairs_per_prompt=50,
    k=48,
    beta=0.1,
    # Random k-subsets of each test prompt's samples averaged per evaluation.
    eval_draws=10,
    ks=(1, 2, 4, 8, 16, 32, 48),
    data_limited=dict(n_prompts=(10, 25, 50, 100), methods=("L_Q", "L_CE", "L_PG")),
    policy_batch_size=2048,
  )


def full() -> Config:
  """The accelerator run: the paper's scale of probe data, a bigger base LM.

  464 training prompts x 200 samples (the paper's numbers), 200 test prompts,
  10 probe seeds; TransformerLM.tiny-sized LMs (d_model 96) trained 4000 steps.
  Resources: one GPU (any modern one, < 4 GB of memory). The LMs and sampling
  664 x 200 short completions take minutes; the probes dominate: ~220 probe
  trainings (7 methods + 5 data-limited sizes x 3 losses, x 10 seeds) of ~14k
  steps each (150 epochs of 93 batches, the paper's count), a host loop of
  roughly 1-2 ms per step on a GPU: about 1-1.5 GPU-hours in all, many hours on
  2 CPU cores. Not run for the committed table: the base LM's pass@1 at this
  size and length must be re-checked (it is printed and tabled) before reading
  the probe rows.
  """
  return quick().replace(
    name="full",
    seeds=tuple(range(10)),
    task=dict(
      add_max=99, mul_max=9, mul_fraction=0.5, n_probe_train=464, n_probe_test=200, lm_train_size=None, seed=0
    ),
    base_lm=dict(
      model=dict(d_model=96, n_layers=2, n_heads=4, d_ff=384),
      steps=4000,
      batch_size=64,
      learning_rate=2e-3,
      warmup_steps=100,
      seed=0,
    ),
    api_lm=dict(
      model=dict(d_model=64, n_layers=2, n_heads=4, d_ff=256),
      steps=4000,
      batch_size=64,
      learning_rate=2e-3,
      warmup_steps=100,
      seed=1,
    ),
    n_samples=200,
    data_limited=dict(n_prompts=(10, 25, 50, 100, 200, 464), methods=("L_Q", "L_CE", "L_PG")),
  )


def smoke() -> Config:
  """The end-to-end test: 1-layer toys, 6 x 4 prompts of 12 samples, 3 epochs, 1 seed.

  XLA compilation is most of its time (every LM and every probe compiles its
  own step).
  """
  return quick().replace(
    name="smoke",
    methods=("L_Q", "L_CE", "L_PG", "L_BT", "api_L_PG"),
    seeds=(0,),
    # One-digit answers, so that even a 40-step LM is sometimes right.
    task=dict(
      add_max=4, mul_max=2, mul_fraction=0.5, n_probe_train=6, n_probe_test=4, lm_train_size=None, seed=0
    ),
    base_lm=dict(
      model=dict(d_model=16, n_layers=1, n_heads=2, d_ff=32),
      steps=150,
      batch_size=16,
      learning_rate=2e-3,
      warmup_steps=2,
      seed=0,
    ),
    api_lm=dict(
      model=dict(d_model=8, n_layers=1, n_heads=2, d_ff=16),
      steps=40,
      batch_size=16,
      learning_rate=2e-3,
      warmup_steps=2,
      seed=1,
    ),
    n_samples=12,
    num_steps=3,
    probe=dict(learning_rate=1e-3, weight_decay=0.0, batch_size=40, group_size=4, train_beta=1.0),
    bt_pairs_per_prompt=8,
    k=8,
    eval_draws=2,
    ks=(1, 2, 8),
    data_limited=dict(n_prompts=(3, 6), methods=("L_PG",)),
    policy_batch_size=256,
  )


CONFIGS = {"smoke": smoke, "quick": quick, "full": full}


get_config = common.config_getter(CONFIGS)
