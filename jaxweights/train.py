"""The composition layer: any Weighting + an NNX model + optax -> one compiled step.

This module knows no family's details. It

1. splits an NNX model into a graph definition and pytree state,
2. optionally runs the weighting's ``prepare`` pre-pass,
3. runs the per-sample loss once, hands the detached losses to the weighting,
4. differentiates ``sum_i w_i * loss_i`` (weights under ``stop_gradient``),
5. applies the optax update, skipping it (and saying so in the metrics) when the
   gradient is not finite, so a bad batch never writes NaN into the parameters.

Two data-parallel modes over a ``jax.sharding.Mesh`` give the same numbers:

* ``mode="jit"``: ``jax.jit`` over globally-sharded arrays (batch split along
  the mesh's data axis, state replicated); XLA inserts the collectives.
* ``mode="shard_map"``: ``jax.shard_map`` with per-device code; weight statistics
  use collectives over the data axis. With the default ``check_vma=True`` the
  gradient wrt replicated parameters is already summed over devices, so the step
  adds no psum of its own (a further psum would over-count).
"""

from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxweights import normalize
from jaxweights._reduce import as_mask, check_per_sample, gmax, gmin, gsum
from jaxweights.weighting import (
    GradientContext,
    GradientOutput,
    PrepareContext,
    WeightInputs,
    Weighting,
    check_weights_shape,
    uniform_weighting,
)

PyTree = Any


class LossOutput(NamedTuple):
  """What a per-sample loss function returns.

  Attributes:
    loss: ``[batch]`` per-sample losses (differentiable).
    mask: optional ``[batch]`` booleans; False marks padding samples (e.g. a
      sequence with no active token), which get weight 0.
    aux: optional pytree of per-sample outputs for the weighting (e.g. class
      probabilities); it is passed on under ``stop_gradient``.
  """

  loss: jax.Array
  mask: jax.Array | None = None
  aux: PyTree = None


LossFn = Callable[[Any, PyTree], LossOutput]


class TrainState(NamedTuple):
  """Everything a run needs to continue exactly: a pytree, checkpointed whole.

  Attributes:
    params: the model's ``nnx.Param`` state.
    rest: the model's other variables (e.g. running statistics).
    opt_state: the optax state.
    weighting_state: the weighting's own state.
    step: int32 scalar, the number of updates applied so far.
    key: ``uint32[2]`` raw PRNG key; split once per step.
  """

  params: PyTree
  rest: PyTree
  opt_state: PyTree
  weighting_state: PyTree
  step: jax.Array
  key: jax.Array


def init_train_state(
    model: nnx.Module,
    optimizer: optax.GradientTransformation,
    weighting: Weighting | None = None,
    *,
    seed: int = 0,
) -> tuple[nnx.GraphDef, TrainState]:
  """Splits ``model`` and builds the initial :class:`TrainState`.

  Returns:
    ``(graphdef, state)``; pass ``graphdef`` to :func:`make_train_step`.
  """
  weighting = weighting or uniform_weighting()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = TrainState(
      params=params,
      rest=rest,
      opt_state=optimizer.init(params),
      weighting_state=weighting.init(),
      step=jnp.zeros((), jnp.int32),
      key=jax.random.PRNGKey(seed),
  )
  return graphdef, state


