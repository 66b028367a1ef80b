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

import zlib
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxweights.core import normalize
from jaxweights.core.contract import (
  GradientContext,
  GradientOutput,
  PrepareContext,
  Weighting,
  WeightInputs,
  check_weights_shape,
  uniform_weighting,
)
from jaxweights.core.reductions import as_mask, check_per_sample, gmax, gmin, gsum
from jaxweights.core.sharding import batch_axes, batch_shard_count
from jaxweights.core.sharding import put as _put

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
    model_vars: the model's other variables (e.g. running statistics).
    opt_state: the optax state.
    weighting_state: the weighting's own state.
    step: int32 scalar, the number of updates applied so far.
    key: ``uint32[2]`` raw PRNG key; split once per step.
  """

  params: PyTree
  model_vars: PyTree
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

  Args:
    model: any Flax NNX model; its ``nnx.Param`` variables are trained, every
      other variable (BatchNorm statistics, RNG streams) is carried in
      ``state.model_vars``.
    optimizer: the optax transformation the step will use (its state is
      initialised here).
    weighting: the :class:`~jaxweights.Weighting` the step will use (its state
      is initialised here); None means uniform.
    seed: seed of the state's PRNG key, split once per step.

  Returns:
    ``(graphdef, state)``; pass ``graphdef`` to :func:`make_train_step`.

  Examples:
    >>> import optax
    >>> from flax import nnx
    >>> import jaxweights as jw
    >>> graphdef, state = jw.init_train_state(jw.MLP(4, [8], 2, rngs=nnx.Rngs(0)), optax.sgd(0.1))
    >>> int(state.step), state.weighting_state
    (0, ())
  """
  weighting = weighting or uniform_weighting()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = TrainState(
    params=params,
    model_vars=rest,
    opt_state=optimizer.init(params),
    weighting_state=weighting.init(),
    step=jnp.zeros((), jnp.int32),
    key=jax.random.PRNGKey(seed),
  )
  return graphdef, state


def data_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = "data") -> Mesh:
  """A 1-D mesh with one data axis of ``Auto`` type.

  Args:
    devices: the devices, in order (default: ``jax.devices()``, every device of
      every process).
    axis_name: the axis name.

  Returns:
    A :class:`jax.sharding.Mesh` of shape ``(len(devices),)``.

  Examples:
    >>> import jax
    >>> import jaxweights as jw
    >>> mesh = jw.data_mesh(jax.devices()[:1])
    >>> mesh.axis_names, mesh.size
    (('data',), 1)
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh(
    (len(devices),),
    (axis_name,),
    axis_types=(jax.sharding.AxisType.Auto,),
    devices=devices,
  )


def shard_batch(batch: PyTree, mesh: Mesh, axis_name: str | tuple[str, ...] | None = None) -> PyTree:
  """Places every leaf of the GLOBAL ``batch`` split along its leading axis.

  In a multi-process run every process passes the same global batch (batches
  are pure functions of (seed, step)); each process only transfers the rows of
  its own devices.

  Args:
    batch: a pytree of ``[B, ...]`` arrays (numpy or jax).
    mesh: the mesh; ``B`` must be a multiple of the batch axes' total size.
    axis_name: the mesh axis or axes the batch is split over (default:
      :func:`~jaxweights.core.sharding.batch_axes`: ``("data", "fsdp")`` on a
      :func:`~jaxweights.make_mesh` mesh, the one axis of a data mesh).

  Returns:
    The same pytree of global ``jax.Array`` s sharded ``P(axis_name)``.

  Raises:
    ValueError: a leaf is a scalar or its leading axis is not divisible.
  """
  axis_name = batch_axes(mesh) if axis_name is None else axis_name
  n = batch_shard_count(mesh, axis_name)

  def put(x):
    if x.ndim == 0 or x.shape[0] % n:
      raise ValueError(
        f"a batch leaf of shape {x.shape} cannot be split over {n} devices: "
        f"the batch size must be a multiple of the {axis_name!r} axis size {n}."
      )
    return _put(x, NamedSharding(mesh, P(axis_name)))

  return jax.tree.map(put, batch)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Places every leaf of ``tree`` replicated over ``mesh`` (all processes).

  Args:
    tree: a pytree of arrays, e.g. a :class:`TrainState`.
    mesh: the mesh.

  Returns:
    The same pytree of ``jax.Array`` s with sharding ``P()`` on ``mesh``.
  """
  return jax.tree.map(lambda x: _put(x, NamedSharding(mesh, P())), tree)


