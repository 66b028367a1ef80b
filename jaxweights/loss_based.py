"""Loss-based sample reweighting (Sow et al., ICLR 2025).

Each sample is weighted by where its loss sits in the global batch:

1. min-max normalise the losses to ``h in [-delta, delta]``:
   ``h_i = delta * (2 l_i - l_max - l_min) / max(l_max - l_min, 1e-6)``;
2. score them with a strategy ``f(h)``:

   * ``"linupper"``:  ``f = min(h + delta, delta)`` (down-weights low losses;
     the paper's best),
   * ``"quadratic"``: ``f = 1 - h^2 / delta^2`` (favours mid-range losses),
   * ``"extremes"``:  ``f = |h|`` (favours both ends),
   * ``"uniform"``:   no reweighting;

3. ``w = softmax(f / r)`` over the valid samples of the global batch (sums to 1).
   ``r`` is the temperature of the closed-form maximiser of
   ``sum_i w_i f_i - r KL(w || uniform)``; ``r -> inf`` gives uniform weights and
   ``max w / min w <= exp(delta / r)`` for LinUpper and Extremes.

Non-finite losses are treated as padding (weight 0). A batch of one, or a batch
whose valid losses are all equal, gets uniform weights.

References:
  Sow, Lang, Ma, Zhu, Liang, Yang. "Dynamic Loss-Based Sample Reweighting for
  Improved Large Language Model Pretraining." ICLR 2025.
"""

from __future__ import annotations

from typing import Callable, Literal

import jax
import jax.numpy as jnp

from jaxweights import normalize
from jaxweights._reduce import AxisName, as_mask, check_per_sample, concrete_scalar
from jaxweights.weighting import WeightInputs, Weighting

Strategy = Literal["uniform", "linupper", "quadratic", "extremes"]
STRATEGIES: tuple[str, ...] = ("uniform", "linupper", "quadratic", "extremes")

Schedule = Callable[[jax.Array], jax.Array]


def strategy_scores(
    losses: jax.Array,
    strategy: Strategy,
    *,
    delta: float = 1.0,
    mask: jax.Array | None = None,
    axis_name: AxisName = None,
) -> jax.Array:
  """The strategy scores ``f(h)`` of ``[batch]`` losses (before the softmax).

  Returns:
    ``[batch]`` float32 scores, in ``[0, delta]`` for LinUpper and Extremes and
    ``[0, 1]`` for Quadratic; 0 for Uniform and for masked entries.
  """
  losses, mask = _clean(losses, mask)
  _check_strategy(strategy)
  delta = _check_delta(delta)
  u = normalize.minmax(losses, mask, axis_name=axis_name)
  h = delta * u
  if strategy == "uniform":
    f = jnp.zeros_like(h)
  elif strategy == "linupper":
    f = jnp.minimum(h + delta, delta)
  elif strategy == "quadratic":
    f = 1.0 - u**2
  else:  # extremes
    f = jnp.abs(h)
  return jnp.where(mask & (jnp.asarray(delta) > 0), f, 0.0)


def loss_weights(
    losses: jax.Array,
    strategy: Strategy,
    *,
    r: jax.typing.ArrayLike = 1.0,
    delta: float = 1.0,
    mask: jax.Array | None = None,
    axis_name: AxisName = None,
) -> jax.Array:
  """Loss-based per-sample weights ``softmax(f(h) / r)``.

  Args:
    losses: ``[batch]`` per-sample losses (detached by this function).
    strategy: ``"uniform"``, ``"linupper"``, ``"quadratic"`` or ``"extremes"``.
    r: temperature ``> 0``; ``float('inf')`` gives uniform weights. Python
      numbers ``<= 0`` raise; traced values are clamped to ``>= 1e-6``.
    delta: scale of the normalised losses (the paper uses 1).
    mask: optional ``[batch]`` booleans; False = padding (weight 0).
    axis_name: data axis under ``shard_map``/``pmap``; None under ``jit``.

  Returns:
    ``[batch]`` float32 weights, ``>= 0``, summing to 1 over valid samples.

  Example:
    >>> import jax.numpy as jnp
    >>> w = loss_weights(jnp.array([0.5, 1.0, 2.0]), "linupper", r=1.0)
    >>> bool(w[0] < w[1] < w[2]) and abs(float(w.sum()) - 1) < 1e-6
    True
  """
  losses, mask = _clean(losses, mask)
  delta = _check_delta(delta)
  f = strategy_scores(losses, strategy, delta=delta, mask=mask, axis_name=axis_name)
  return jax.lax.stop_gradient(
      normalize.softmax(f, mask, temperature=r, axis_name=axis_name)
  )


