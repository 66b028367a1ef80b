"""The demo: the paper's setting at CPU scale; 4 strategies x 3 seeds x 400 steps.

The paper (Sow et al., ICLR 2025) pretrains GPT-2-style models from scratch on
SlimPajama-6B, a uniform mixture of 7 domains, for about one pass, and reports the
equal-weight mean of per-domain held-out perplexity. Here: a uniform mixture of
three real offline domains (the standard library's Python source, the English
pydoc topics, CPython's C headers; :func:`jaxweights.data.mixture_corpus`), held-out
rows drawn i.i.d. within each domain, at most one pass over the training tokens,
and the equal-weight mean of the per-domain held-out losses as the headline.

The recipe is the authors' scaled down: AdamW with the library-default betas
(0.9, 0.999), weight decay 0.01, gradient clipping 1.0, linear LR warm-up for 2.5%
of the steps (500 of 20k) then cosine decay to a fifth of the peak (5e-4 -> 1e-4),
uniform weights for the first 5% of the steps (1000 of 20k), then r = 1.0 for every
strategy (the authors' value at their smallest, 124M, scale; 0.4 appears only in
their 24- and 36-layer runs), delta = 1. The peak LR is 1e-3 rather than 5e-4: a
0.3M-parameter model trained for 400 steps, chosen for the uniform baseline before
any weighting was run. About 5 minutes on 2 CPU cores.
"""

import ml_collections

from experiments import lm_recipe

# r per strategy: the authors' value at their smallest scale (Quadratic, 12 layers,
# r = 1.0); at a small scale r = 1 is the analogue for every strategy.
SMALL_SCALE_R = {"linupper": 1.0, "quadratic": 1.0, "extremes": 1.0}


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    lm_recipe.recipe_config(
      name="quick",
      methods=("uniform", "linupper", "quadratic", "extremes"),
      seeds=(0, 1, 2),
      batch_size=16,
      num_steps=400,
      lr_warmup_steps=10,
      r=SMALL_SCALE_R,
      delta=1.0,
      weight_warmup_steps=20,
      log_every=5,
      eval_every=50,
      # 0: no checkpoints. Otherwise orbax checkpoints every N steps under
      # <workdir>/checkpoints/<method>_seed<k>/ and a rerun continues every run
      # from its latest checkpoint (a finished run is only re-evaluated); delete
      # that folder to start over after changing the config.
      checkpoint_every=0,
      # Mixed-precision check: these methods are run again with bf16 compute
      # (float32 params, optimiser state and weights), same seeds and batches,
      # and compared with their float32 runs. Off in the demo (its time budget);
      # on in smoke (the tests) and full.
      bf16_methods=(),
    )
  )