_MODEL_STREAM = 0x6D6F64  # fold_in tag: the model's random streams (dropout...)


def merge_model(graphdef: nnx.GraphDef, *states: PyTree) -> nnx.Module:
  """``nnx.merge`` with fresh Variables (``copy=True``).

  Variables created at the current trace level may be written by the forward
  pass (BatchNorm statistics, dropout RNG counters) inside ``jax.grad``/``scan``.
  """
  return nnx.merge(graphdef, *states, copy=True)


def _rest_of(model: nnx.Module) -> PyTree:
  """The model's non-parameter state after a forward pass (what it wrote)."""
  return nnx.split(model, nnx.Param, ...)[2]


def _stream_tags(rest: PyTree) -> list[str]:
  tags = {getattr(v, "tag", None) for _, v in nnx.to_flat_state(rest) if isinstance(v, nnx.RngKey)}
  return sorted(t for t in tags if t is not None)


def reseed_streams(graphdef, params, rest, key: jax.Array, axis_name=None) -> PyTree:
  """Reseeds every ``nnx.Rngs`` stream of the model from ``key`` (``nnx.reseed``).

  Stream ``s`` gets ``fold_in(key, crc32(s))``; stacked streams (``nnx.vmap`` /
  ``nnx.scan`` blocks) are split to their shape. A model with no streams is
  returned unchanged. Under ``shard_map`` the device index is folded in, so
  devices draw independent masks (they then differ from a single-device run;
  ``mode="jit"`` draws the same masks for any number of devices).
  """
  tags = _stream_tags(rest)
  if not tags:
    return rest
  if axis_name is not None:
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
  model = merge_model(graphdef, params, rest)
  keys = {t: jax.random.fold_in(key, zlib.crc32(t.encode())) for t in tags}
  nnx.reseed(model, policy="match_shape", **keys)
  return _rest_of(model)


def eval_view(model: nnx.Module) -> nnx.Module:
  """The model in evaluation mode (``deterministic=True``, ``use_running_average=True``)."""
  return nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)


