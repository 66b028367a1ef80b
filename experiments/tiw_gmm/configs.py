"""Configurations of the 2-D Gaussian-mixture experiment.

Four isotropic modes at the corners of a square. The unbiased target gives each
mode 1/4; the biased set is long-tailed (0.55 / 0.25 / 0.12 / 0.08); the
reference set is 5% of the biased set's size, drawn from the target. All
perturbed densities, scores and ratios are exact (``GaussianMixture``), which
gives the ratio-estimation error and the ``tiw_oracle`` row.

``quick`` is the demo (a few minutes on 2 CPU cores); ``full`` adds seeds and
steps; ``smoke`` is the end-to-end test.
"""

from __future__ import annotations

from experiments import common
from experiments.common import Config

METHODS = ("dsm_ref", "dsm_obs", "iw_dsm", "tiw_dsm", "tiw_weight_only", "tiw_correction_only", "tiw_oracle")


def quick() -> Config:
  """7 methods x 3 seeds x 3000 Adam steps; ~4 min on 2 CPU cores."""
  return Config(
    name="quick",
    methods=METHODS,
    seeds=(0, 1, 2),
    mixture=dict(
      means=((-0.8, -0.8), (0.8, -0.8), (-0.8, 0.8), (0.8, 0.8)),
      std=0.2,
      data_weights=(0.25, 0.25, 0.25, 0.25),
      bias_weights=(0.55, 0.25, 0.12, 0.08),
    ),
    n_bias=4000,
    ref_size=0.05,  # |D_ref| = ref_size * |D_bias|
    n_heldout=4000,  # unbiased held-out points (distances, held-out DSM loss)
    n_generate=4000,
    # Score network: jaxweights.substrates.diffusion.ScoreMLP(2, hidden, depth, embed_dim).
    model=dict(hidden=128, depth=3, embed_dim=32),
    batch_size=256,
    learning_rate=2e-3,
    num_steps=3000,
    log_every=50,
    eval_every=500,
    # Discriminators (TimeDiscriminator(2, hidden, depth)); the authors use Adam 3e-4.
    disc=dict(hidden=128, depth=2, num_steps=2000, batch_size=256, learning_rate=1e-3),
    # Correction only for t in this VP-time range (None: everywhere).
    t_range=None,
    sampler_steps=32,
    # Ratio-estimation error vs t: log-spaced VP times, points per time.
    ratio_grid=dict(t_min=1e-3, t_max=1.0, num=14, points=1500),
  )


def full() -> Config:
  """5 seeds x 8000 steps, discriminators 4000 steps; ~20 min on 2 CPU cores."""
  cfg = quick().replace(name="full", seeds=(0, 1, 2, 3, 4), num_steps=8000, eval_every=1000, n_generate=8000)
  cfg.disc = dict(cfg.disc, num_steps=4000)
  return cfg


def smoke() -> Config:
  """The end-to-end test: 4 methods, tiny sizes, 2 seeds, 30 steps."""
  cfg = quick().replace(
    name="smoke",
    seeds=(0, 1),
    methods=("dsm_obs", "iw_dsm", "tiw_dsm", "tiw_oracle"),
    n_bias=400,
    n_heldout=300,
    n_generate=300,
    num_steps=30,
    log_every=10,
    eval_every=15,
    sampler_steps=4,
  )
  cfg.model = dict(hidden=16, depth=1, embed_dim=8)
  cfg.disc = dict(hidden=16, depth=1, num_steps=20, batch_size=64, learning_rate=1e-3)
  cfg.ratio_grid = dict(cfg.ratio_grid, num=3, points=100)
  return cfg


CONFIGS = {"smoke": smoke, "quick": quick, "full": full}


get_config = common.config_getter(CONFIGS)
