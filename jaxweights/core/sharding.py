"""Meshes and train-state shardings: data parallelism, FSDP and tensor parallelism.

JAX's own sharding is the engine: a :class:`jax.sharding.Mesh` with up to three
axes, ``("data", "fsdp", "tensor")``, and a :class:`~jax.sharding.NamedSharding`
per leaf of the train state. The compiled step (``mode="jit"``) is written for
global arrays, so XLA's partitioner inserts the collectives and every weight
statistic stays global over every axis the batch is split on.

* The batch is split along ``("data", "fsdp")`` (:data:`BATCH_AXES`): both are
  data-parallel axes; ``fsdp`` additionally shards parameters and optimiser state.
* Parameters take their layout from Flax's partitioning metadata
  (``nnx.with_partitioning(init, ("embed", "mlp"))``), logical names resolved by
  ``rules`` (:data:`DEFAULT_RULES` maps ``embed`` to ``fsdp`` and the ``mlp``,
  ``heads``, ``kv`` and ``vocab`` dimensions to ``tensor``). A parameter without
  metadata gets the default rule: its largest dimension divisible by the ``fsdp``
  axis is sharded along it, the rest replicated.
* Optimiser state follows the parameters it mirrors (``optax.tree_map_params``);
  everything else (model variables such as BatchNorm statistics, the weighting
  state, the step and the key) is replicated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any

#: The mesh axes, outermost first.
MESH_AXES = ("data", "fsdp", "tensor")
#: The mesh axes the batch is split along.
BATCH_AXES = ("data", "fsdp")
#: Logical-axis rules for ``nnx.with_partitioning`` names (first match wins).
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
  ("batch", BATCH_AXES),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv", "tensor"),
  ("vocab", "tensor"),
  ("layers", None),
)


def make_mesh(
  data: int = -1, fsdp: int = 1, tensor: int = 1, *, devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """A ``("data", "fsdp", "tensor")`` mesh with ``Auto`` axes.

  Args:
    data: size of the pure data-parallel axis; ``-1`` takes every device left.
    fsdp: size of the axis that shards parameters and optimiser state (and,
      with ``data``, the batch).
    tensor: size of the tensor-parallel axis (used by parameters annotated with
      logical names such as ``"mlp"`` or ``"heads"``).
    devices: the devices (default: ``jax.devices()``, every process's).

  Returns:
    A :class:`jax.sharding.Mesh` of shape ``(data, fsdp, tensor)``.

  Raises:
    ValueError: the sizes do not multiply to the number of devices.

  Examples:
    >>> import jax
    >>> import jaxweights as jw
    >>> mesh = jw.make_mesh(data=1, devices=jax.devices()[:1])
    >>> dict(mesh.shape)
    {'data': 1, 'fsdp': 1, 'tensor': 1}
  """
  devices = list(jax.devices() if devices is None else devices)
  for name, size in (("fsdp", fsdp), ("tensor", tensor)):
    if int(size) != size or size < 1:
      raise ValueError(f"{name} must be an int >= 1, got {size}.")
  if data == -1:
    if len(devices) % (fsdp * tensor):
      raise ValueError(f"{len(devices)} devices cannot be split into fsdp={fsdp} x tensor={tensor}.")
    data = len(devices) // (fsdp * tensor)
  if data * fsdp * tensor != len(devices):
    raise ValueError(f"data={data} x fsdp={fsdp} x tensor={tensor} != {len(devices)} devices.")
  return jax.make_mesh(
    (data, fsdp, tensor),
    MESH_AXES,
    axis_types=(jax.sharding.AxisType.Auto,) * 3,
    devices=devices,
  )


def batch_axes(mesh: Mesh) -> tuple[str, ...] | str:
  """The mesh axes a batch is split along: ``("data", "fsdp")`` on a
  :func:`make_mesh` mesh, the single axis of a 1-D data mesh.

  Args:
    mesh: the mesh.

  Returns:
    A tuple of axis names, or one name for a 1-D mesh.
  """
  if len(mesh.axis_names) == 1:
    return mesh.axis_names[0]
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_shard_count(mesh: Mesh, axis_name: str | tuple[str, ...] | None = None) -> int:
  """How many shards a batch is split into: the product of the batch axes' sizes.

  Args:
    mesh: the mesh.
    axis_name: the batch axis or axes (default: :func:`batch_axes`).

  Returns:
    The number of shards; a batch size must be a multiple of it.
  """
  axis_name = batch_axes(mesh) if axis_name is None else axis_name
  names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
  return math.prod(mesh.shape[a] for a in names)


def constrain_batch(x: jax.Array) -> jax.Array:
  """Keeps ``x [batch, ...]`` split along the batch axes of the mesh being traced.

  Models call it on their activations (the residual stream) so that, with
  parameters sharded along ``fsdp``, XLA gathers the parameters rather than the
  batch. Outside a mesh context, or when the batch does not divide, it returns
  ``x`` unchanged. :func:`~jaxweights.make_train_step` traces under its mesh.

  Args:
    x: an activation with the batch as its leading axis.

  Returns:
    ``x``, with a sharding constraint when a mesh is in context.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or getattr(x, "ndim", 0) == 0:
    return x
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
  if not axes or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
    return x
  return jax.lax.with_sharding_constraint(x, P(axes))


def _default_spec(shape: tuple[int, ...], mesh: Mesh) -> P:
  """The largest dimension divisible by the ``fsdp`` axis is sharded along it."""
  n = mesh.shape.get("fsdp", 1)
  if n == 1 or not shape:
    return P()
  best = max((i for i, d in enumerate(shape) if d % n == 0 and d >= n), key=lambda i: shape[i], default=None)
  if best is None:
    return P()
  return P(*(("fsdp" if i == best else None) for i in range(len(shape))))


def _check_spec(spec: P, shape: tuple[int, ...], mesh: Mesh, where: str) -> P:
  for dim, axes in zip(shape, spec):
    if axes is None:
      continue
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    missing = [a for a in names if a not in mesh.axis_names]
    if missing:
      raise ValueError(
        f"{where}: partition spec {spec} names axes {missing} not in the mesh {mesh.axis_names}."
      )
    size = math.prod(mesh.shape[a] for a in names)
    if dim % size:
      raise ValueError(
        f"{where}: dimension {dim} of shape {shape} is not divisible by {names} (size {size})."
      )
  return spec


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def tree_shardings(
  tree: PyTree, mesh: Mesh, rules: Sequence[tuple[str, Any]] | None = DEFAULT_RULES
) -> PyTree:
  """A :class:`~jax.sharding.NamedSharding` for every array of ``tree``.

  A Variable with ``nnx.with_partitioning`` metadata gets that layout (logical
  names resolved by ``rules``); any other array gets the default rule (its
  largest dimension divisible by the ``fsdp`` axis sharded along it). optax
  states built from NNX parameters hold the same Variables, so the moments of
  a parameter get the parameter's layout.

  Args:
    tree: parameters (``TrainState.params``) or an optimiser state built from them.
    mesh: the mesh.
    rules: logical-axis rules (None: annotations name mesh axes directly).

  Returns:
    A pytree of shardings with the structure of ``tree``.

  Raises:
    ValueError: an annotation names a mesh axis that does not exist or does not
      divide its dimension.
  """

  def one(path, x):
    if _is_var(x):
      shape = tuple(np.shape(x.get_value()))
      names = x.get_metadata().get("out_sharding")
      if names:
        if rules:
          with nnx.logical_axis_rules(rules):
            spec = nnx.spmd.get_var_pspec(x)
        else:
          spec = P(*names)
        spec = _check_spec(spec, shape, mesh, _path_str(path))
      else:
        spec = _default_spec(shape, mesh)
      return x.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, _default_spec(tuple(np.shape(x)), mesh))

  return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_var)