def make_train_step(
  graphdef: nnx.GraphDef,
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  weighting: Weighting | None = None,
  *,
  mesh: Mesh | None = None,
  mode: Literal["jit", "shard_map"] = "jit",
  axis_name: str | tuple[str, ...] | None = None,
  state_shardings: PyTree | None = None,
  donate: bool = False,
  accumulate: int = 1,
  weights_over: Literal["global", "microbatch"] = "global",
) -> Callable[[TrainState, PyTree], tuple[TrainState, dict[str, jax.Array]]]:
  """Builds one compiled weighted train step.

  Args:
    graphdef: from :func:`init_train_state`.
    loss_fn: ``loss_fn(model, batch) -> LossOutput`` with ``[batch]`` losses.
    optimizer: any optax transformation.
    weighting: a :class:`~jaxweights.Weighting`; None means uniform (the plain step).
    mesh: a mesh with a data axis; None runs on the default device (``"jit"``).
    mode: ``"jit"`` (sharded global arrays) or ``"shard_map"`` (per-device code).
    axis_name: the mesh axis or axes the batch is split along (default:
      ``("data", "fsdp")`` on a :func:`~jaxweights.make_mesh` mesh, the one axis
      of a :func:`data_mesh`).
    state_shardings: with ``mode="jit"``, the train state's shardings
      (:func:`~jaxweights.state_shardings`: FSDP / tensor-parallel parameters
      and optimiser state); the step returns the state with the same layout.
      None keeps the state replicated. ``mode="shard_map"`` keeps the state
      replicated and runs data parallel over the batch axes only.
    donate: donate the input state's buffers (saves memory; the input state
      must not be used again).
    accumulate: split each (per-device) batch into this many microbatches and
      accumulate their gradients, bounding activation memory.
    weights_over: with ``accumulate > 1``: ``"global"`` computes the weights
      over the whole batch first (one extra forward pass over the microbatches;
      the update then equals the single-batch update: loss-based, RENT);
      ``"microbatch"`` weights each microbatch on its own and averages their
      gradients (PRESENCE's microbatch regime; also the only mode for a
      weighting with a ``gradient`` override). ``prepare`` always sees the
      whole batch.

  Returns:
    ``step(state, batch) -> (state, metrics)``. Metrics are float32 scalars:
    ``loss_mean`` (plain mean over valid samples), ``loss_weighted``
    (``sum w * loss``), ``weight_min``/``weight_max`` (over valid samples,
    sum-to-1 scale), ``weight_sum``, ``ess`` (Kish effective sample size),
    ``n_valid``, ``n_nonfinite`` (samples dropped for a NaN/inf loss),
    ``grad_norm`` and ``update_skipped`` (1 when the update was discarded and
    the state kept: a non-finite gradient, no valid sample in the global batch,
    weights that break the contract (negative, non-finite, or summing to more
    than 1),
    or an optimiser that produced a non-finite parameter or state).
  """
  weighting = weighting or uniform_weighting()
  if mode not in ("jit", "shard_map"):
    raise ValueError(f"mode must be 'jit' or 'shard_map', got {mode!r}.")
  if mode == "shard_map" and mesh is None:
    raise ValueError("mode='shard_map' needs a mesh.")
  if accumulate < 1:
    raise ValueError(f"accumulate must be >= 1, got {accumulate}.")
  if weights_over not in ("global", "microbatch"):
    raise ValueError(f"weights_over must be 'global' or 'microbatch', got {weights_over!r}.")
  if mesh is not None:
    axis_name = batch_axes(mesh) if axis_name is None else axis_name
    names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    if not set(names) <= set(mesh.axis_names):
      raise ValueError(f"axis {axis_name!r} is not in the mesh axes {mesh.axis_names}.")
    if mode == "shard_map":
      others = {a: n for a, n in mesh.shape.items() if a not in names and n > 1}
      if others or state_shardings is not None:
        raise ValueError(
          "mode='shard_map' runs data parallel with a replicated state; the mesh axes "
          f"{sorted(others)} (or state_shardings) need mode='jit', where XLA partitions "
          "the sharded parameters."
        )
  elif state_shardings is not None:
    raise ValueError("state_shardings needs a mesh.")
  else:
    axis_name = "data"

  inner = _Step(
    graphdef,
    loss_fn,
    optimizer,
    weighting,
    axis_name=axis_name if mode == "shard_map" else None,
    accumulate=accumulate,
    weights_over=weights_over,
    grad_shardings=None if state_shardings is None else state_shardings.params,
  )
  donate_argnums = (0,) if donate else ()
  if mode == "shard_map":
    mapped = jax.shard_map(inner, mesh=mesh, in_specs=(P(), P(axis_name)), out_specs=(P(), P()))
    return jax.jit(mapped, donate_argnums=donate_argnums)
  if mesh is None:
    return jax.jit(inner, donate_argnums=donate_argnums)
  replicated = NamedSharding(mesh, P())

  def traced(state, batch):
    # Models may read the mesh (constrain_batch) to keep activations batch-split.
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return inner(state, batch)

  return jax.jit(
    traced,
    out_shardings=(replicated if state_shardings is None else state_shardings, replicated),
    donate_argnums=donate_argnums,
  )


def _split(tree, n: int):
  """``[B, ...]`` -> ``[n, B / n, ...]``; microbatch ``a`` holds rows ``i = a (mod n)``.

  Interleaving keeps each microbatch spread over the devices of a batch that is
  sharded in contiguous blocks, so no resharding is needed.
  """

  def f(x):
    if x.shape[0] % n:
      raise ValueError(f"a batch leaf of shape {x.shape} cannot be split into {n} microbatches.")
    return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)

  return jax.tree.map(f, tree)


def _unsplit(tree):
  """Inverse of :func:`_split`: ``[n, B / n, ...]`` -> ``[B, ...]``."""
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), tree)


