"""Loss-based sample reweighting (Sow et al., ICLR 2025).

Each sample is weighted by where its loss sits in the global batch:

1. min-max normalise the losses to ``h in [-delta, delta]``:
   ``h_i = delta * (2 l_i - l_max - l_min) / max(l_max - l_min, 1e-6)``;
2. score them with a strategy ``f(h)``:

   * ``"linupper"``:  ``f = min(h + delta, delta)`` (down-weights low losses;
     the paper's best),
   * ``"quadratic"``: ``f = 1 - h^2 / delta^2`` (favours mid-range losses),
   * ``"extremes"``:  ``f = |h|`` (favours both ends),
   * ``"uniform"``:   no reweighting (the baseline);

3. ``w = softmax(f / r)`` over the valid samples of the global batch: weights
   ``>= 0`` summing to 1, under ``stop_gradient``.
   ``r`` is the temperature of the closed-form maximiser of
   ``sum_i w_i f_i - r KL(w || uniform)``; ``r -> inf`` gives uniform weights and
   ``max w / min w <= exp(delta / r)`` for LinUpper and Extremes.

Non-finite losses are treated as padding (weight 0). A batch of one, or a batch
whose valid losses are all equal, gets uniform weights.

Each strategy has a weight function (``linupper_weights``: losses in, weights
out) and a train-step factory (``linupper_weighting``: a ``Weighting``); the
``WEIGHTS`` and ``WEIGHTINGS`` tables hold them by name for configurations.

References:
  Sow, Lang, Ma, Zhu, Liang, Yang. "Dynamic Loss-Based Sample Reweighting for
  Improved Large Language Model Pretraining." ICLR 2025.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from jaxweights.core import normalize
from jaxweights.core.contract import Weighting, WeightInputs
from jaxweights.core.reductions import AxisName, as_mask, check_per_sample, concrete_scalar

Strategy = Literal["uniform", "linupper", "quadratic", "extremes"]

Schedule = Callable[[jax.Array], jax.Array]


def _scores(losses, strategy: Strategy, delta, mask, axis_name: AxisName) -> jax.Array:
  """The strategy scores ``f(h)`` of cleaned ``[batch]`` losses: in ``[0, delta]``
  for LinUpper and Extremes, ``[0, 1]`` for Quadratic, 0 for Uniform and padding."""
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


def _loss_weights(losses, strategy: Strategy, *, r, delta, mask, axis_name) -> jax.Array:
  losses, mask = _clean(losses, mask)
  delta = _check_delta(delta)
  f = _scores(losses, strategy, delta, mask, axis_name)
  return jax.lax.stop_gradient(normalize.softmax(f, mask, temperature=r, axis_name=axis_name))


_WEIGHTS_DOC = """{title} weights ``softmax(f(h) / r)`` with ``f(h) = {formula}``.

  ``h`` is the loss min-max normalised over the valid samples of the global batch
  to ``[-delta, delta]``{note}.

  Args:
    losses: ``[batch]`` per-sample losses (detached here; non-finite entries are
      treated as padding).
    r: temperature ``> 0``: a Python, numpy or jax scalar, or traced. ``inf``
      gives uniform weights. A concrete ``r <= 0`` or NaN raises; a traced one
      is clamped to ``>= 1e-6`` (NaN or negative gives uniform weights).
    delta: scale of the normalised losses (the paper uses 1), finite and ``> 0``.
    mask: optional ``[batch]`` booleans (or 0/1 floats); False marks padding,
      which gets weight 0.
    axis_name: the batch axis under ``shard_map``; None under ``jit`` (sharded
      arrays are global there).

  Returns:
    ``[batch]`` float32 weights under ``stop_gradient``, ``>= 0``, summing to 1
    over the valid samples of the global batch (all 0 if none is valid).

  Raises:
    ValueError: ``losses`` is not a non-empty ``[batch]`` vector, ``mask`` does
      not match it, a concrete ``r`` is ``<= 0`` or NaN, or a concrete ``delta``
      is not finite and ``> 0``.
    TypeError: ``losses`` is not floating point.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> w = jw.{name}(jnp.array([0.5, 1.0, 3.0, 4.0]), r=1.0)
    >>> w.shape, round(float(w.sum()), 5)
    ((4,), 1.0)
    >>> {example}
    True
