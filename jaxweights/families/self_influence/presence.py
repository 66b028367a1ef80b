"""Self-influence scores and PRESENCE reweighting (Thakkar et al., EMNLP 2023).

The self-influence of a sample ``z`` is its squared gradient norm
``s(z) = ||grad l(z)||^2`` (restricted to a layer set K); TracIn sums it over
checkpoints with their learning rates, ``sum_c eta_c ||grad l(z; theta_c)||^2``.

PRESENCE weights a batch by

    z_i = (s_i - mean(s)) / sqrt(var(s) + eps),    w = softmax(tau * z),

with the mean, variance and softmax taken over the valid samples of the global
batch: the weights are ``>= 0``, sum to 1 over the valid samples, and carry
no gradient to the scores (which are detached). ``tau`` follows a two-stage
schedule: ``+1`` ("direct": favour novel, high self-influence samples) for the
first ``I`` steps, then ``-1`` ("inverse": suppress likely noise). PRESENCE can
score single samples (the paper's definition) or microbatches (what the
authors ran: the batch split into M groups, each scored by the squared norm of
its summed gradient; each sample then gets its group's weight shared among the
group's valid samples).

With ``method="ghost"`` on a model whose every parameter's every use is captured
exactly (see :func:`jaxweights.families.self_influence.grad_norms.ghost_plan`),
the PRESENCE step uses book-keeping (Bu et al., ICML 2023): one tapped
forward/backward pass yields the norms, and the weighted gradient is formed from
the same stored activations and output gradients, so no second backward pass
is needed.

References:
  Thakkar, Bolukbasi, Ganapathy, Vashishth, Chandar, Talukdar. "Self-Influence
  Guided Data Reweighting for Language Model Pre-training." EMNLP 2023.
  Pruthi, Liu, Kale, Sundararajan. "Estimating Training Data Influence by Tracing
  Gradient Descent." NeurIPS 2020.
  Bu, Wang, Zha, Karypis. "Differentially Private Optimization on Large Model at
  Small Cost." ICML 2023 (book-keeping).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxweights.core import normalize
from jaxweights.core.contract import (
  GradientContext,
  GradientOutput,
  PrepareContext,
  Weighting,
  WeightInputs,
)
from jaxweights.core.reductions import AxisName, as_mask, check_per_sample, concrete_scalar
from jaxweights.core.step import merge_model
from jaxweights.families.self_influence import grad_norms

#: A schedule ``step -> value`` evaluated at the int32 step counter.
Schedule = Callable[[jax.Array], jax.Array]
#: The batch key under which PRESENCE's ``prepare`` stores the ``[batch]`` scores.
SCORE_KEY = "presence_scores"


def presence_weights(
  scores: jax.Array,
  *,
  tau: jax.typing.ArrayLike = 1.0,
  mask: jax.Array | None = None,
  axis_name: AxisName = None,
  eps: float = 1e-8,
) -> jax.Array:
  """PRESENCE weights ``softmax(tau * zscore(scores))`` over the global batch.

  Args:
    scores: ``[n]`` self-influence scores (squared gradient norms) of samples
      or microbatches.
    tau: inverse temperature; ``+1`` favours high self-influence, ``-1``
      suppresses it, 0 is uniform. Any finite real: a concrete NaN/inf raises,
      a traced one gives uniform weights.
    mask: optional ``[n]`` booleans; False = padding (weight 0).
    axis_name: data axis under ``shard_map``/``pmap``.
    eps: added to the variance in the z-score.

  Returns:
    ``[n]`` float32 weights (no gradient flows to ``scores``), ``>= 0``,
    summing to 1 over the valid (masked-in, finite-score) entries of the global
    batch (all 0 if none is valid).

  Raises:
    ValueError: ``scores`` is not a non-empty ``[n]`` vector, ``mask`` does not
      match it, or a concrete ``tau`` is NaN or infinite.
    TypeError: ``scores`` is not floating point.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> scores = jnp.array([1.0, 2.0, 3.0, 10.0])
    >>> w = jw.presence_weights(scores, tau=1.0)
    >>> w.shape, round(float(w.sum()), 4)
    ((4,), 1.0)
    >>> bool(w[3] > w[2] > w[0])  # tau = +1 favours high self-influence
    True
    >>> w = jw.presence_weights(scores, tau=-1.0, mask=jnp.array([True, True, True, False]))
    >>> round(float(w[3]), 4), bool(w[0] > w[1] > w[2])
    (0.0, True)
  """
  scores = check_per_sample(scores, "scores")
  mask = as_mask(mask, scores) & jnp.isfinite(scores)
  scores = jnp.where(mask, jax.lax.stop_gradient(scores), 0.0)
  value = concrete_scalar(tau, "tau")
  if value is not None and not np.isfinite(value):
    raise ValueError(f"tau must be finite, got {value}.")
  tau = jnp.asarray(tau, jnp.float32)
  tau = jnp.where(jnp.isfinite(tau), tau, 0.0)  # a traced NaN/inf tau: uniform weights
  z = normalize.zscore(scores, mask, axis_name=axis_name, eps=eps)
  return normalize.softmax(tau * z, mask, axis_name=axis_name)


def two_stage_tau(switch_step: int, tau: float = 1.0) -> Schedule:
  """PRESENCE's two-stage schedule: ``+tau`` for steps ``< switch_step``, then ``-tau``.

  The first stage favours high self-influence samples, the second suppresses
  them (Thakkar et al., EMNLP 2023).

  Args:
    switch_step: the first step of the second ("inverse") stage, ``>= 0``.
    tau: the magnitude of the inverse temperature, finite.

  Returns:
    ``schedule(step) -> tau``: a float32 scalar, for ``presence_weighting(tau=...)``.

  Raises:
    ValueError: ``switch_step < 0`` or ``tau`` is not finite.

  Examples:
    >>> import jaxweights as jw
    >>> schedule = jw.two_stage_tau(switch_step=100, tau=1.0)
    >>> float(schedule(0)), float(schedule(99)), float(schedule(100))
    (1.0, 1.0, -1.0)
  """
  if switch_step < 0:
    raise ValueError(f"switch_step must be >= 0, got {switch_step}.")
  if not np.isfinite(tau):
    raise ValueError(f"tau must be finite, got {tau}.")
  return lambda step: jnp.where(jnp.asarray(step) < switch_step, tau, -tau).astype(jnp.float32)


def _expand_group_weights(group_w, sample_mask, microbatches, axis_name):
  """Per-microbatch weights -> per-sample weights (shared by a group's valid samples)."""
  del axis_name
  m = sample_mask.reshape(microbatches, -1).astype(jnp.float32)
  per = group_w / jnp.maximum(m.sum(1), 1.0)
  return (per[:, None] * m).reshape(-1)


def _weights(scores, sample_mask, tau, microbatches, axis_name):
  """Per-sample weights from sample or microbatch scores."""
  if microbatches is None:
    return presence_weights(scores, tau=tau, mask=sample_mask, axis_name=axis_name)
  group_mask = sample_mask.reshape(microbatches, -1).any(axis=1)
  gw = presence_weights(scores, tau=tau, mask=group_mask, axis_name=axis_name)
  return _expand_group_weights(gw, sample_mask, microbatches, axis_name)


def presence_weighting(
  *,
  tau: float | Schedule = 1.0,
  method: grad_norms.Method = "ghost",
  layers: grad_norms.LayerSelector = None,
  microbatches: int | None = None,
  bookkeeping: Literal["auto", "never"] = "auto",
  fallback: Literal["vmap", "error"] = "vmap",
  num_probes: int = 16,
  chunk_size: int | None = None,
) -> Weighting:
  """The PRESENCE weighting for :func:`jaxweights.make_train_step`.

  Args:
    tau: a number or a schedule ``step -> tau`` (see :func:`two_stage_tau`).
    method: how self-influence is computed: ``"ghost"`` (exact), ``"vmap"``
      (exact, slow) or ``"jvp"`` (estimate).
    layers: the layer set K (path prefixes or a predicate); None = all layers.
    microbatches: None scores samples; an int M scores M contiguous microbatches
      (per device under ``shard_map``).
    bookkeeping: ``"auto"`` forms the weighted gradient from the ghost pass when
      every parameter's every use is captured (one backward pass); otherwise,
      and with ``"never"``, the step takes a second, ordinary backward pass.
    fallback: for ``method="ghost"``, parameters that cannot be tapped exactly
      get exact ``"vmap"`` norms (default) or raise (``"error"``); see
      :func:`jaxweights.families.self_influence.grad_norms.ghost_plan`.
    num_probes: probes for ``method="jvp"``.
    chunk_size: samples per chunk of the norm computation (``vmap``, or
      ``ghost`` captured chunk by chunk, which bounds memory and then uses the
      two-pass path instead of book-keeping).

  Returns:
    A :class:`~jaxweights.Weighting` whose state is an empty tuple. Its
    ``update`` returns ``[batch]`` weights (:func:`presence_weights` of the
    sample or microbatch scores) under ``stop_gradient``, summing to 1 over the
    valid samples of the global batch. Unless book-keeping applies, ``prepare``
    adds the scores to the (dict) batch under ``"presence_scores"``.

  Raises:
    ValueError: a constant ``tau`` is not finite, ``microbatches < 1``, or
      ``bookkeeping``, ``fallback`` or ``method`` is not one of its values.

  Examples:
    >>> import jaxweights as jw
    >>> weighting = jw.presence_weighting(tau=jw.two_stage_tau(switch_step=100))
    >>> weighting.init(), weighting.prepare is not None
    ((), True)
  """
  if not callable(tau) and not np.isfinite(tau):
    raise ValueError(f"tau must be finite, got {tau}.")
  if microbatches is not None and microbatches < 1:
    raise ValueError(f"microbatches must be >= 1, got {microbatches}.")
  if bookkeeping not in ("auto", "never"):
    raise ValueError(f"bookkeeping must be 'auto' or 'never', got {bookkeeping!r}.")
  if fallback not in ("vmap", "error"):
    raise ValueError(f"fallback must be 'vmap' or 'error', got {fallback!r}.")
  if method not in ("ghost", "vmap", "jvp"):
    raise ValueError(f"method must be 'ghost', 'vmap' or 'jvp', got {method!r}.")
  tau_at = tau if callable(tau) else (lambda step: jnp.float32(tau))

  def use_bookkeeping(loss_fn, model, batch) -> bool:
    """Decided at trace time: every parameter's every use is captured exactly."""
    if method != "ghost" or bookkeeping != "auto" or chunk_size is not None:
      return False  # chunked ghost norms bound memory: book-keeping would undo that
    grad_norms._check_independent(model)  # pylint: disable=protected-access
    plan = grad_norms.ghost_plan(loss_fn, model, batch)
    return all(v == "ghost" for v in plan.values())

  def prepare(ctx: PrepareContext):
    if use_bookkeeping(ctx.loss_fn, ctx.model, ctx.batch):
      return ctx.batch  # the gradient override computes everything in one pass
    if not isinstance(ctx.batch, dict):
      raise TypeError(
        f"PRESENCE's prepare pass adds '{SCORE_KEY}' to a dict batch, got {type(ctx.batch).__name__}."
      )
    norms = grad_norms.per_sample_grad_norms(
      ctx.loss_fn,
      ctx.model,
      ctx.batch,
      method=method,
      layers=layers,
      microbatches=microbatches,
      num_probes=num_probes,
      key=ctx.key,
      chunk_size=chunk_size,
      axis_name=ctx.axis_name,
      fallback=fallback,
    )
    scores = norms.total
    if microbatches is not None:  # store per sample: each gets its group's score
      n = jax.tree.leaves(ctx.batch)[0].shape[0] // microbatches
      scores = jnp.repeat(scores, n)
    return {**ctx.batch, SCORE_KEY: scores}

  def update(inputs: WeightInputs, state):
    scores = inputs.batch[SCORE_KEY]
    if microbatches is not None:
      scores = scores.reshape(microbatches, -1)[:, 0]
    w = _weights(scores, inputs.mask, tau_at(inputs.step), microbatches, inputs.axis_name)
    return w, state

  def gradient(ctx: GradientContext) -> GradientOutput | None:
    model = merge_model(ctx.graphdef, ctx.params, ctx.model_vars)
    if not use_bookkeeping(ctx.loss_fn, model, ctx.batch):
      return None  # decline: the step takes the ordinary weighted backward pass
    capture = grad_norms.ghost_capture(ctx.loss_fn, model, ctx.batch, axis_name=ctx.axis_name)
    info = grad_norms._analyse(model)  # pylint: disable=protected-access
    chosen = [p for p, prm in info.params.items() if grad_norms._selected(prm.owner, layers)]  # pylint: disable=protected-access
    if not chosen:
      raise ValueError(f"layers={layers!r} selects no parameters.")
    norms = grad_norms.ghost_norms_from_capture(
      capture, model, microbatches=microbatches, axis_name=ctx.axis_name, params=chosen
    )
    w = _weights(norms.total, capture.valid, tau_at(ctx.step), microbatches, ctx.axis_name)
    grads = grad_norms.bookkeeping_grads(model, capture, w, axis_name=ctx.axis_name)
    if ctx.axis_name is not None:
      grads = jax.lax.psum(grads, ctx.axis_name)
    return GradientOutput(grads, capture.losses, capture.valid, w, ctx.state, capture.model_vars)

  return Weighting(init=tuple, update=update, prepare=prepare, gradient=gradient)


# --- offline scoring ------------------------------------------------------------------


def self_influence_scores(
  loss_fn: Callable[[Any, Any], Any],
  model: nnx.Module,
  batches: Iterable[Any],
  **norm_kwargs: Any,
) -> np.ndarray:
  """Current-parameter self-influence of every sample in ``batches``.

  Args:
    loss_fn: ``loss_fn(model, batch) -> LossOutput``.
    model: the model at the parameters to score.
    batches: an iterable of batches (same shapes, so one compilation).
    **norm_kwargs: passed to :func:`jaxweights.families.self_influence.grad_norms.per_sample_grad_norms`
      (``method``, ``layers``, ...).

  Returns:
    float64 ``[n_samples]`` squared gradient norms (unnormalised), batches
    concatenated.
  """
  graphdef, state = nnx.split(model)
  score = _scorer(graphdef, loss_fn, _freeze(norm_kwargs))
  return np.concatenate([np.asarray(score(state, b), np.float64) for b in batches])


def _freeze(kwargs: dict) -> tuple:
  """Hashable form of the norm options (lists of layer prefixes become tuples)."""
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))