def state_shardings(
  state: PyTree, mesh: Mesh, rules: Sequence[tuple[str, Any]] | None = DEFAULT_RULES
) -> PyTree:
  """Shardings of a whole :class:`~jaxweights.TrainState`.

  Parameters and optimiser state are laid out by :func:`tree_shardings`; the
  model's other variables, the weighting state, the step and the key are
  replicated.

  Args:
    state: the train state (arrays or ``jax.ShapeDtypeStruct`` s).
    mesh: the mesh.
    rules: logical-axis rules for annotated parameters.

  Returns:
    A train state of :class:`~jax.sharding.NamedSharding` s, for
    :func:`jax.device_put`, ``make_train_step(state_shardings=...)`` and
    checkpoint restores.
  """
  replicated = NamedSharding(mesh, P())
  rep = lambda t: jax.tree.map(lambda _: replicated, t)
  return state._replace(
    params=tree_shardings(state.params, mesh, rules),
    opt_state=tree_shardings(state.opt_state, mesh, rules),
    model_vars=rep(state.model_vars),
    weighting_state=rep(state.weighting_state),
    step=replicated,
    key=replicated,
  )


def place(tree: PyTree, shardings: PyTree) -> PyTree:
  """Puts every array of ``tree`` on its sharding; works with several processes
  (each process transfers only its own devices' shards of a value every
  process holds).

  Args:
    tree: a pytree of arrays (numpy or jax), e.g. a train state.
    shardings: a matching pytree of shardings (:func:`state_shardings`).

  Returns:
    The pytree of placed ``jax.Array`` s.
  """

  return jax.tree.map(put, tree, shardings)


def put(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
  """One array (numpy or jax) on ``sharding``; with several processes each
  transfers only its own devices' shards of a value every process holds."""
  if jax.process_count() == 1:
    return jax.device_put(x if isinstance(x, jax.Array) else np.asarray(x), sharding)
  host = np.asarray(jax.device_get(x))
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def bytes_per_device(tree: PyTree) -> int:
  """The largest number of bytes of ``tree`` held by one device.

  Args:
    tree: a pytree of placed ``jax.Array`` s.

  Returns:
    Bytes on the most loaded device.
  """
  per: dict = {}
  for x in jax.tree.leaves(tree):
    for shard in x.addressable_shards:
      per[shard.device] = per.get(shard.device, 0) + shard.data.nbytes
  return max(per.values(), default=0)