"""


def _make_weights(strategy: Strategy, title: str, formula: str, note: str, example: str):
  def weights(
    losses: jax.Array,
    *,
    r: jax.typing.ArrayLike = 1.0,
    delta: jax.typing.ArrayLike = 1.0,
    mask: jax.Array | None = None,
    axis_name: AxisName = None,
  ) -> jax.Array:
    return _loss_weights(losses, strategy, r=r, delta=delta, mask=mask, axis_name=axis_name)

  weights.__name__ = weights.__qualname__ = f"{strategy}_weights"
  weights.__doc__ = _WEIGHTS_DOC.format(
    title=title, formula=formula, note=note, name=weights.__name__, example=example
  )
  return weights


linupper_weights = _make_weights(
  "linupper",
  "LinUpper",
  "min(h + delta, delta)",
  ": the lower half of the losses is down-weighted linearly, the upper half is flat",
  "bool(w[0] < w[1] < w[2] == w[3])",
)
quadratic_weights = _make_weights(
  "quadratic",
  "Quadratic",
  "1 - h^2 / delta^2",
  ": mid-range losses get the most weight, both ends the least",
  "bool(w[0] == w[3] < w[1])",
)
extremes_weights = _make_weights(
  "extremes",
  "Extremes",
  "|h|",
  ": both ends of the loss range get the most weight",
  "bool(w[0] == w[3] > w[1])",
)


def _uniform_weights(losses, *, r=1.0, delta=1.0, mask=None, axis_name=None):
  """The uniform baseline with the signature of the strategies (``r``, ``delta``
  are validated and ignored)."""
  return _loss_weights(losses, "uniform", r=r, delta=delta, mask=mask, axis_name=axis_name)


def warmup_temperature(r: float | Schedule, warmup_steps: int) -> Schedule:
  """A temperature schedule that is uniform (``r = inf``) for ``warmup_steps``.

  Args:
    r: the temperature after warm-up: a number or a schedule ``step -> r``
      (e.g. an ``optax`` schedule), evaluated at ``step - warmup_steps``.
    warmup_steps: number of initial steps with exactly uniform weights.

  Returns:
    ``schedule(step) -> r``: a float32 scalar, ``inf`` while
    ``step < warmup_steps``.

  Raises:
    ValueError: ``warmup_steps < 0``, or a constant ``r`` is ``<= 0`` or NaN.

  Examples:
    >>> import jaxweights as jw
    >>> schedule = jw.warmup_temperature(1.0, warmup_steps=100)
    >>> float(schedule(0)), float(schedule(100))
    (inf, 1.0)
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


_WEIGHTING_DOC = """The {title} :class:`~jaxweights.Weighting` for the train step.

  Each step weights the global batch with :func:`~jaxweights.{weights}` of the
  per-sample losses the step's loss function returns.

  Args:
    r: the temperature ``> 0`` (``inf``: uniform weights), or a schedule
      ``step -> r`` evaluated at each step's int32 step counter (see
      :func:`~jaxweights.warmup_temperature`).
    delta: scale of the normalised losses, finite and ``> 0`` (see
      :func:`~jaxweights.{weights}`).

  Returns:
    A stateless :class:`~jaxweights.Weighting` (its state is an empty tuple; the
    step counter lives in the train state) whose ``update`` returns ``[batch]``
    weights under ``stop_gradient`` summing to 1 over the valid samples of the
    global batch.

  Raises:
    ValueError: a constant ``r`` is ``<= 0`` or NaN, or a concrete ``delta`` is
      not finite and ``> 0`` (checked here, before any step is traced).

  Examples:
    >>> import jaxweights as jw
    >>> weighting = jw.{name}(r=jw.warmup_temperature(1.0, warmup_steps=100))
    >>> weighting.init()
    ()
"""


def _make_weighting(strategy: Strategy, weights_fn, title: str):
  def weighting(*, r: float | Schedule = 1.0, delta: jax.typing.ArrayLike = 1.0) -> Weighting:
    _check_delta(delta)
    if not callable(r):
      normalize.check_temperature(r)

    def update(inputs: WeightInputs, state):
      temperature = r(inputs.step) if callable(r) else r
      w = weights_fn(inputs.losses, r=temperature, delta=delta, mask=inputs.mask, axis_name=inputs.axis_name)
      return w, state

    return Weighting(init=tuple, update=update)

  weighting.__name__ = weighting.__qualname__ = f"{strategy}_weighting"
  weighting.__doc__ = _WEIGHTING_DOC.format(title=title, weights=weights_fn.__name__, name=weighting.__name__)
  return weighting


linupper_weighting = _make_weighting("linupper", linupper_weights, "LinUpper")
quadratic_weighting = _make_weighting("quadratic", quadratic_weights, "Quadratic")
extremes_weighting = _make_weighting("extremes", extremes_weights, "Extremes")
_uniform_weighting = _make_weighting("uniform", _uniform_weights, "uniform (the baseline)")
_uniform_weighting.__doc__ = "The uniform baseline as a Weighting, with the strategies' signature."

#: The strategies by name, for configurations and sweeps: ``WEIGHTS[name]`` is the
#: weight function and ``WEIGHTINGS[name]`` the train-step factory. ``"uniform"``
#: is the paper's baseline with the same signature.
WEIGHTS: dict[str, Callable[..., jax.Array]] = {
  "uniform": _uniform_weights,
  "linupper": linupper_weights,
  "quadratic": quadratic_weights,
  "extremes": extremes_weights,
}
WEIGHTINGS: dict[str, Callable[..., Weighting]] = {
  "uniform": _uniform_weighting,
  "linupper": linupper_weighting,
  "quadratic": quadratic_weighting,
  "extremes": extremes_weighting,
}


def _clean(losses, mask):
  losses = check_per_sample(losses)
  mask = as_mask(mask, losses) & jnp.isfinite(losses)
  return jnp.where(mask, jax.lax.stop_gradient(losses), 0.0), mask


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
