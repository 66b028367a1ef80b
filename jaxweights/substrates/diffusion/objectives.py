"""The DSM loss for the train step and the noise draw, keyed by global sample
index, that a weighting's prepare pass adds to the batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxweights.core import normalize
from jaxweights.core.contract import PrepareContext, Weighting, WeightInputs
from jaxweights.core.reductions import AxisName
from jaxweights.core.step import LossOutput
from jaxweights.substrates.diffusion.sde import Diffusion

PyTree = Any

PERTURBATION_KEYS = ("t", "sigma", "noise")
CORRECTION_KEY = "score_correction"


def check_perturbed_batch(batch: PyTree) -> None:
  """Raises a clear ``ValueError`` unless ``batch`` is a dict with a full draw.

  Args:
    batch: the DSM batch: ``"x"`` ``[B, ...]``, ``"t"`` and ``"sigma"`` ``[B]``,
      ``"noise"`` like ``x`` and optionally ``"score_correction"`` like ``x``.

  Raises:
    ValueError: ``batch`` is not a dict, lacks a key, or has a mis-shaped entry.
  """
  if not isinstance(batch, dict):
    raise ValueError(f"a DSM batch must be a dict, got {type(batch).__name__}.")
  missing = [k for k in ("x",) + PERTURBATION_KEYS if k not in batch]
  if missing:
    raise ValueError(
      f"the DSM batch lacks {missing}: draw the noise with a weighting's "
      "prepare pass (jaxweights.substrates.diffusion.dsm_weighting, density_ratio.tiw_dsm_weighting, ...) "
      "or add 't', 'sigma' and 'noise' to the batch (diffusion.perturb_batch)."
    )
  x = jnp.asarray(batch["x"])
  if jnp.shape(batch["noise"]) != x.shape:
    raise ValueError(f"noise shape {jnp.shape(batch['noise'])} != x shape {x.shape}.")
  for k in ("t", "sigma"):
    if jnp.shape(batch[k]) != x.shape[:1]:
      raise ValueError(f"{k} must have shape {x.shape[:1]}, got {jnp.shape(batch[k])}.")
  corr = batch.get(CORRECTION_KEY)
  if corr is not None and jnp.shape(corr) != x.shape:
    raise ValueError(f"{CORRECTION_KEY} shape {jnp.shape(corr)} != x shape {x.shape}.")


def dsm_loss_fn(diffusion: Diffusion) -> Callable[[nnx.Module, dict], LossOutput]:
  """``loss_fn(model, batch) -> LossOutput`` of per-sample DSM for the train step.

  Reads ``x``, ``t``, ``sigma``, ``noise`` and, when present,
  ``score_correction`` (TIW-DSM's ``grad_x log w_t``; absent = plain DSM).
  The correction is under ``stop_gradient``.

  Args:
    diffusion: the parameterisation (:class:`VPDiffusion` or
      :class:`EDMDiffusion`) whose ``loss`` is evaluated.

  Returns:
    ``loss_fn(model, batch) -> LossOutput`` with ``[B]`` float32 per-sample
    losses; it raises ``ValueError`` (at trace time) for a batch without a full
    noise draw.
  """

  def loss_fn(model, batch):
    check_perturbed_batch(batch)
    corr = batch.get(CORRECTION_KEY)
    if corr is not None:
      corr = jax.lax.stop_gradient(corr)
    return LossOutput(diffusion.loss(model, batch["x"], batch["t"], batch["sigma"], batch["noise"], corr))

  return loss_fn


def global_indices(n_local: int, axis_name: AxisName = None) -> jax.Array:
  """Global batch positions of this device's ``n_local`` rows (``arange`` off shard_map).

  Args:
    n_local: the number of rows on this device.
    axis_name: the ``shard_map`` data axis, else None.

  Returns:
    int32 ``[n_local]``: ``axis_index * n_local + arange(n_local)``, or
    ``arange(n_local)`` without an axis.
  """
  idx = jnp.arange(n_local, dtype=jnp.int32)
  if axis_name is None:
    return idx
  return jax.lax.axis_index(axis_name).astype(jnp.int32) * n_local + idx


def global_batch_size(n_local: int, axis_name: AxisName = None) -> int:
  """The global batch size from this device's row count.

  Args:
    n_local: the number of rows on this device.
    axis_name: the ``shard_map`` data axis, else None.

  Returns:
    ``n_local`` times the size of ``axis_name`` (``n_local`` without an axis).
  """
  return n_local if axis_name is None else n_local * jax.lax.axis_size(axis_name)


def draw_perturbation(
  diffusion: Diffusion,
  key: jax.Array,
  x: jax.Array,
  *,
  axis_name: AxisName = None,
  pair_halves: bool = False,
) -> dict[str, jax.Array]:
  """Draws ``t``, ``sigma`` (``[B]``) and ``noise`` (like ``x``) per sample.

  Sample ``i``'s draw depends only on ``key`` and its global index ``i``, so it
  does not depend on how the batch is split over devices.

  Args:
    diffusion: the parameterisation whose :meth:`sample_level` draws the levels.
    key: a PRNG key (e.g. ``PrepareContext.key``).
    x: ``[B, ...]`` this device's clean samples.
    axis_name: the ``shard_map`` data axis, else None.
    pair_halves: give global rows ``i`` and ``i + B/2`` the same level (a
      discriminator batch ``[reference; biased]`` at equal times). Needs an
      even global batch.

  Returns:
    ``{"t": [B], "sigma": [B], "noise": [B, ...]}`` (float32).

  Raises:
    ValueError: ``x`` has rank < 2, or ``pair_halves`` with an odd global batch.
  """
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"x must be [B, ...] with rank >= 2, got shape {x.shape}.")
  idx = global_indices(x.shape[0], axis_name)
  level_idx = idx
  if pair_halves:
    n = global_batch_size(x.shape[0], axis_name)
    if n % 2:
      raise ValueError(f"pair_halves needs an even global batch, got {n}.")
    level_idx = idx % (n // 2)
  level_key, noise_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  t, sigma = jax.vmap(lambda i: diffusion.sample_level(jax.random.fold_in(level_key, i)))(level_idx)
  noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(noise_key, i), x.shape[1:], jnp.float32))(
    idx
  )
  return {"t": t, "sigma": sigma, "noise": noise}


def perturb_batch(
  diffusion: Diffusion, batch: dict, key: jax.Array, *, axis_name: AxisName = None, pair_halves: bool = False
) -> dict:
  """Adds a noise draw (:func:`draw_perturbation`) to a dict batch lacking one.

  A batch that already has all of ``t``, ``sigma`` and ``noise`` is returned as
  is; one with only some of them raises (a half-given draw is a bug).

  Args:
    diffusion: the parameterisation whose ``sample_level`` draws the levels.
    batch: a dict batch with the clean samples ``"x"`` ``[B, ...]``.
    key: a PRNG key (e.g. ``PrepareContext.key``).
    axis_name: the ``shard_map`` data axis, else None.
    pair_halves: see :func:`draw_perturbation`.

  Returns:
    ``batch`` with ``"t"`` ``[B]``, ``"sigma"`` ``[B]`` and ``"noise"``
    ``[B, ...]`` added (a new dict; the input is not modified).

  Raises:
    ValueError: ``batch`` is not a dict with ``"x"``, holds only part of a draw
      or a mis-shaped one.
  """
  if not isinstance(batch, dict) or "x" not in batch:
    raise ValueError("a DSM batch must be a dict with the clean samples under 'x'.")
  present = [k for k in PERTURBATION_KEYS if k in batch]
  if len(present) == len(PERTURBATION_KEYS):
    check_perturbed_batch(batch)
    return batch
  if present:
    raise ValueError(
      f"the batch has {present} but not all of {PERTURBATION_KEYS}: give the whole draw or none of it."
    )
  draw = draw_perturbation(diffusion, key, batch["x"], axis_name=axis_name, pair_halves=pair_halves)
  return {**batch, **draw}


def dsm_weighting(diffusion: Diffusion) -> Weighting:
  """The plain DSM step: uniform weights, noise drawn in ``prepare`` from ``ctx.key``.

  Args:
    diffusion: the parameterisation whose ``sample_level`` draws the levels.

  Returns:
    A stateless :class:`~jaxweights.Weighting` whose ``prepare`` adds a noise
    draw (:func:`perturb_batch`) and whose ``update`` gives uniform weights.
  """

  def prepare(ctx: PrepareContext):
    return perturb_batch(diffusion, ctx.batch, ctx.key, axis_name=ctx.axis_name)

  def update(inputs: WeightInputs, state):
    return normalize.uniform(inputs.mask, axis_name=inputs.axis_name), state

  return Weighting(init=tuple, update=update, prepare=prepare)
