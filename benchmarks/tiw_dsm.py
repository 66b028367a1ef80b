"""Benchmark cases for TIW-DSM (Kim et al., ICLR 2024).

Each row times a whole train step of the *same* score network, optimiser (Adam)
and batch against the plain DSM step (``make_train_step(..., weighting=None)``
with :func:`jaxweights.substrates.diffusion.dsm_loss_fn`). The batch carries the noise draw
(``t``, ``sigma``, ``noise``, drawn on the host), so every step perturbs the
same samples and the weighted steps' ``prepare`` only evaluates the frozen
discriminator: the rows measure what TIW-DSM adds, i.e. one discriminator
forward and one backward wrt its *input* for ``grad_x log w_t``, the weights,
and the corrected target.

* ``tiw_dsm/digits_unet``: :class:`~jaxweights.substrates.diffusion.ScoreUNet` (8x8x1, 64
  channels) with EDM preconditioning, batch 256; discriminator
  :class:`~jaxweights.families.density_ratio.TimeDiscriminator` 64 -> 256 x 2 (larger
  than the ``tiw_digits`` experiment's 64 x 2, so a conservative case). Target (from the
  issue): TIW-DSM <= 1.6x the plain step's time and <= 1.3x its peak memory.
  ``weight-only`` (no input gradient) and ``iw_dsm`` (time-independent weight on
  ``x_0``) are shown for contrast, with no target (and left out in quick mode).
* ``tiw_dsm/gmm_mlp``: :class:`~jaxweights.substrates.diffusion.ScoreMLP` 2 -> 128 x 3 and a
  TimeDiscriminator 2 -> 128 x 2 of the same depth, batch 512 (the ``tiw_gmm``
  experiment). A step this small shows the fixed cost of a discriminator that
  is as large as the score network; no target.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxweights
from benchmarks.harness import Case, Setup
from jaxweights import density_ratio as dr
from jaxweights import diffusion as df

LEARNING_RATE = 2e-4
REF_FRACTION = 0.05
TIME_TARGET = 1.6
MEMORY_TARGET = 1.3
TIW = "tiw_dsm"
WEIGHT_ONLY = "tiw_dsm weight-only (no input gradient)"
IW = "iw_dsm (time-independent w(x0))"


def _batch(features_shape, batch_size, edm: df.EDMDiffusion):
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (batch_size, *features_shape)).astype(np.float32)
  sigma = np.exp(edm.p_mean + edm.p_std * rng.standard_normal(batch_size)).astype(np.float32)
  t = np.clip(np.asarray(edm.sde.t_from_edm_sigma(sigma)), edm.sde.t_min, edm.sde.t_max)
  return {
    "x": jnp.asarray(x),
    "t": jnp.asarray(t, jnp.float32),
    "sigma": jnp.asarray(sigma),
    "noise": jnp.asarray(rng.standard_normal(x.shape).astype(np.float32)),
  }


def _setup(model, disc, batch, model_name, batch_desc, methods) -> Setup:
  edm = df.EDMDiffusion()
  tx = optax.adam(LEARNING_RATE)
  loss_fn = df.dsm_loss_fn(edm)
  ratio_model = dr.RatioModel.from_module(disc)
  weightings = {
    TIW: dr.tiw_dsm_weighting(ratio_model, edm, ref_fraction=REF_FRACTION),
    WEIGHT_ONLY: dr.tiw_dsm_weighting(ratio_model, edm, ref_fraction=REF_FRACTION, correction=False),
    IW: dr.iw_dsm_weighting(ratio_model, edm, ref_fraction=REF_FRACTION),
  }
  weightings = {m: weightings[m] for m in methods}
  graphdef, state = jaxweights.init_train_state(model, tx)
  plain = jaxweights.make_train_step(graphdef, loss_fn, tx, weighting=None)
  steps = {m: jaxweights.make_train_step(graphdef, loss_fn, tx, w) for m, w in weightings.items()}
  states = {m: state._replace(weighting_state=w.init()) for m, w in weightings.items()}
  n_disc = jaxweights.count_params(disc)
  name = f"{model_name} + discriminator {n_disc / 1e3:.0f}k params"
  return Setup(plain, steps, state, batch, name, batch_desc, weighted_states=states)


def _methods(quick: bool) -> tuple[str, ...]:
  # Compile time dominates quick runs (tests): the targeted row only.
  return (TIW,) if quick else (TIW, WEIGHT_ONLY, IW)


def digits_setup(channels: int, hidden: int, batch_size: int, methods: tuple[str, ...] = (TIW,)) -> Setup:
  """The ``digits_unet`` case at any size: ScoreUNet 8x8x1 with ``channels``, a
  TimeDiscriminator 64 -> ``hidden`` x 2, ``batch_size`` images (also used by
  :mod:`benchmarks.family_curves`)."""
  model = df.ScoreUNet((8, 8, 1), channels=channels, rngs=nnx.Rngs(0))
  disc = dr.TimeDiscriminator(64, hidden=hidden, depth=2, rngs=nnx.Rngs(1))
  batch = _batch((64,), batch_size, df.EDMDiffusion())
  name = f"ScoreUNet 8x8x1 ch {channels} ({jaxweights.count_params(model) / 1e3:.0f}k params)"
  return _setup(model, disc, batch, name, f"{batch_size} images", methods)


def build_digits(quick: bool) -> Setup:
  channels, hidden, batch_size = (8, 32, 16) if quick else (64, 256, 256)
  return digits_setup(channels, hidden, batch_size, _methods(quick))


def build_gmm(quick: bool) -> Setup:
  hidden, batch_size = (16, 32) if quick else (128, 512)
  model = df.ScoreMLP(2, hidden=hidden, depth=3, rngs=nnx.Rngs(0))
  disc = dr.TimeDiscriminator(2, hidden=hidden, depth=2, rngs=nnx.Rngs(1))
  batch = _batch((2,), batch_size, df.EDMDiffusion())
  name = f"ScoreMLP 2->{hidden}x3 ({jaxweights.count_params(model) / 1e3:.1f}k params)"
  return _setup(model, disc, batch, name, f"{batch_size} points", _methods(quick))


CASES: list[Case] = [
  Case(
    "tiw_dsm/digits_unet",
    build_digits,
    target_time_ratio=TIME_TARGET,
    target_memory_ratio=MEMORY_TARGET,
    target_methods=(TIW,),
  ),
  Case("tiw_dsm/gmm_mlp", build_gmm),
]