class _Step:
  """The traced train step, in named stages.

  ``__call__(state, batch)`` reseeds the model's random streams, runs the
  weighting's ``prepare`` pass, computes weights and gradient with one of
  :meth:`one_batch`, :meth:`global_weights_accumulated` or
  :meth:`microbatch_weights_accumulated`, then applies the update unless it must
  be skipped (:meth:`apply`). ``axis_name`` is None under ``jit`` and the data
  axis under ``shard_map``.
  """

  def __init__(
    self, graphdef, loss_fn, optimizer, weighting, *, axis_name, accumulate, weights_over, grad_shardings=None
  ):
    self.graphdef, self.loss_fn, self.optimizer = graphdef, loss_fn, optimizer
    self.grad_shardings = grad_shardings
    self.weighting, self.axis_name = weighting, axis_name
    self.accumulate, self.weights_over = accumulate, weights_over

  # --- the forward pass ------------------------------------------------------------

  def per_sample(self, params, rest, batch):
    """``(safe losses [B], mask [B], non-finite [B], aux, model)`` of one forward pass;
    NaN/inf losses are masked out and replaced by 0."""
    model = merge_model(self.graphdef, params, rest)
    out = self.loss_fn(model, batch)
    if not isinstance(out, LossOutput):
      raise TypeError(f"loss_fn must return jaxweights.LossOutput, got {type(out).__name__}.")
    losses = check_per_sample(out.loss, "loss_fn(...).loss")
    _check_batch_size(losses, batch)
    given = as_mask(out.mask, losses)
    finite = jnp.isfinite(losses)
    mask = given & finite
    return jnp.where(mask, losses, 0.0), mask, given & ~finite, out.aux, model

  def weight_inputs(self, losses, mask, aux, batch, step, key) -> WeightInputs:
    return WeightInputs(
      losses=losses,
      mask=mask,
      aux=jax.lax.stop_gradient(aux),
      batch=batch,
      step=step,
      key=key,
      axis_name=self.axis_name,
    )

  def reseed_micro(self, params, rest, model_key, a):
    """Microbatch ``a`` draws its own masks: the model streams reseeded from (key, a)."""
    return reseed_streams(self.graphdef, params, rest, jax.random.fold_in(model_key, a), self.axis_name)

  # --- weights and gradient ----------------------------------------------------------

  def override(self, params, rest, batch, wstate, step, key):
    """The weighting's own gradient (PRESENCE's book-keeping), or None when it has
    none or declines at trace time."""
    if self.weighting.gradient is None:
      return None
    out = self.weighting.gradient(
      GradientContext(
        loss_fn=self.loss_fn,
        graphdef=self.graphdef,
        params=params,
        model_vars=rest,
        batch=batch,
        state=wstate,
        step=step,
        key=key,
        axis_name=self.axis_name,
      )
    )
    if out is None:
      return None
    if not isinstance(out, GradientOutput):
      raise TypeError(f"a weighting's gradient must return GradientOutput, got {type(out).__name__}.")
    detached = jax.lax.stop_gradient(out.losses)
    weights = jax.lax.stop_gradient(jnp.where(out.mask, check_weights_shape(out.weights, detached), 0.0))
    new_rest = rest if out.model_vars is None else out.model_vars
    return out.grads, detached, out.mask, weights, out.state, new_rest, jnp.zeros((), jnp.float32)

  def one_batch(self, params, rest, batch, wstate, step, weight_key, model_key=None):
    """Weights and gradient of one (micro)batch in one forward and one backward pass:
    ``(grads, losses, mask, weights, weighting state, model vars, n_nonfinite)``."""
    del model_key  # the streams were reseeded by the caller
    out = self.override(params, rest, batch, wstate, step, weight_key)
    if out is not None:
      return out

    def objective(params):
      safe, mask, nonfinite, aux, model = self.per_sample(params, rest, batch)
      detached = jax.lax.stop_gradient(safe)
      inputs = self.weight_inputs(detached, mask, aux, batch, step, weight_key)
      weights, new_wstate = self.weighting.update(inputs, wstate)
      weights = check_weights_shape(weights, safe)
      weights = jax.lax.stop_gradient(jnp.where(mask, weights, 0.0))
      n_nonfinite = gsum(nonfinite.astype(jnp.float32), self.axis_name)
      return jnp.sum(weights * safe), (detached, mask, weights, new_wstate, _rest_of(model), n_nonfinite)

    grads, aux = jax.grad(objective, has_aux=True)(params)
    return (grads, *aux)

  def global_weights_accumulated(self, params, rest, batch, wstate, step, weight_key, model_key):
    """Weights over the whole batch (a forward pass over every microbatch), then the
    gradient accumulated microbatch by microbatch: equals the single-batch update."""
    if self.weighting.gradient is not None:
      raise ValueError(
        "this weighting forms its own gradient; with accumulate > 1 use weights_over='microbatch'."
      )
    micro = _split(batch, self.accumulate)
    index = jnp.arange(self.accumulate)

    def forward(_, xs):
      b, a = xs
      safe, mask, nonfinite, aux, _m = self.per_sample(
        params, self.reseed_micro(params, rest, model_key, a), b
      )
      return None, (safe, mask, nonfinite, aux)

    _, stacked = jax.lax.scan(forward, None, (micro, index))
    safe, mask, nonfinite, aux = _unsplit(stacked)
    weights, new_wstate = self.weighting.update(
      self.weight_inputs(safe, mask, aux, batch, step, weight_key), wstate
    )
    weights = jax.lax.stop_gradient(jnp.where(mask, check_weights_shape(weights, safe), 0.0))

    def backward(carry, xs):
      acc, r = carry
      b, w, a = xs

      def weighted(p):
        out = self.per_sample(p, self.reseed_micro(params, r, model_key, a), b)
        return jnp.sum(w * out[0]), _rest_of(out[4])

      g, r = jax.grad(weighted, has_aux=True)(params)
      return (jax.tree.map(jnp.add, acc, g), r), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    xs = (micro, _split(weights, self.accumulate), index)
    (grads, new_rest), _ = jax.lax.scan(backward, (zeros, rest), xs)
    n_nonfinite = gsum(nonfinite.astype(jnp.float32), self.axis_name)
    return grads, safe, mask, weights, new_wstate, new_rest, n_nonfinite

  def microbatch_weights_accumulated(self, params, rest, batch, wstate, step, weight_key, model_key):
    """Weights within each microbatch; the update averages the microbatch gradients."""
    micro = _split(batch, self.accumulate)
    keys = jax.random.split(weight_key, self.accumulate)

    def body(carry, xs):
      acc, ws, r = carry
      b, k, a = xs
      g, det, m, w, ws, r, nf = self.one_batch(
        params, self.reseed_micro(params, r, model_key, a), b, ws, step, k
      )
      return (jax.tree.map(jnp.add, acc, g), ws, r), (det, m, w, nf)

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, new_wstate, new_rest), (det, m, w, nf) = jax.lax.scan(
      body, (zeros, wstate, rest), (micro, keys, jnp.arange(self.accumulate))
    )
    grads = jax.tree.map(lambda g: g / self.accumulate, grads)
    return grads, _unsplit(det), _unsplit(m), _unsplit(w) / self.accumulate, new_wstate, new_rest, jnp.sum(nf)

  def compute(self):
    if self.accumulate == 1:
      return self.one_batch
    if self.weights_over == "global":
      return self.global_weights_accumulated
    return self.microbatch_weights_accumulated

  # --- the step ------------------------------------------------------------------------

  def prepare(self, state: TrainState, batch, rest, key):
    """The weighting's optional pre-pass, which may add per-sample signals to the batch."""
    if self.weighting.prepare is None:
      return batch
    return self.weighting.prepare(
      PrepareContext(
        loss_fn=self.loss_fn,
        model=merge_model(self.graphdef, state.params, rest),
        batch=batch,
        state=state.weighting_state,
        step=state.step,
        key=key,
        axis_name=self.axis_name,
      )
    )

  def apply(self, state: TrainState, grads, mask, weights, wstate, rest, key):
    """The optimiser update, kept only when it is safe: a finite gradient, at least
    one valid sample in the global batch (an empty batch must not move momentum or
    decay the weights), weights within the contract, and a finite result."""
    if self.grad_shardings is not None:  # FSDP: reduce-scatter into the parameters' layout
      grads = jax.lax.with_sharding_constraint(grads, self.grad_shardings)
    grad_norm = optax.tree.norm(grads)
    has_valid = normalize.masked_count(mask, self.axis_name) > 0
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = (
      jnp.isfinite(grad_norm)
      & has_valid
      & _weights_ok(weights, self.axis_name)
      & _all_finite(params)
      & _all_finite(opt_state)
    )
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    new_state = TrainState(
      params=keep(params, state.params),
      model_vars=keep(rest, state.model_vars),
      opt_state=keep(opt_state, state.opt_state),
      weighting_state=keep(wstate, state.weighting_state),
      step=state.step + 1,
      key=key,
    )
    return new_state, grad_norm, ok

  def __call__(self, state: TrainState, batch):
    key, prepare_key, weight_key = jax.random.split(state.key, 3)
    # The model's random streams (dropout...) are reseeded from the step key, so a
    # resumed run draws the same masks, and every pass of one step (prepare,
    # weighted loss, a gradient override) sees the same masks.
    model_key = jax.random.fold_in(state.key, _MODEL_STREAM)
    rest = reseed_streams(self.graphdef, state.params, state.model_vars, model_key, self.axis_name)
    batch = self.prepare(state, batch, rest, prepare_key)
    grads, losses, mask, weights, wstate, rest, n_nonfinite = self.compute()(
      state.params, rest, batch, state.weighting_state, state.step, weight_key, model_key
    )
    new_state, grad_norm, ok = self.apply(state, grads, mask, weights, wstate, rest, key)
    local_obj = jnp.sum(weights * losses)
    metrics = _metrics(losses, mask, weights, local_obj, n_nonfinite, grad_norm, ok, self.axis_name)
    return new_state, metrics