def data_mesh(devices=None, axis_name: str = "data") -> Mesh:
  """A 1-D mesh over ``devices`` (default: all) with one data axis (Auto type)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh(
      (len(devices),),
      (axis_name,),
      axis_types=(jax.sharding.AxisType.Auto,),
      devices=devices,
  )


def shard_batch(batch: PyTree, mesh: Mesh, axis_name: str = "data") -> PyTree:
  """Places every leaf of ``batch`` split along its leading (batch) axis."""
  n = mesh.shape[axis_name]

  def put(x):
    x = jnp.asarray(x) if not isinstance(x, jax.Array) else x
    if x.ndim == 0 or x.shape[0] % n:
      raise ValueError(
          f"a batch leaf of shape {x.shape} cannot be split over {n} devices: "
          f"the batch size must be a multiple of the '{axis_name}' axis size."
      )
    return jax.device_put(x, NamedSharding(mesh, P(axis_name)))

  return jax.tree.map(put, batch)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Places every leaf of ``tree`` replicated over ``mesh``."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    weighting: Weighting | None = None,
    *,
    mesh: Mesh | None = None,
    mode: Literal["jit", "shard_map"] = "jit",
    axis_name: str = "data",
    donate: bool = False,
) -> Callable[[TrainState, PyTree], tuple[TrainState, dict[str, jax.Array]]]:
  """Builds one compiled weighted train step.

  Args:
    graphdef: from :func:`init_train_state`.
    loss_fn: ``loss_fn(model, batch) -> LossOutput`` with ``[batch]`` losses.
    optimizer: any optax transformation.
    weighting: a :class:`~jaxweights.Weighting`; None means uniform (the plain step).
    mesh: a mesh with a data axis; None runs on the default device (``"jit"``).
    mode: ``"jit"`` (sharded global arrays) or ``"shard_map"`` (per-device code).
    axis_name: the mesh's data axis.
    donate: donate the input state's buffers (saves memory; the input state
      must not be used again).

  Returns:
    ``step(state, batch) -> (state, metrics)``. Metrics are float32 scalars:
    ``loss_mean`` (plain mean over valid samples), ``loss_weighted``
    (``sum w * loss``), ``weight_min``/``weight_max`` (over valid samples,
    sum-to-1 scale), ``weight_sum``, ``ess`` (Kish effective sample size),
    ``n_valid``, ``n_nonfinite`` (samples dropped for a NaN/inf loss),
    ``grad_norm`` and ``update_skipped`` (1 when a non-finite gradient was
    discarded and the state kept).
  """
  weighting = weighting or uniform_weighting()
  if mode not in ("jit", "shard_map"):
    raise ValueError(f"mode must be 'jit' or 'shard_map', got {mode!r}.")
  if mode == "shard_map" and mesh is None:
    raise ValueError("mode='shard_map' needs a mesh.")
  if mesh is not None and axis_name not in mesh.axis_names:
    raise ValueError(f"axis {axis_name!r} is not in the mesh axes {mesh.axis_names}.")

  inner = _build_step(
      graphdef,
      loss_fn,
      optimizer,
      weighting,
      axis_name=axis_name if mode == "shard_map" else None,
  )
  donate_argnums = (0,) if donate else ()
  if mode == "shard_map":
    mapped = jax.shard_map(
        inner, mesh=mesh, in_specs=(P(), P(axis_name)), out_specs=(P(), P())
    )
    return jax.jit(mapped, donate_argnums=donate_argnums)
  if mesh is None:
    return jax.jit(inner, donate_argnums=donate_argnums)
  replicated = NamedSharding(mesh, P())
  return jax.jit(
      inner,
      out_shardings=(replicated, replicated),
      donate_argnums=donate_argnums,
  )


def _build_step(graphdef, loss_fn, optimizer, weighting, *, axis_name):
  def step(state: TrainState, batch):
    key, prepare_key, weight_key = jax.random.split(state.key, 3)
    if weighting.prepare is not None:
      model = nnx.merge(graphdef, state.params, state.rest)
      batch = weighting.prepare(
          PrepareContext(
              loss_fn=loss_fn,
              model=model,
              batch=batch,
              state=state.weighting_state,
              step=state.step,
              key=prepare_key,
              axis_name=axis_name,
          )
      )

    def objective(params):
      model = nnx.merge(graphdef, params, state.rest)
      out = loss_fn(model, batch)
      if not isinstance(out, LossOutput):
        raise TypeError(
            f"loss_fn must return jaxweights.LossOutput, got {type(out).__name__}."
        )
      losses = check_per_sample(out.loss, "loss_fn(...).loss")
      given = as_mask(out.mask, losses)
      finite = jnp.isfinite(losses)
      mask = given & finite
      safe = jnp.where(mask, losses, 0.0)
      detached = jax.lax.stop_gradient(safe)
      inputs = WeightInputs(
          losses=detached,
          mask=mask,
          aux=jax.lax.stop_gradient(out.aux),
          batch=batch,
          step=state.step,
          key=weight_key,
          axis_name=axis_name,
      )
      weights, wstate = weighting.update(inputs, state.weighting_state)
      weights = check_weights_shape(weights, losses)
      weights = jax.lax.stop_gradient(jnp.where(mask, weights, 0.0))
      rest = nnx.split(model, nnx.Param, ...)[2]
      objective_value = jnp.sum(weights * safe)
      n_nonfinite = gsum((given & ~finite).astype(jnp.float32), axis_name)
      return objective_value, (detached, mask, weights, wstate, rest, n_nonfinite)

    out = None
    if weighting.gradient is not None:
      out = weighting.gradient(
          GradientContext(
              loss_fn=loss_fn,
              graphdef=graphdef,
              params=state.params,
              rest=state.rest,
              batch=batch,
              state=state.weighting_state,
              step=state.step,
              key=weight_key,
              axis_name=axis_name,
          )
      )
    if out is None:  # no override, or the override declined
      grad_fn = jax.value_and_grad(objective, has_aux=True)
      (local_obj, aux), grads = grad_fn(state.params)
      detached, mask, weights, wstate, rest, n_nonfinite = aux
    else:
      if not isinstance(out, GradientOutput):
        raise TypeError(
            f"a weighting's gradient must return GradientOutput, got {type(out).__name__}."
        )
      detached = jax.lax.stop_gradient(out.losses)
      mask = out.mask
      weights = jax.lax.stop_gradient(
          jnp.where(mask, check_weights_shape(out.weights, detached), 0.0)
      )
      grads, wstate, rest = out.grads, out.state, state.rest
      local_obj = jnp.sum(weights * detached)
      n_nonfinite = jnp.zeros((), jnp.float32)

    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(ok, n, o), new, old
    )
    new_state = TrainState(
        params=keep(params, state.params),
        rest=keep(rest, state.rest),
        opt_state=keep(opt_state, state.opt_state),
        weighting_state=keep(wstate, state.weighting_state),
        step=state.step + 1,
        key=key,
    )
    metrics = _metrics(
        detached, mask, weights, local_obj, n_nonfinite, grad_norm, ok, axis_name
    )
    return new_state, metrics

  return step


def _metrics(losses, mask, weights, local_obj, n_nonfinite, grad_norm, ok, axis_name):
  n_valid = normalize.masked_count(mask, axis_name)
  any_valid = n_valid > 0
  wmax = gmax(jnp.where(mask, weights, -jnp.inf), axis_name)
  wmin = gmin(jnp.where(mask, weights, jnp.inf), axis_name)
  return {
      "loss_mean": gsum(losses, axis_name) / jnp.maximum(n_valid, 1.0),
      "loss_weighted": gsum(local_obj, axis_name),
      "weight_min": jnp.where(any_valid, wmin, 0.0),
      "weight_max": jnp.where(any_valid, wmax, 0.0),
      "weight_sum": gsum(weights, axis_name),
      "ess": normalize.effective_sample_size(weights, axis_name=axis_name),
      "n_valid": n_valid,
      "n_nonfinite": n_nonfinite,
      "grad_norm": grad_norm,
      "update_skipped": 1.0 - ok.astype(jnp.float32),
  }


def make_eval_step(
    graphdef: nnx.GraphDef, loss_fn: LossFn
) -> Callable[[TrainState, PyTree], tuple[jax.Array, jax.Array]]:
  """A jitted ``eval(state, batch) -> (sum of valid losses, number valid)``.

  Sum and count (not a mean) so results over many batches combine exactly.
  """

  @jax.jit
  def evaluate(state: TrainState, batch):
    model = nnx.merge(graphdef, state.params, state.rest)
    out = loss_fn(model, batch)
    losses = check_per_sample(out.loss, "loss_fn(...).loss")
    mask = as_mask(out.mask, losses) & jnp.isfinite(losses)
    return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(mask.astype(jnp.float32))

  return evaluate


def host_metrics(metrics: dict[str, jax.Array]) -> dict[str, float]:
  """Fetches metrics to the host as Python floats (one device sync)."""
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def tree_equal(a: PyTree, b: PyTree) -> bool:
  """Bitwise equality of two pytrees of arrays (same structure)."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)
  )
