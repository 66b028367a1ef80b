"""Global-batch reductions shared by every weight function.

Every statistic a weight function needs (sum, max, min, count) is taken over the
*global* batch. Two execution modes give that for free or with one collective:

* ``jax.jit`` with inputs sharded over a ``jax.sharding.Mesh``: the arrays are
  global, ``jnp`` reductions are global, XLA inserts the collectives. Pass
  ``axis_name=None``.
* ``jax.shard_map`` (or legacy ``jax.pmap``): each device sees its shard, so the
  local reduction is followed by ``lax.psum``/``pmax``/``pmin`` over ``axis_name``.

Sow et al.'s reference code for loss-based reweighting all-gathers the losses and
then slices the gathered weights by *local* rank, which is wrong on more than one
node. Reducing statistics (instead of gathering samples) avoids the slicing
altogether: each device keeps its own samples and only scalars cross devices.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

AxisName = Hashable | tuple[Hashable, ...] | None


def is_concrete(x: Any) -> bool:
  """True when ``x`` holds values at trace time (not a JAX tracer).

  Args:
    x: any value (an array, a Python number, a tracer...).

  Returns:
    False for a ``jax.core.Tracer``, True otherwise.
  """
  return not isinstance(x, jax.core.Tracer)


def as_mask(mask: jax.Array | None, like: jax.Array) -> jax.Array:
  """Returns a boolean ``[batch]`` mask (all True when ``mask`` is None).

  A non-boolean mask must hold 0s and 1s: a concrete one with any other value
  (0.5, NaN, 2) raises; a traced one counts an entry as valid only where it
  equals 1 exactly (0.5 and NaN are padding).

  Args:
    mask: optional ``[batch]`` booleans or 0/1 numbers; None means all valid.
    like: the ``[batch]`` per-sample values the mask belongs to.

  Returns:
    ``[batch]`` booleans, True where an entry is valid.

  Raises:
    ValueError: ``mask`` has another shape than ``like``, or is a concrete
      non-boolean mask with values other than 0 and 1.
  """
  if mask is None:
    return jnp.ones(like.shape, dtype=bool)
  mask = jnp.asarray(mask)
  if mask.shape != like.shape:
    raise ValueError(
      f"mask has shape {mask.shape} but the per-sample values have shape "
      f"{like.shape}; the mask must have one entry per sample."
    )
  if mask.dtype == jnp.bool_:
    return mask
  binary = concrete_array((mask == 0) | (mask == 1))
  if binary is not None and not binary.all():
    values = np.asarray(mask)[~binary]
    raise ValueError(
      f"a {mask.dtype} mask must hold only 0 and 1, got {values[:5].tolist()}; pass a boolean mask."
    )
  return mask == 1


def concrete_array(x: Any) -> np.ndarray | None:
  """``x`` as a numpy array when its value is known now, else None.

  Inside a trace (``jit``, ``grad``, ``eval_shape``...) even operations on
  constants are staged out, so the result is None there.

  Args:
    x: an array-like value, possibly a tracer.

  Returns:
    ``np.asarray(x)`` (same shape), or None when ``x`` is traced.
  """
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def check_per_sample(x: jax.Array, name: str = "losses") -> jax.Array:
  """Checks (at trace time) that ``x`` is a rank-1 ``[batch]`` array.

  Args:
    x: the per-sample values to check, expected ``[batch]`` floating point.
    name: the argument's name in the error message.

  Returns:
    ``x`` as a ``[batch]`` jax array (``jnp.asarray``, dtype unchanged).

  Raises:
    ValueError: ``x`` is not rank 1, or is empty.
    TypeError: ``x`` is not floating point.
  """
  x = jnp.asarray(x)
  if x.ndim != 1:
    raise ValueError(
      f"{name} must be a rank-1 [batch] array of per-sample values, got shape "
      f"{x.shape}. Reduce sequence losses per sample first "
      "(e.g. jaxweights.token_mean_cross_entropy)."
    )
  if x.shape[0] == 0:
    raise ValueError(f"{name} is empty: a batch needs at least one sample.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be floating point, got dtype {x.dtype}.")
  return x


def gsum(x: jax.Array, axis_name: AxisName = None) -> jax.Array:
  """Sum of all entries of ``x`` over the global batch.

  Args:
    x: an array of any shape (this device's shard under ``shard_map``).
    axis_name: mapped axis name under ``shard_map``/``pmap`` (the local result
      is then combined with ``lax.psum``), else None.

  Returns:
    A scalar of ``x``'s dtype.
  """
  s = jnp.sum(x)
  return s if axis_name is None else lax.psum(s, axis_name)


def gmax(x: jax.Array, axis_name: AxisName = None) -> jax.Array:
  """Maximum of all entries of ``x`` over the global batch.

  Args:
    x: an array of any shape (this device's shard under ``shard_map``).
    axis_name: mapped axis name under ``shard_map``/``pmap`` (the local result
      is then combined with ``lax.pmax``), else None.

  Returns:
    A scalar of ``x``'s dtype.
  """
  s = jnp.max(x)
  return s if axis_name is None else lax.pmax(s, axis_name)


def gmin(x: jax.Array, axis_name: AxisName = None) -> jax.Array:
  """Minimum of all entries of ``x`` over the global batch.

  Args:
    x: an array of any shape (this device's shard under ``shard_map``).
    axis_name: mapped axis name under ``shard_map``/``pmap`` (the local result
      is then combined with ``lax.pmin``), else None.

  Returns:
    A scalar of ``x``'s dtype.
  """
  s = jnp.min(x)
  return s if axis_name is None else lax.pmin(s, axis_name)


def concrete_scalar(value: Any, name: str) -> float | None:
  """``float(value)`` for a Python, numpy or (non-traced) jax scalar; None if traced.

  One validation path for hyper-parameters: callers raise a clear error for a
  concrete invalid value and apply a documented safe behaviour to a traced one.

  Args:
    value: a real scalar (Python, numpy or jax; bool, int or float), or a tracer.
    name: the argument's name in the error message.

  Returns:
    ``float(value)``, or None when ``value`` is traced.

  Raises:
    ValueError: ``value`` is concrete but not a real scalar.
  """
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    arr = np.asarray(value)
  except Exception:  # pylint: disable=broad-except
    raise ValueError(f"{name} must be a real scalar, got {type(value).__name__}.") from None
  if arr.shape != () or not (
    np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_
  ):
    raise ValueError(f"{name} must be a real scalar, got {value!r} (shape {arr.shape}, dtype {arr.dtype}).")
  return float(arr)