@functools.lru_cache(maxsize=32)
def _scorer(graphdef, loss_fn, frozen_kwargs):
  """One compiled scoring function per (model structure, loss, options): checkpoints
  of the same model reuse it instead of recompiling."""
  kwargs = dict(frozen_kwargs)

  @jax.jit
  def score(state, batch):
    return grad_norms.per_sample_grad_norms(loss_fn, nnx.merge(graphdef, state), batch, **kwargs).total

  return score


def tracin_self_influence(
  loss_fn: Callable[[Any, Any], Any],
  checkpoints: Sequence[nnx.Module],
  learning_rates: Sequence[float],
  batches: Sequence[Any],
  **norm_kwargs: Any,
) -> np.ndarray:
  """TracIn self-influence ``sum_c eta_c ||grad l(z; theta_c)||^2``.

  Args:
    loss_fn: ``loss_fn(model, batch) -> LossOutput``.
    checkpoints: models at the saved parameters ``theta_c``.
    learning_rates: ``eta_c``, one per checkpoint.
    batches: a sequence (re-iterated per checkpoint) of batches.
    **norm_kwargs: see :func:`self_influence_scores`.

  Returns:
    float64 ``[n_samples]`` scores (unnormalised), batches concatenated.

  Raises:
    ValueError: no checkpoint, or not one learning rate per checkpoint.
  """
  if len(checkpoints) != len(learning_rates) or not checkpoints:
    raise ValueError(
      f"need one learning rate per checkpoint and at least one checkpoint, got "
      f"{len(checkpoints)} checkpoints and {len(learning_rates)} rates."
    )
  total = None
  for model, lr in zip(checkpoints, learning_rates):
    s = lr * self_influence_scores(loss_fn, model, batches, **norm_kwargs)
    total = s if total is None else total + s
  return total
