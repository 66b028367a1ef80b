"""The demo: the authors' MBPP recipe at CPU scale, 3 seeds; a few minutes on 2 CPU cores.

``python -m experiments.qprobe_arith --config=quick`` (writes results/qprobe_arith/).

What is the authors' (Li et al., 2024, their code): sampling at temperature 0.8,
top-p 0.95; k = 48 candidates drawn as disjoint chunks of each prompt's samples;
the embedding after a late block (26 of 32, here the same fraction of our
depth), at the last completion token; a linear probe with bias, AdamW lr 5e-5
(weight decay 0.01, what their misspelt argument left in force), 150 epochs,
batches of 1000 samples or 100 groups of 10; L_PG trained at beta = 1; the
headline at beta = 0.1 and their sweep beta in {0, 0.01, 0.1, 1}.

What is scaled down: a 4-block LM (d = 64) trained here instead of
CodeLlama-7B; 100 training prompts (theirs: 464) and 100 test prompts x 192
samples (theirs: 200; 192 = 4 chunks of 48); a reach-the-target task with an
executed check instead of MBPP's unit tests.

Resources: one CPU process, < 2 GB RAM; about 5.4 min of CPU (22 min wall on 2
cores shared with three other jobs, 2026-11-30). Half of it is the two LMs, a third
sampling 200 x 192 completions (the library's sampler re-runs the whole row for each
token). The results are in the generated table and README.md.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  lm_optimizer = dict(
    peak_lr=2e-3, lr_warmup_steps=50, end_lr=2e-4, clip_norm=1.0, b2=0.99, weight_decay=0.01
  )
  return ml_collections.ConfigDict(
    dict(
      name="quick",
      methods=("L_Q", "L_CE", "L_PG", "api_L_PG"),
      seeds=(0, 1, 2),
      # Reach `target` with each of n_digits digits in [1, max_digit] once (+ - *).
      task=dict(n_digits=4, max_digit=6, n_probe_train=100, n_probe_test=100, seed=0),
      # The LMs' text: graded worksheet lines "17:1356=3*6-1*5;Y\n"; an expression
      # is wrong (another value of the same digits) with probability wrong_fraction.
      lm_text=dict(wrong_fraction=0.3, verdicts=True),
      # The base policy (sampling, and the hidden states of the main probes):
      # experiments.lm_recipe's model and optimiser fields.
      base_lm=dict(
        model=dict(d_model=64, n_layers=4, n_heads=4, d_ff=256),
        seq_len=20,
        num_steps=2000,
        batch_size=64,
        seed=0,
        **lm_optimizer,
      ),
      # The separately trained "API" embedder: other seed and size, same text;
      # its last block is the embedding (what an embedding API returns).
      api_lm=dict(
        model=dict(d_model=48, n_layers=2, n_heads=4, d_ff=192),
        seq_len=20,
        num_steps=600,
        batch_size=64,
        seed=1,
        **lm_optimizer,
      ),
      n_samples=192,
      max_new_tokens=8,
      temperature=0.8,
      top_p=0.95,
      # The embedding block as a fraction of the depth (the authors: block 26 of 32).
      layer_fraction=26 / 32,
      sample_seed=0,
      # Probe training: num_steps = epochs (logged as steps in runs/*.jsonl).
      num_steps=150,
      probe=dict(learning_rate=5e-5, weight_decay=0.01, batch_size=1000, group_size=10, train_beta=1.0),
      k=48,
      beta=0.1,
      betas=(0.0, 0.01, 0.1, 1.0),
      ks=(1, 2, 4, 8, 16, 32, 48),
      policy_batch_size=1024,
      # Also write the base model's features (base_embeddings_{train,test}.npz, ~5 MB each).
      save_base_features=False,
      # Diagnostics beside the headline (ours, not the paper's setting): name ->
      # dict(method=, **probe overrides). lr 1e-3: our 150 epochs are ~2900 steps
      # (100 prompts x 192 samples / 1000), the authors' ~14k, so lr 5e-5 may under-fit
      # here. train_beta 0.1: L_PG trained at the beta it is evaluated at.
      diagnostics=dict(
        L_CE_lr1e3=dict(method="L_CE", learning_rate=1e-3),
        L_PG_lr1e3=dict(method="L_PG", learning_rate=1e-3),
        L_PG_train_beta01=dict(method="L_PG", train_beta=0.1),
      ),
    )
  )
