"""The weighting contract: what every family hands to the composition layer.

A :class:`Weighting` is a pair of pure functions plus an optional pre-pass, in the
spirit of ``optax.GradientTransformation``:

* ``init() -> state``: the weighting's own pytree state (a schedule counter, an
  estimated transition matrix, a frozen discriminator's parameters, a probe...).
  It lives in the train state, so it jits, shards and checkpoints with it.
* ``update(inputs, state) -> (weights, state)``: per-sample weights from the
  detached per-sample losses and whatever else :class:`WeightInputs` carries.
  The weights must sum to 1 over the valid samples of the *global* batch; the
  train step minimises ``sum_i w_i * loss_i``. Uniform weights ``1/n`` therefore
  give the plain mean loss: the plain step is the same code.
* ``prepare(ctx) -> batch`` (optional): runs before the weighted forward pass and
  may add per-sample signals to the batch (per-sample gradient norms from layer
  activations and output gradients; density ratios and score corrections from a
  frozen discriminator; ...). Returning a batch keeps the loss function and the
  weights free to read those signals, while the composition layer stays ignorant
  of any family.

How each family maps on this contract (see DESIGN.md):

* loss-based: ``update`` only, from ``inputs.losses``;
* self-influence: ``prepare`` adds per-sample squared gradient norms;
* TIW-DSM: ``prepare`` adds ratios/score corrections; the loss reads them;
* DWS/RENT: ``update`` reads class probabilities from ``inputs.aux`` and draws
  with ``inputs.key``; resampling with replacement *is* a weight vector (the
  draw counts divided by the number of draws), so it needs no special path;
* Q-probe: a probe model trained through the same step with grouped losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxweights.core.reductions import AxisName

PyTree = Any


class WeightInputs(NamedTuple):
  """Everything a weighting may read at one step.

  Attributes:
    losses: ``[batch]`` per-sample losses, detached (``stop_gradient``). Entries
      that are masked or non-finite are replaced by 0.
    mask: ``[batch]`` booleans: valid (not padding, finite loss) samples.
    aux: the loss function's auxiliary per-sample outputs, detached.
    batch: the batch as the loss function saw it (after ``prepare``).
    step: int32 scalar, the optimiser step about to be taken.
    key: a PRNG key reserved for this step's weighting.
    axis_name: the mapped data axis under ``shard_map``, else None (static).
  """

  losses: jax.Array
  mask: jax.Array
  aux: PyTree
  batch: PyTree
  step: jax.Array
  key: jax.Array
  axis_name: AxisName = None


class PrepareContext(NamedTuple):
  """What a weighting's optional ``prepare`` pre-pass receives.

  Attributes:
    loss_fn: the per-sample loss ``loss_fn(model, batch) -> LossOutput``.
    model: the NNX model at the current parameters (do not mutate it).
    batch: the incoming batch.
    state: the weighting state.
    step: int32 scalar step.
    key: a PRNG key reserved for the pre-pass.
    axis_name: the mapped data axis under ``shard_map``, else None.
  """

  loss_fn: Callable[..., Any]
  model: Any
  batch: PyTree
  state: PyTree
  step: jax.Array
  key: jax.Array
  axis_name: AxisName = None


class GradientContext(NamedTuple):
  """What a weighting's optional ``gradient`` override receives.

  Attributes:
    loss_fn: the per-sample loss ``loss_fn(model, batch) -> LossOutput``.
    graphdef: the model's graph definition.
    params: the ``nnx.Param`` state to differentiate.
    model_vars: the model's other variables.
    batch: the batch (after ``prepare``).
    state: the weighting state.
    step: int32 scalar step.
    key: a PRNG key reserved for the weighting.
    axis_name: the mapped data axis under ``shard_map``, else None. An override
      that forms gradients itself (not through ``jax.grad`` wrt the replicated
      parameters) must ``psum`` them over this axis.
  """

  loss_fn: Callable[..., Any]
  graphdef: Any
  params: PyTree
  model_vars: PyTree
  batch: PyTree
  state: PyTree
  step: jax.Array
  key: jax.Array
  axis_name: AxisName = None


class GradientOutput(NamedTuple):
  """What a ``gradient`` override returns (the step does the rest).

  Attributes:
    grads: gradient of ``sum_i w_i l_i`` over the global batch, like ``params``.
    losses: ``[batch]`` detached per-sample losses, 0 where invalid.
    mask: ``[batch]`` valid samples.
    weights: ``[batch]`` the weights used (sum to 1 over the global batch).
    state: the new weighting state.
    model_vars: the model's non-parameter state after the pass (what the forward
      wrote: dropout RNG counters...); None keeps it unchanged.
  """

  grads: PyTree
  losses: jax.Array
  mask: jax.Array
  weights: jax.Array
  state: PyTree
  model_vars: PyTree = None


class Weighting(NamedTuple):
  """A per-sample weighting: ``init``, ``update``, optional ``prepare`` and ``gradient``.

  ``gradient`` (optional) replaces the step's ``jax.grad`` of the weighted loss
  when a family can form the weighted gradient more cheaply itself, e.g. from
  stored activations and output gradients (book-keeping), so weights that
  depend on per-sample gradients cost one backward pass instead of two. It may
  return None (decided at trace time, e.g. for a model it cannot handle) to
  decline; the step then takes the ordinary path through ``update``.

  Attributes:
    init: ``init() -> state``, the weighting's initial pytree state (kept in the
      train state, so it is jitted, sharded and checkpointed with it).
    update: ``update(inputs, state) -> (weights, state)``: ``[batch]`` float32
      weights that sum to 1 over the valid samples of the global batch, from a
      :class:`WeightInputs`, and the new state.
    prepare: optional ``prepare(ctx) -> batch`` pre-pass run before the
      weighted forward pass on a :class:`PrepareContext`; it may add per-sample
      signals to the batch. None skips it.
    gradient: optional ``gradient(ctx) -> GradientOutput | None`` override of
      the weighted gradient, given a :class:`GradientContext`; None (the field,
      or the value it returns) keeps the step's own ``jax.grad``.
  """

  init: Callable[[], PyTree]
  update: Callable[[WeightInputs, PyTree], tuple[jax.Array, PyTree]]
  prepare: Callable[[PrepareContext], PyTree] | None = None
  gradient: Callable[[GradientContext], GradientOutput | None] | None = None


def stateless(weight_fn: Callable[..., jax.Array], name: str | None = None) -> Weighting:
  """Wraps a pure ``weight_fn(losses, mask=, axis_name=) -> weights`` as a Weighting.

  The weighting's state is an empty tuple; ``update`` calls ``weight_fn`` on the
  step's detached per-sample losses, mask and axis name and passes the state
  through unchanged.

  Args:
    weight_fn: ``weight_fn(losses, *, mask, axis_name) -> weights`` mapping
      ``[batch]`` float32 losses and a ``[batch]`` boolean mask to ``[batch]``
      float32 weights that sum to 1 over the valid samples of the global batch.
    name: the ``__name__`` given to ``update`` (shown in traces and profiles);
      default ``weight_fn.__name__``.

  Returns:
    A stateless :class:`Weighting`: ``init() == ()``, no ``prepare``/``gradient``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> def inverse_loss(losses, *, mask, axis_name=None):
    ...   return jw.normalize.sum_to_one(1.0 / (1.0 + losses), mask, axis_name=axis_name)
    >>> weighting = jw.stateless(inverse_loss)
    >>> state = weighting.init()
    >>> state
    ()
    >>> inputs = jw.WeightInputs(
    ...   losses=jnp.array([0.0, 1.0, 3.0]),
    ...   mask=jnp.array([True, True, False]),
    ...   aux=None,
    ...   batch=None,
    ...   step=jnp.int32(0),
    ...   key=jax.random.key(0),
    ... )
    >>> weights, state = weighting.update(inputs, state)
    >>> tuple(round(float(w), 4) for w in weights)
    (0.6667, 0.3333, 0.0)
  """

  def update(inputs: WeightInputs, state):
    w = weight_fn(inputs.losses, mask=inputs.mask, axis_name=inputs.axis_name)
    return w, state

  update.__name__ = name or getattr(weight_fn, "__name__", "weights")
  return Weighting(init=tuple, update=update)


def uniform_weighting() -> Weighting:
  """Uniform ``1/n_valid`` weights: the plain mean-loss step.

  Returns:
    A stateless :class:`Weighting` whose ``update`` gives every valid sample of
    the global batch the weight ``1 / n_valid`` (and padding 0), so the train
    step minimises the plain mean loss.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> weighting = jw.uniform_weighting()
    >>> inputs = jw.WeightInputs(
    ...   losses=jnp.array([5.0, 1.0, 2.0, 0.0]),
    ...   mask=jnp.array([True, True, True, False]),
    ...   aux=None,
    ...   batch=None,
    ...   step=jnp.int32(0),
    ...   key=jax.random.key(0),
    ... )
    >>> weights, _ = weighting.update(inputs, weighting.init())
    >>> tuple(round(float(w), 4) for w in weights)
    (0.3333, 0.3333, 0.3333, 0.0)
  """
  from jaxweights.core import normalize

  def uniform_fn(losses, *, mask, axis_name=None):
    del losses
    return normalize.uniform(mask, axis_name=axis_name)

  return stateless(uniform_fn, "uniform")


def check_weights_shape(weights: jax.typing.ArrayLike, losses: jax.Array) -> jax.Array:
  """Checks that a weighting returned one weight per sample.

  Args:
    weights: the weights a weighting's ``update`` returned; should be
      ``[batch]`` like ``losses``.
    losses: ``[batch]`` float per-sample losses.

  Returns:
    ``weights`` as a ``[batch]`` array (``jnp.asarray``, dtype unchanged).

  Raises:
    ValueError: ``weights`` does not have the shape of ``losses``.
  """
  weights = jnp.asarray(weights)
  if weights.shape != losses.shape:
    raise ValueError(
      f"a weighting returned weights of shape {weights.shape} for losses of "
      f"shape {losses.shape}; it must return one weight per sample."
    )
  return weights