def _check_batch_size(losses, batch) -> None:
  """The loss must have one entry per sample of the batch (its leaves' leading axis)."""
  sizes = {x.shape[0] for x in jax.tree.leaves(batch) if getattr(x, "ndim", 0) > 0}
  if len(sizes) == 1 and losses.shape[0] not in sizes:
    raise ValueError(
      f"loss_fn returned {losses.shape[0]} per-sample losses for a batch of "
      f"{sizes.pop()} samples; it must return one loss per sample."
    )


def _weights_ok(weights, axis_name) -> jax.Array:
  """The weighting kept its contract: finite, non-negative, summing to at most 1
  (1 over the valid samples; less only when a microbatch holds none). A weighting
  that breaks it (weights summing to 1e6, negative or NaN weights) skips the update."""
  bad = gsum(jnp.sum(~(jnp.isfinite(weights) & (weights >= 0))).astype(jnp.float32), axis_name)
  total = gsum(jnp.where(jnp.isfinite(weights), weights, 0.0), axis_name)
  return (bad == 0) & (total <= 1.0 + 1e-3)


def _all_finite(tree) -> jax.Array:
  """True when every floating leaf of ``tree`` is finite (a scalar; True if none)."""
  flags = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


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
  graphdef: nnx.GraphDef, loss_fn: LossFn, *, train: bool = False
) -> Callable[[TrainState, PyTree], tuple[jax.Array, jax.Array]]:
  """A jitted ``eval(state, batch) -> (sum of valid losses, number valid)``.

  Sum and count (not a mean) so results over many batches combine exactly. The
  model runs in evaluation mode (``Dropout`` off, ``BatchNorm`` on the running
  statistics carried in ``state.model_vars``) through :func:`flax.nnx.view`, unless
  ``train=True``. Nothing the forward pass writes is kept.

  Args:
    graphdef: from :func:`init_train_state`.
    loss_fn: ``loss_fn(model, batch) -> LossOutput`` with ``[batch]`` losses.
    train: run the model in training mode instead.

  Returns:
    ``evaluate(state, batch) -> (loss_sum, n_valid)``, two float32 scalars over
    the valid (unmasked, finite) samples.
  """

  @jax.jit
  def evaluate(state: TrainState, batch):
    model = merge_model(graphdef, state.params, state.model_vars)
    if not train:
      model = eval_view(model)
    out = loss_fn(model, batch)
    losses = check_per_sample(out.loss, "loss_fn(...).loss")
    mask = as_mask(out.mask, losses) & jnp.isfinite(losses)
    return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(mask.astype(jnp.float32))

  return evaluate


def host_metrics(metrics: dict[str, jax.Array]) -> dict[str, float]:
  """Fetches metrics to the host as Python floats (one device sync).

  Args:
    metrics: the step's metrics, a dict of scalar arrays.

  Returns:
    The same keys with Python ``float`` values.
  """
  return {k: float(v) for k, v in jax.device_get(metrics).items()}
