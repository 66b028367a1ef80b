"""Ahead-of-time checks of a sharded train step: memory and FLOPs without running it.

A pod configuration is checked on the machine at hand by compiling its train step
for abstract inputs (``jax.ShapeDtypeStruct`` s carrying their shardings) on fake
CPU devices laid out in the pod's mesh shape
(``XLA_FLAGS=--xla_force_host_platform_device_count=64``): nothing is allocated,
and XLA reports the per-device memory of the partitioned program and its FLOPs.
CPU and TPU/GPU compilers fuse differently, so the figure is an estimate of the
accelerator's, not a measurement of it; the parameter and optimiser bytes per
device (the part FSDP divides) are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax
from flax import nnx

from jaxweights.core.contract import Weighting
from jaxweights.core.sharding import DEFAULT_RULES, state_shardings
from jaxweights.core.step import TrainState, init_train_state

PyTree = Any


class CompiledMemory(NamedTuple):
  """Per-device memory of one call of a compiled step, from XLA.

  Attributes:
    argument_bytes: the inputs (this device's shards of the state and batch).
    output_bytes: the outputs.
    temp_bytes: scratch buffers (activations, gathered parameters).
    alias_bytes: outputs that reuse an input buffer (donation).
    peak_bytes: ``argument + output + temp - alias``.
  """

  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  peak_bytes: int


def abstract_train_state(
  model_fn: Callable[[], nnx.Module],
  optimizer: optax.GradientTransformation,
  weighting: Weighting | None = None,
  *,
  mesh: jax.sharding.Mesh,
  rules: Any = DEFAULT_RULES,
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """The train state of ``model_fn()`` as shapes, without allocating it.

  Args:
    model_fn: builds the model (called under ``nnx.eval_shape`` with eager
      sharding off, so annotated parameters need no mesh context).
    optimizer: the optax transformation.
    weighting: the weighting (None: uniform).
    mesh: the mesh whose shardings the abstract state carries.
    rules: logical-axis rules for annotated parameters.

  Returns:
    ``(graphdef, abstract_state, shardings)``: ``abstract_state`` holds
    ``jax.ShapeDtypeStruct`` s with their shardings, ready for
    ``step.lower(abstract_state, abstract_batch)``.
  """
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(model_fn)
    graphdef = nnx.split(model)[0]
    shapes = jax.eval_shape(lambda: init_train_state(model_fn(), optimizer, weighting)[1])
  shardings = state_shardings(shapes, mesh, rules)
  abstract = jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
  )
  return graphdef, abstract, shardings


def compiled_memory(compiled: jax.stages.Compiled) -> CompiledMemory:
  """Per-device memory of a compiled executable (``compiled.memory_analysis()``).

  Args:
    compiled: ``jax.jit(f).lower(...).compile()``.

  Returns:
    A :class:`CompiledMemory`.

  Raises:
    RuntimeError: the backend reports no memory analysis.
  """
  m = compiled.memory_analysis()
  if m is None:
    raise RuntimeError("this backend reports no memory analysis.")
  arg, out = int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
  temp, alias = int(m.temp_size_in_bytes), int(m.alias_size_in_bytes)
  return CompiledMemory(arg, out, temp, alias, arg + out + temp - alias)


def compiled_flops(compiled: jax.stages.Compiled) -> float | None:
  """FLOPs of one call of a compiled executable, from XLA's cost analysis.

  Under SPMD partitioning the figure is per device (one partition's program).

  Args:
    compiled: ``jax.jit(f).lower(...).compile()``.

  Returns:
    The ``"flops"`` entry, or None when the backend reports none.
  """
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])