def linupper(losses, *, r=1.0, delta=1.0, mask=None, axis_name=None):
  """LinUpper weights; see :func:`loss_weights`."""
  return loss_weights(losses, "linupper", r=r, delta=delta, mask=mask, axis_name=axis_name)


def quadratic(losses, *, r=1.0, delta=1.0, mask=None, axis_name=None):
  """Quadratic weights; see :func:`loss_weights`."""
  return loss_weights(losses, "quadratic", r=r, delta=delta, mask=mask, axis_name=axis_name)


def extremes(losses, *, r=1.0, delta=1.0, mask=None, axis_name=None):
  """Extremes weights; see :func:`loss_weights`."""
  return loss_weights(losses, "extremes", r=r, delta=delta, mask=mask, axis_name=axis_name)


def warmup_temperature(r: float | Schedule, warmup_steps: int) -> Schedule:
  """A temperature schedule that is uniform (``r = inf``) for ``warmup_steps``.

  Args:
    r: the temperature after warm-up: a number or a schedule ``step -> r``
      (e.g. an ``optax`` schedule), evaluated at ``step - warmup_steps``.
    warmup_steps: number of initial steps with exactly uniform weights.

  Returns:
    ``schedule(step) -> r`` (float32 scalar).
  """
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
  if not callable(r):
    normalize.check_temperature(r)

  def schedule(step):
    step = jnp.asarray(step)
    after = r(step - warmup_steps) if callable(r) else r
    return jnp.where(step < warmup_steps, jnp.inf, jnp.asarray(after, jnp.float32))

  return schedule


def loss_reweighting(
    strategy: Strategy,
    *,
    r: float | Schedule = 1.0,
    delta: float = 1.0,
) -> Weighting:
  """A :class:`~jaxweights.Weighting` for the train step.

  Args:
    strategy: see :func:`loss_weights`.
    r: a temperature, or a schedule ``step -> r`` (see :func:`warmup_temperature`).
    delta: see :func:`loss_weights`.

  Returns:
    A stateless weighting (its state is an empty tuple; the step counter lives in
    the train state).
  """
  _check_strategy(strategy)
  _check_delta(delta)
  if not callable(r):
    normalize.check_temperature(r)

  def update(inputs: WeightInputs, state):
    temperature = r(inputs.step) if callable(r) else r
    w = loss_weights(
        inputs.losses,
        strategy,
        r=temperature,
        delta=delta,
        mask=inputs.mask,
        axis_name=inputs.axis_name,
    )
    return w, state

  return Weighting(init=tuple, update=update)


def _clean(losses, mask):
  losses = check_per_sample(losses)
  mask = as_mask(mask, losses) & jnp.isfinite(losses)
  return jnp.where(mask, jax.lax.stop_gradient(losses), 0.0), mask


def _check_strategy(strategy):
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")


def _check_delta(delta):
  """``delta > 0`` and finite: a concrete value raises; a traced invalid one gives
  scores of 0 (uniform weights), never inverted or NaN weights."""
  value = concrete_scalar(delta, "delta")
  if value is not None:
    if not 0 < value < float("inf"):
      raise ValueError(f"delta must be finite and > 0, got {value}.")
    return value
  d = jnp.asarray(delta, jnp.float32)
  return jnp.where((d > 0) & jnp.isfinite(d), d, 0.0)
