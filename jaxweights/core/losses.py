"""Per-sample loss helpers: one scalar per sample, the input of every weighting.

They differ from optax's elementwise losses only in how they reduce to one value
per sample, and in what happens to samples with nothing to score (weight 0, loss 0:
never 0/0). A NaN/inf input propagates to that sample's loss only; the train step
gives such a sample weight 0 and counts it in ``n_nonfinite``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxweights.core.reductions import concrete_array


def token_mean_cross_entropy(
  logits: jax.Array,
  targets: jax.Array,
  token_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Mean next-token cross-entropy over each sequence's active tokens.

  Args:
    logits: ``[batch, seq, vocab]`` unnormalised log-probabilities.
    targets: ``[batch, seq]`` integer token ids.
    token_mask: optional ``[batch, seq]``; True/1 marks tokens that count.

  Returns:
    ``(losses, sample_mask)``: ``[batch]`` float32 mean CE over active tokens,
    and ``[batch]`` booleans, False for a sequence with no active token (its loss
    is 0 and it must get weight 0; the train step does this). An active target
    outside ``[0, vocab)`` gives its sequence a NaN loss under ``jit``.

  Raises:
    ValueError: ``logits`` is not rank 3, has an empty vocabulary axis, or
      ``targets``/``token_mask`` do not match its ``[batch, seq]``; or a
      concrete active target is outside ``[0, vocab)`` (e.g. -100 padding).
    TypeError: ``logits`` is not floating point or ``targets`` not integer.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> logits = jnp.zeros((2, 3, 4))  # uniform over a vocabulary of 4
    >>> targets = jnp.array([[1, 2, 3], [0, 0, 0]])
    >>> token_mask = jnp.array([[True, True, False], [False, False, False]])
    >>> losses, sample_mask = jw.token_mean_cross_entropy(logits, targets, token_mask)
    >>> [round(float(l), 4) for l in losses], sample_mask.tolist()
    ([1.3863, 0.0], [True, False])
  """
  logits, targets = jnp.asarray(logits), jnp.asarray(targets)
  if logits.ndim != 3:
    raise ValueError(f"logits must be [batch, seq, vocab], got shape {logits.shape}.")
  _check_float_int(logits, targets)
  if targets.shape != logits.shape[:2]:
    raise ValueError(f"targets shape {targets.shape} does not match logits' [batch, seq] {logits.shape[:2]}.")
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  if token_mask is None:
    token_mask = jnp.ones(targets.shape, bool)
  token_mask = jnp.asarray(token_mask)
  if token_mask.shape != targets.shape:
    raise ValueError(f"token_mask shape {token_mask.shape} does not match targets {targets.shape}.")
  ce = _nan_out_of_range(ce, targets, logits.shape[-1], "targets", token_mask)
  m = token_mask.astype(jnp.float32)
  count = m.sum(axis=1)
  total = jnp.where(m > 0, ce, 0.0).sum(axis=1)
  losses = total / jnp.maximum(count, 1.0)
  return losses, count > 0


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-sample softmax cross-entropy: ``[batch, classes]``, ``[batch]`` -> ``[batch]``.

  Args:
    logits: ``[batch, classes]`` float unnormalised log-probabilities (computed
      in float32).
    labels: ``[batch]`` integer class ids in ``[0, classes)``.

  Returns:
    ``[batch]`` float32 per-sample losses ``-log softmax(logits)[label]``; NaN
    for a traced label outside ``[0, classes)`` (the train step gives such a
    sample weight 0).

  Raises:
    ValueError: the shapes are not ``[batch, classes]`` and ``[batch]``, the
      class axis is empty, or a concrete label is outside ``[0, classes)``.
    TypeError: ``logits`` is not floating point or ``labels`` not integer.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]])
    >>> losses = jw.cross_entropy(logits, jnp.array([3, 0]))
    >>> losses.shape, [round(float(l), 4) for l in losses]
    ((2,), [1.3863, 0.0001])
  """
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(
      f"expected logits [batch, classes] and labels [batch], got {logits.shape} and {labels.shape}."
    )
  _check_float_int(logits, labels)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  return _nan_out_of_range(ce, labels, logits.shape[-1], "labels")


def label_in_range(
  labels: jax.Array, num_classes: int, name: str = "labels", where: jax.Array | None = None
) -> jax.Array:
  """``[...]`` booleans: ``0 <= label < num_classes``.

  A concrete (non-traced) array with an out-of-range entry where it counts
  (``where``) raises a ``ValueError``: jax would otherwise wrap -1 to the last
  class silently. Under ``jit`` the caller gives such entries a NaN loss, which
  the train step treats as padding (weight 0) and counts in ``n_nonfinite``.

  Args:
    labels: ``[...]`` integer class ids, any shape.
    num_classes: the number of classes.
    name: the argument's name in the error message.
    where: optional booleans of ``labels``' shape: only these entries are
      checked (None checks all).

  Returns:
    Booleans of ``labels``' shape, True where the label is in range.

  Raises:
    ValueError: ``labels`` is concrete and has an out-of-range entry where
      ``where`` is True.
  """
  ok = (labels >= 0) & (labels < num_classes)
  counts = concrete_array(ok if where is None else ok | ~jnp.asarray(where).astype(bool))
  if counts is not None:
    if not counts.all():
      bad = np.asarray(labels)[~counts]
      raise ValueError(
        f"{name} must be in [0, {num_classes}); got {bad[:5].tolist()} (e.g. -1 or "
        "-100 padding ids): mask those entries instead of passing them as labels."
      )
  return ok


def _nan_out_of_range(ce, labels, num_classes, name, where=None):
  return jnp.where(label_in_range(labels, num_classes, name, where), ce, jnp.nan)


def _check_float_int(logits, targets):
  if logits.shape[-1] == 0:
    raise ValueError(f"logits have an empty class axis (shape {logits.shape}).")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise TypeError(f"logits must be floating point, got dtype {logits.dtype}.")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise TypeError(f"targets/labels must be integer ids, got dtype {targets.dtype}.")


def squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-sample mean squared error over all non-batch axes -> ``[batch]``.

  Args:
    predictions: ``[batch, ...]`` float predictions (computed in float32).
    targets: ``[batch, ...]`` targets of the same shape.

  Returns:
    ``[batch]`` float32 ``mean((predictions - targets)^2)`` over each sample's
    elements.

  Raises:
    ValueError: ``predictions`` has no (or an empty) batch axis, no elements
      per sample, or a different shape from ``targets``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> predictions = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    >>> targets = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    >>> jw.squared_error(predictions, targets).tolist()
    [2.0, 1.0]
  """
  predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
  if predictions.ndim == 0 or predictions.shape[0] == 0:
    raise ValueError(f"predictions must have a non-empty batch axis, got shape {predictions.shape}.")
  if predictions.shape != targets.shape:
    raise ValueError(f"predictions {predictions.shape} and targets {targets.shape} differ.")
  if predictions.size == 0:
    raise ValueError(f"predictions have no elements per sample (shape {predictions.shape}).")
  se = (predictions.astype(jnp.float32) - targets.astype(jnp.float32)) ** 2
  return se.reshape(se.shape[0], -1).mean(axis=1)
