"""Masked batch normalisers shared by every weighting family.

All functions take a ``[batch]`` array, an optional boolean ``mask`` of the same
shape (False = padding: the entry takes no part in any statistic and gets 0 out),
and an optional ``axis_name`` for use under ``jax.shard_map``/``jax.pmap`` (see
:mod:`jaxweights.core.reductions`). Under plain ``jax.jit`` with sharded inputs leave
``axis_name=None``: the statistics are over the global batch either way.

Degenerate batches are documented, not NaN:

* inputs must be rank-1 floating arrays (a clear ValueError/TypeError otherwise);
* NaN/inf entries are treated as masked;
* every entry masked: outputs are all 0;
* all valid entries equal (including a batch of one): ``minmax`` and ``zscore``
  give 0, ``softmax`` gives uniform weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxweights.core.reductions import AxisName, as_mask, check_per_sample, concrete_scalar, gmax, gmin, gsum

_MINMAX_EPS = 1e-6


def _prepare(x, mask, name="x"):
  """Validated float32 ``[batch]`` values and mask (non-finite entries masked)."""
  x = check_per_sample(x, name)
  mask = as_mask(mask, x) & jnp.isfinite(x)
  return jnp.where(mask, x.astype(jnp.float32), 0.0), mask


_HUGE = 1e15  # |x| above this is rescaled first: squares and ranges would overflow float32


def _rescale(x, mask, axis_name, always: bool = False):
  """``x / s`` with ``s`` the global max ``|x|`` when it is huge (or ``always``).

  Every normaliser here is invariant to a positive scale (up to ``eps``), so
  this changes nothing for ordinary values and keeps values up to float32's max
  (3.4e38) from overflowing in ``x_max - x_min``, ``(x - mean)^2`` or a sum.
  """
  s = gmax(jnp.where(mask, jnp.abs(x), 0.0), axis_name)
  use = (s > 0) & jnp.isfinite(s) & (True if always else s > _HUGE)
  # Two divisions by sqrt(s): XLA turns x / s into x * (1 / s), and 1 / s is a
  # denormal (flushed to 0) for s above ~8.5e37.
  root = jnp.sqrt(jnp.where(use, s, 1.0))
  return x / root / root


def masked_count(mask: jax.Array, axis_name: AxisName = None) -> jax.Array:
  """Number of valid entries in the global batch.

  Args:
    mask: ``[batch]`` booleans, True where an entry is valid.
    axis_name: mapped axis name under ``shard_map``/``pmap``, else None.

  Returns:
    A float32 scalar: the number of True entries over the global batch.
  """
  return gsum(mask.astype(jnp.float32), axis_name)


def minmax(
  x: jax.Array,
  mask: jax.Array | None = None,
  *,
  axis_name: AxisName = None,
  eps: float = _MINMAX_EPS,
) -> jax.Array:
  """Min-max normalises ``x`` to ``[-1, 1]`` over the global batch.

  ``h_i = (2 x_i - x_max - x_min) / max(x_max - x_min, eps)``.

  Args:
    x: ``[batch]`` values.
    mask: optional ``[batch]`` booleans; masked entries are ignored and return 0.
    axis_name: mapped axis name under ``shard_map``/``pmap``, else None.
    eps: floor on the range, so all-equal values give 0 rather than 0/0.

  Returns:
    ``[batch]`` float32 values in ``[-1, 1]``; 0 where masked.

  Raises:
    ValueError: ``x`` is not rank 1, is empty, or ``mask`` has another shape or
      (concrete, non-boolean) holds values other than 0 and 1.
    TypeError: ``x`` is not floating point.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> h = jw.normalize.minmax(jnp.array([1.0, 2.0, 3.0, 100.0]), jnp.array([True, True, True, False]))
    >>> tuple(round(float(v), 4) for v in h)
    (-1.0, 0.0, 1.0, 0.0)
  """
  x, mask = _prepare(x, mask)
  x = _rescale(x, mask, axis_name)
  has_any = masked_count(mask, axis_name) > 0
  hi = gmax(jnp.where(mask, x, -jnp.inf), axis_name)
  lo = gmin(jnp.where(mask, x, jnp.inf), axis_name)
  hi = jnp.where(has_any, hi, 0.0)
  lo = jnp.where(has_any, lo, 0.0)
  h = (2.0 * x - hi - lo) / jnp.maximum(hi - lo, eps)
  return jnp.where(mask, jnp.clip(h, -1.0, 1.0), 0.0)


def zscore(
  x: jax.Array,
  mask: jax.Array | None = None,
  *,
  axis_name: AxisName = None,
  eps: float = 1e-8,
) -> jax.Array:
  """Z-scores ``x`` over the global batch: ``(x - mean) / sqrt(var + eps)``.

  Args:
    x: ``[batch]`` values.
    mask: optional ``[batch]`` booleans; masked entries are ignored and return 0.
    axis_name: mapped axis name under ``shard_map``/``pmap``, else None.
    eps: added to the (population) variance.

  Returns:
    ``[batch]`` float32 standardised values; 0 where masked.

  Raises:
    ValueError: ``x`` is not rank 1, is empty, or ``mask`` has another shape or
      (concrete, non-boolean) holds values other than 0 and 1.
    TypeError: ``x`` is not floating point.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> z = jw.normalize.zscore(jnp.array([1.0, 2.0, 3.0]))
    >>> tuple(round(float(v), 4) for v in z)
    (-1.2247, 0.0, 1.2247)
  """
  x, mask = _prepare(x, mask)
  x = _rescale(x, mask, axis_name)
  n = jnp.maximum(masked_count(mask, axis_name), 1.0)
  xm = jnp.where(mask, x, 0.0)
  mean = gsum(xm, axis_name) / n
  var = gsum(jnp.where(mask, (x - mean) ** 2, 0.0), axis_name) / n
  return jnp.where(mask, (x - mean) / jnp.sqrt(var + eps), 0.0)


def softmax(
  logits: jax.Array,
  mask: jax.Array | None = None,
  *,
  temperature: jax.typing.ArrayLike = 1.0,
  axis_name: AxisName = None,
) -> jax.Array:
  """Masked softmax over the global batch: ``exp(x_i / T) / sum_j exp(x_j / T)``.

  Args:
    logits: ``[batch]`` scores.
    mask: optional ``[batch]`` booleans; masked entries get weight 0.
    temperature: ``T > 0``; ``T = inf`` gives exactly uniform weights. A Python
      number ``<= 0`` raises; a traced value is clamped to at least ``1e-6``.
    axis_name: mapped axis name under ``shard_map``/``pmap``, else None.

  Returns:
    ``[batch]`` float32 weights, non-negative, summing to 1 over the valid
    entries of the global batch (all 0 if every entry is masked).

  Raises:
    ValueError: ``logits`` is not rank 1 or is empty; ``mask`` has another
      shape or invalid values; or a concrete ``temperature`` is ``<= 0``, NaN or
      not a real scalar.
    TypeError: ``logits`` is not floating point.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> w = jw.normalize.softmax(jnp.log(jnp.array([1.0, 3.0, 4.0])))
    >>> tuple(round(float(v), 4) for v in w)
    (0.125, 0.375, 0.5)
    >>> w = jw.normalize.softmax(jnp.array([1.0, 3.0, 4.0]), temperature=float("inf"))
    >>> tuple(round(float(v), 4) for v in w)
    (0.3333, 0.3333, 0.3333)
  """
  temperature = check_temperature(temperature)
  x, mask = _prepare(logits, mask, "logits")
  big = jnp.finfo(jnp.float32).max
  z = jnp.clip(x / temperature, -big, big)  # a tiny temperature may overflow
  top = gmax(jnp.where(mask, z, -jnp.inf), axis_name)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  e = jnp.where(mask, jnp.exp(z - top), 0.0)
  return _safe_div(e, gsum(e, axis_name))


def sum_to_one(w: jax.Array, mask: jax.Array | None = None, *, axis_name: AxisName = None) -> jax.Array:
  """Scales non-negative ``w`` to sum to 1 over the valid global batch.

  All-zero (or all-masked) input returns zeros. Any finite float32 input works
  (rescaled by its max first); values below float32's normal range (~1.2e-38)
  count as 0, because XLA flushes denormals on CPU and GPU.

  Args:
    w: ``[batch]`` float non-negative values; negative entries are treated as
      masked.
    mask: optional ``[batch]`` booleans; masked entries get 0.
    axis_name: mapped axis name under ``shard_map``/``pmap``, else None.

  Returns:
    ``[batch]`` float32 weights summing to 1 over the valid entries of the
    global batch (all 0 if none is valid or all are 0).

  Raises:
    ValueError: ``w`` is not rank 1, is empty, or ``mask`` has another shape or
      (concrete, non-boolean) holds values other than 0 and 1.
    TypeError: ``w`` is not floating point.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> w = jw.normalize.sum_to_one(jnp.array([1.0, 3.0, 5.0]), jnp.array([True, True, False]))
    >>> tuple(round(float(v), 4) for v in w)
    (0.25, 0.75, 0.0)
  """
  w, mask = _prepare(w, mask, "w")
  mask = mask & (w >= 0)
  w = _rescale(jnp.where(mask, w, 0.0), mask, axis_name, always=True)
  return _safe_div(w, gsum(w, axis_name))


def mean_one(w: jax.Array, mask: jax.Array | None = None, *, axis_name: AxisName = None) -> jax.Array:
  """Scales non-negative ``w`` to mean 1 over the valid global batch.

  All-zero (or all-masked) input returns zeros.

  Args:
    w: ``[batch]`` float non-negative values; negative entries are treated as
      masked.
    mask: optional ``[batch]`` booleans; masked entries get 0.
    axis_name: mapped axis name under ``shard_map``/``pmap``, else None.

  Returns:
    ``[batch]`` float32 weights with mean 1 over the valid entries of the
    global batch (they sum to ``n_valid``); 0 where masked.

  Raises:
    ValueError: ``w`` is not rank 1, is empty, or ``mask`` has another shape or
      (concrete, non-boolean) holds values other than 0 and 1.
    TypeError: ``w`` is not floating point.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> w = jw.normalize.mean_one(jnp.array([1.0, 3.0]))
    >>> tuple(round(float(v), 4) for v in w)
    (0.5, 1.5)
  """
  w, mask = _prepare(w, mask, "w")
  mask = mask & (w >= 0)
  return sum_to_one(w, mask, axis_name=axis_name) * masked_count(mask, axis_name)


def uniform(mask: jax.Array, *, axis_name: AxisName = None) -> jax.Array:
  """Uniform weights ``1 / n_valid`` on the valid entries (sum to 1).

  Args:
    mask: ``[batch]`` booleans (or 0/1 values), True where an entry is valid.
    axis_name: mapped axis name under ``shard_map``/``pmap``, else None.

  Returns:
    ``[batch]`` float32 weights: ``1 / n_valid`` where valid, 0 elsewhere (all 0
    if no entry is valid).
  """
  mask = jnp.asarray(mask, bool)
  return sum_to_one(mask.astype(jnp.float32), mask, axis_name=axis_name)


def effective_sample_size(w: jax.Array, *, axis_name: AxisName = None) -> jax.Array:
  """Kish's effective sample size ``(sum w)^2 / sum w^2`` of ``[batch]`` weights.

  It is ``n`` for uniform weights over ``n`` samples and 1 when one sample holds
  all the weight (Kish, 1965, *Survey Sampling*).

  Args:
    w: ``[batch]`` float non-negative weights (padding entries should be 0).
    axis_name: mapped axis name under ``shard_map``/``pmap``, else None.

  Returns:
    A float32 scalar in ``[1, n]`` over the global batch; 0 if every weight is 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> round(float(jw.effective_sample_size(jnp.full(4, 0.25))), 4)
    4.0
    >>> round(float(jw.effective_sample_size(jnp.array([1.0, 0.0, 0.0, 0.0]))), 4)
    1.0
  """
  w = jnp.asarray(w, jnp.float32)
  s = gsum(w, axis_name)
  return _safe_div(s * s, gsum(w * w, axis_name))


def check_temperature(temperature: jax.typing.ArrayLike) -> float | jax.Array:
  """Validates a temperature given as a Python, numpy or jax scalar.

  A concrete value ``<= 0`` or NaN raises. A traced value cannot be checked at
  trace time: values in ``[0, 1e-6)`` are clamped to ``1e-6``, so a schedule that
  anneals to 0 degrades to (near) argmax; a negative or NaN value becomes ``inf``
  (exactly uniform weights: never NaN, never inverted weights).

  Args:
    temperature: a scalar temperature (``inf`` allowed), concrete or traced.

  Returns:
    The concrete value as a Python float, or for a traced value a float32
    scalar clamped as described above.

  Raises:
    ValueError: a concrete ``temperature`` is ``<= 0``, NaN, or not a real
      scalar.
  """
  value = concrete_scalar(temperature, "temperature")
  if value is not None:
    if not value > 0:  # also catches NaN
      raise ValueError(f"temperature must be > 0 (use float('inf') for uniform), got {value}.")
    return value
  t = jnp.asarray(temperature, jnp.float32)
  return jnp.where(t >= 0, jnp.maximum(t, 1e-6), jnp.inf)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
