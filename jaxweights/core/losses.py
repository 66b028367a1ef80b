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
    is 0 and it must get weight 0; the train step does this).
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
  """Per-sample softmax cross-entropy: ``[batch, classes]``, ``[batch]`` -> ``[batch]``."""
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
  """Per-sample mean squared error over all non-batch axes -> ``[batch]``."""
  predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
  if predictions.ndim == 0 or predictions.shape[0] == 0:
    raise ValueError(f"predictions must have a non-empty batch axis, got shape {predictions.shape}.")
  if predictions.shape != targets.shape:
    raise ValueError(f"predictions {predictions.shape} and targets {targets.shape} differ.")
  if predictions.size == 0:
    raise ValueError(f"predictions have no elements per sample (shape {predictions.shape}).")
  se = (predictions.astype(jnp.float32) - targets.astype(jnp.float32)) ** 2
  return se.reshape(se.shape[0], -1).mean(axis=1)
