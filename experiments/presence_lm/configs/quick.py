"""The demo: PRESENCE in the paper's setting at CPU scale, plus the injected-noise diagnostic.

The paper (Thakkar et al., EMNLP 2023) pretrains mT5 on clean multilingual text,
scores self-influence on the first layer(s) (the first encoder and decoder
layers), switches from the direct stage (tau = +1) to the inverse stage (tau = -1)
after 10% of training (100k of 1M steps), and in practice weights 4-8 microbatches
of a large batch, not single samples. Here: the loss-based LM experiment's domain
mixture and held-out metric (:mod:`experiments.lm_recipe`; at most one pass), the
first transformer block as the layer set K, the switch at 10% of the steps, a
batch of 32 rows weighted as 8 microbatches of 4 (``presence_mb``, what the paper
ran) or per row (``presence``, the paper's definition), against uniform weights.
The paper's metric is downstream zero-shot accuracy after pretraining; at this
scale the nearest analogue is the clean held-out LM loss.

``diagnostic`` (ours, not the paper's claim): the same recipe with shuffled-token,
random-token and duplicated rows injected into every batch, all layers scored, to
see where the weight mass goes and how TracIn ranks the injected rows.

About 4-5 minutes on 2 CPU cores.
"""

import ml_collections

from experiments import lm_recipe


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    lm_recipe.recipe_config(
      name="quick",
      methods=("uniform", "presence_mb", "presence"),
      seeds=(0, 1, 2),
      batch_size=32,
      num_steps=200,
      lr_warmup_steps=5,
      # PRESENCE: tau = +tau for the first round(switch_fraction * num_steps) steps,
      # then -tau (the paper: 10%, |tau| = 1); per-sample scores over `layers`
      # (path prefixes; the paper: the first layer(s)), exact ghost norms with the
      # one-backward book-keeping step; microbatch mode splits the batch into
      # `microbatches` groups (the paper: 4 or 8).
      tau=1.0,
      switch_fraction=0.1,
      layers=("blocks/0",),
      norm_method="ghost",
      microbatches=8,
      # Injection (0: clean batches, the headline). Rows per batch = round(fraction
      # x batch_size); noise rows are split between "shuffled" and "random".
      noise_fraction=0.0,
      duplicate_fraction=0.0,
      duplicate_pool=16,
      log_every=5,
      eval_every=50,
      # Offline TracIn on the diagnostic's uniform runs: checkpoints at these
      # fractions of the steps; a scoring pool of training rows per kind plus
      # every window of the duplicate pool.
      tracin_fractions=(0.2, 0.4, 0.6, 0.8, 1.0),
      tracin_pool=dict(clean=160, shuffled=32, random=32),
      # The injected-noise diagnostic (ours): overrides of this config, run into
      # <workdir>/diagnostic/. None: skipped.
      diagnostic=dict(
        methods=("uniform", "presence"),
        batch_size=16,
        microbatches=4,
        num_steps=200,
        layers=None,
        noise_fraction=0.125,
        duplicate_fraction=0.125,
      ),
    )
  )
