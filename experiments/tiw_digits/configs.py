"""Configurations of the long-tailed digits experiment.

scikit-learn's 8x8 digits (train split, 80%): the biased set keeps
``n_head * imbalance^(rank/9)`` images of the class of each rank (the class
order is a per-seed permutation), the reference set is class-balanced with
5% of the biased set's size, disjoint from it. Generated samples are judged by
an MLP classifier trained on all real training digits (class proportions) and
by a Fréchet distance in that classifier's hidden features to the real,
balanced held-out digits.

``quick`` is the demo (an MLP score network; a few minutes on 2 CPU cores);
``full`` uses the small U-Net, more steps and seeds; ``smoke`` is the test.
"""

from __future__ import annotations

from experiments import common
from experiments.common import Config

METHODS = ("dsm_ref", "dsm_obs", "iw_dsm", "tiw_dsm", "tiw_weight_only", "tiw_correction_only")


def quick() -> Config:
  """6 methods x 3 seeds x 3000 steps with an MLP score network; ~5 min on 2 CPU cores."""
  return Config(
    name="quick",
    methods=METHODS,
    seeds=(0, 1, 2),
    data_seed=0,  # the train/test split of load_digits
    n_head=140,  # images of the most frequent class
    imbalance=0.1,  # tail / head count
    ref_size=0.05,  # |D_ref| = ref_size * |D_bias|, class-balanced
    # Score network: "mlp" = ScoreMLP(64, hidden, depth, embed_dim), "unet" =
    # ScoreUNet((8, 8, 1), channels, embed_dim).
    model=dict(kind="mlp", hidden=256, depth=3, embed_dim=32, channels=32),
    batch_size=128,
    learning_rate=1e-3,
    num_steps=3000,
    log_every=50,
    eval_every=500,
    # A small, briefly trained discriminator: with 30 reference images a larger or
    # longer-trained one memorises them (see the table's notes).
    disc=dict(hidden=64, depth=2, num_steps=300, batch_size=128, learning_rate=1e-3),
    t_range=None,
    n_generate=1000,
    sampler_steps=18,
    classifier=dict(hidden=128, max_iter=400),
  )


def full() -> Config:
  """The small U-Net, 5 seeds x 10000 steps; GPU-sized (about an hour on 2 CPU cores)."""
  cfg = quick().replace(
    name="full", seeds=(0, 1, 2, 3, 4), num_steps=10000, eval_every=1000, n_generate=2000, learning_rate=5e-4
  )
  cfg.model = dict(cfg.model, kind="unet")
  return cfg


def smoke() -> Config:
  """The end-to-end test: 3 methods, tiny sizes, 2 seeds, 20 steps."""
  cfg = quick().replace(
    name="smoke",
    seeds=(0, 1),
    methods=("dsm_obs", "iw_dsm", "tiw_dsm"),
    num_steps=20,
    log_every=10,
    eval_every=10,
    n_generate=200,
    sampler_steps=3,
    batch_size=32,
  )
  cfg.model = dict(cfg.model, hidden=32, depth=1, embed_dim=8)
  cfg.disc = dict(hidden=16, depth=1, num_steps=10, batch_size=32, learning_rate=1e-3)
  cfg.classifier = dict(hidden=16, max_iter=50)
  return cfg


CONFIGS = {"smoke": smoke, "quick": quick, "full": full}


get_config = common.config_getter(CONFIGS)
