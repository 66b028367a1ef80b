"""Benchmark cases for the sharded train state (FSDP) on every local device.

Both cases use one mesh, ``(data=1, fsdp=n, tensor=1)`` over the ``n`` local
devices (on a CPU run: ``XLA_FLAGS=--xla_force_host_platform_device_count=8``,
which ``make bench`` sets), the batch split over all of them, and an MLP whose
parameters and Adam moments dominate memory (a small batch through wide layers).

* ``scale/fsdp_memory``: the plain step with the state replicated on every device
  vs the plain step with parameters and optimiser state sharded along ``fsdp``
  (:func:`jaxweights.state_shardings`). The memory ratio is per device; with the
  state dominating it approaches ``1 / n``.
* ``scale/fsdp_linupper``: on the sharded state, the LinUpper-weighted step vs the
  plain step (the weight statistics are global over the sharded batch).

With one device both rows are trivially 1.0 (the model is then not sharded).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxweights
from benchmarks.harness import Case, Setup

FSDP = "plain, state FSDP-sharded"


def _loss(model, batch):
  return jaxweights.LossOutput(jaxweights.cross_entropy(model(batch["x"]), batch["y"]))


def _setup(quick: bool):
  n = jax.device_count()
  width, batch_size = (256, 16) if quick else (2048, 64)
  model = jaxweights.MLP(width, (width, width), width, rngs=nnx.Rngs(0))
  tx = optax.adam(1e-3)
  graphdef, state = jaxweights.init_train_state(model, tx)
  mesh = jaxweights.make_mesh(data=1, fsdp=n, tensor=1)
  shardings = jaxweights.state_shardings(state, mesh)
  rng = np.random.default_rng(0)
  batch = jaxweights.shard_batch(
    {
      "x": jnp.asarray(rng.standard_normal((batch_size * n, width), np.float32)),
      "y": jnp.asarray(rng.integers(0, width, (batch_size * n,), dtype=np.int32)),
    },
    mesh,
  )
  name = f"MLP {width}x3 ({jaxweights.count_params(model) / 1e6:.2f}M params, Adam), mesh 1x{n}x1"
  return graphdef, tx, state, mesh, shardings, batch, name, f"{batch_size * n} samples"


def build_memory(quick: bool) -> Setup:
  """Replicated vs FSDP-sharded state, plain step, same mesh and batch."""
  graphdef, tx, state, mesh, shardings, batch, name, desc = _setup(quick)
  replicated = jaxweights.make_train_step(graphdef, _loss, tx, mesh=mesh)
  fsdp = jaxweights.make_train_step(graphdef, _loss, tx, mesh=mesh, state_shardings=shardings)
  return Setup(
    replicated,
    {FSDP: fsdp},
    jaxweights.replicate(state, mesh),
    batch,
    name,
    desc,
    weighted_states={FSDP: jaxweights.place(state, shardings)},
  )


def build_weighted(quick: bool) -> Setup:
  """The LinUpper step vs the plain step, both on the FSDP-sharded state."""
  graphdef, tx, state, mesh, shardings, batch, name, desc = _setup(quick)
  plain = jaxweights.make_train_step(graphdef, _loss, tx, mesh=mesh, state_shardings=shardings)
  weighting = jaxweights.linupper_weighting(r=1.0)
  weighted = jaxweights.make_train_step(graphdef, _loss, tx, weighting, mesh=mesh, state_shardings=shardings)
  return Setup(plain, {"linupper": weighted}, jaxweights.place(state, shardings), batch, name, desc)


CASES: list[Case] = [
  Case("scale/fsdp_memory", build_memory),
  Case("scale/fsdp_linupper", build_weighted),
]
