"""Sharded train state: FSDP and tensor axes give the single-device result.

Every family's step runs 3 steps on one device and on 8 fake devices laid out as
``(data, fsdp, tensor)`` meshes (8,1,1), (4,2,1), (2,4,1) and (2,2,2), with the
parameters and optimiser state sharded by :func:`jaxweights.state_shardings`;
the parameters must agree to 1e-5. The fast suite runs the (2,2,2) mesh for
every family and (2,4,1) for the loss-based step; the slow suite runs the whole
matrix.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import jaxweights as jw
from jaxweights.families.q_probe import probe as qp

MESHES = [(8, 1, 1), (4, 2, 1), (2, 4, 1), (2, 2, 2)]
RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 16)).astype("float32")
Y = RNG.integers(0, 8, 32).astype("int32")


def _cls_loss(model, batch):
  return jw.LossOutput(jw.cross_entropy(model(batch["x"]), batch["y"]))


def _mlp():
  return jw.MLP(16, [32], 8, rngs=nnx.Rngs(0))


def _tiw():
  rng = np.random.default_rng(1)
  x_ref = rng.normal(loc=1.0, size=(64, 4)).astype("float32")
  x_bias = rng.normal(loc=-1.0, size=(256, 4)).astype("float32")
  disc = jw.TimeDiscriminator(4, hidden=16, depth=1, rngs=nnx.Rngs(2))
  ratio, _ = jw.train_discriminator(disc, x_ref, x_bias, num_steps=2, batch_size=32)
  diffusion = jw.diffusion.VPDiffusion()
  net = jw.diffusion.ScoreMLP(4, hidden=32, depth=2, rngs=nnx.Rngs(3))
  return net, jw.diffusion.dsm_loss_fn(diffusion), jw.tiw_dsm_weighting(ratio, diffusion), {"x": x_bias[:32]}


def _qprobe():
  rng = np.random.default_rng(4)
  phi = rng.normal(size=(8, 4, 16)).astype("float32")  # 8 groups of k = 4
  r = (phi[..., 0] > 0).astype("float32")

  def loss(model, batch):
    return jw.LossOutput(qp.pg_loss(model(batch["x"]), batch["r"]))

  return jw.Probe(16, rngs=nnx.Rngs(5)), loss, None, {"x": phi, "r": r}


T = jw.symmetric_transition(8, 0.2)
FAMILIES = {
  "linupper": lambda: (_mlp(), _cls_loss, jw.linupper_weighting(r=1.0), {"x": X, "y": Y}),
  "linupper_accumulate": lambda: (_mlp(), _cls_loss, jw.linupper_weighting(r=1.0), {"x": X, "y": Y}),
  "presence": lambda: (_mlp(), _cls_loss, jw.presence_weighting(tau=-1.0), {"x": X, "y": Y}),
  "tiw_dsm": _tiw,
  "dws": lambda: (_mlp(), jw.classification_loss(), jw.dws_weighting(T, alpha=10.0), {"x": X, "y": Y}),
  "rent": lambda: (_mlp(), jw.classification_loss(), jw.rent_weighting(T), {"x": X, "y": Y}),
  "qprobe_pg": _qprobe,
}


def _run(family: str, mesh_shape: tuple[int, int, int] | None, steps: int = 3):
  model, loss_fn, weighting, batch = FAMILIES[family]()
  # Adam's state is sharded like the parameters; eps = 1e-3 keeps it from
  # amplifying the float noise of exactly-zero gradients (the probe's bias under
  # L_PG, which is invariant to a shift of a group's Q) into visible updates.
  tx = optax.adam(1e-2, eps=1e-3)
  graphdef, state = jw.init_train_state(model, tx, weighting, seed=1)
  accumulate = 2 if family.endswith("_accumulate") else 1
  if mesh_shape is None:
    mesh = jw.data_mesh(jax.devices()[:1])
    state, shardings = jw.replicate(state, mesh), None
  else:
    mesh = jw.make_mesh(*mesh_shape)
    shardings = jw.state_shardings(state, mesh)
    state = jw.place(state, shardings)
  step = jw.make_train_step(
    graphdef, loss_fn, tx, weighting, mesh=mesh, state_shardings=shardings, accumulate=accumulate
  )
  placed = jw.shard_batch(batch, mesh)
  for _ in range(steps):
    state, metrics = step(state, placed)
  assert float(metrics["update_skipped"]) == 0.0
  return state


def _check(family, shape):
  ref = _run(family, None)
  got = _run(family, shape)
  for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(got.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=f"{family} {shape}")
  return got


FAST = {(f, (2, 2, 2)) for f in FAMILIES} | {("linupper", (2, 4, 1))}
CASES = [
  pytest.param(f, s, marks=() if (f, s) in FAST else pytest.mark.slow, id=f"{f}-{'x'.join(map(str, s))}")
  for f in FAMILIES
  for s in MESHES
]


@pytest.mark.parametrize("family, shape", CASES)
def test_one_device_equals_sharded_state(family, shape):
  state = _check(family, shape)
  # The state stays laid out as it was placed: FSDP-sharded where the axis is > 1.
  if shape[1] > 1:
    specs = {x.sharding.spec for x in jax.tree.leaves(state.params)}
    assert any("fsdp" in str(s) for s in specs), specs


def test_default_rule_and_annotations():
  mesh = jw.make_mesh(2, 4, 1)
  with nnx.use_eager_sharding(False):
    annotated = nnx.Linear(
      8,
      12,
      rngs=nnx.Rngs(0),
      kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp")),
    )
  _, params, _ = nnx.split(annotated, nnx.Param, ...)
  sh = jw.tree_shardings(params, jw.make_mesh(2, 2, 2))
  assert sh["kernel"].get_value().spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  # Unannotated: the largest dimension divisible by fsdp = 4 (12 wins over 8).
  _, params, _ = nnx.split(nnx.Linear(8, 12, rngs=nnx.Rngs(0)), nnx.Param, ...)
  sh = jw.tree_shardings(params, mesh)
  assert sh["kernel"].get_value().spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert sh["bias"].get_value().spec == jax.sharding.PartitionSpec("fsdp")
  # A dimension the axis does not divide stays replicated.
  _, params, _ = nnx.split(nnx.Linear(3, 5, rngs=nnx.Rngs(0)), nnx.Param, ...)
  assert jw.tree_shardings(params, mesh)["kernel"].get_value().spec == jax.sharding.PartitionSpec()


def test_bad_meshes_and_annotations_are_refused():
  with pytest.raises(ValueError, match="devices"):
    jw.make_mesh(3, 2, 1)
  with pytest.raises(ValueError, match="fsdp"):
    jw.make_mesh(-1, 0, 1)
  with nnx.use_eager_sharding(False):
    odd = nnx.Linear(
      8,
      5,
      rngs=nnx.Rngs(0),
      kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "mlp")),
    )
  _, params, _ = nnx.split(odd, nnx.Param, ...)
  with pytest.raises(ValueError, match="not divisible"):
    jw.tree_shardings(params, jw.make_mesh(2, 2, 2))
  model, loss_fn, weighting, _ = FAMILIES["linupper"]()
  graphdef, state = jw.init_train_state(model, optax.sgd(0.1), weighting)
  mesh = jw.make_mesh(2, 2, 2)
  with pytest.raises(ValueError, match="shard_map"):
    jw.make_train_step(graphdef, loss_fn, optax.sgd(0.1), weighting, mesh=mesh, mode="shard_map")
  with pytest.raises(ValueError, match="needs a mesh"):
    jw.make_train_step(
      graphdef, loss_fn, optax.sgd(0.1), weighting, state_shardings=jw.state_shardings(state, mesh)
    )


def test_fsdp_state_takes_an_eighth_of_the_memory():
  _, state = jw.init_train_state(jw.MLP(16, [64, 64], 8, rngs=nnx.Rngs(0)), optax.adam(1e-3))
  replicated = jw.bytes_per_device(jw.replicate(state, jw.data_mesh()))
  mesh = jw.make_mesh(1, 8, 1)
  sharded = jw.bytes_per_device(jw.place(state, jw.state_shardings(state, mesh)))
  # Every parameter dimension divides by 8; only the step, the key and adam's count
  # stay replicated.
  small = 4 + 8 + 4
  assert sharded - small == (replicated - small) // 8, (sharded, replicated)


def test_pod_step_memory_by_ahead_of_time_compilation():
  # The pod configuration's check at a reduced size: the LinUpper step of a scanned
  # bf16 Llama compiled for abstract inputs on an FSDP mesh of the 8 fake devices.
  import dataclasses

  from benchmarks import pod_memory

  config = dataclasses.replace(
    pod_memory.POD_LLAMA, vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_len=32
  )
  out = pod_memory.measure(config, (1, 8, 1), per_device_batch=2, seq_len=32)
  assert out["devices"] == 8 and out["global_batch"] == 16
  # Parameters and Adam moments: every large tensor split 8 ways (the step, key,
  # counts and the few odd-sized leaves stay whole).
  assert out["state_bytes_per_device"] < out["state_bytes_replicated"] / 7
  mem = out["compiled"]
  assert mem["argument_bytes"] >= out["state_bytes_per_device"]
  assert mem["alias_bytes"] > 0  # donated state: the update is in place
  assert mem["peak_bytes"] > mem["argument_bytes"]
  assert out["flops_per_device"] and out["flops_per_device"] > 0


def test_batch_shard_count():
  from jaxweights.core.sharding import batch_shard_count

  assert batch_shard_count(jw.make_mesh(2, 2, 2)) == 4  # data x fsdp; tensor holds the batch whole
  assert batch_shard_count(jw.make_mesh(1, 8, 1)) == 8
  assert batch_shard_count(jw.data_mesh()) == 8
  assert batch_shard_count(jw.make_mesh(2, 2, 2), "data") == 2


def test_constrain_batch_splits_activations_only_under_a_mesh():
  import jax.numpy as jnp

  from jaxweights.core.sharding import constrain_batch

  x = jnp.ones((8, 3))
  assert constrain_batch(x) is x  # no mesh in context: unchanged
  mesh = jw.make_mesh(2, 2, 2)

  def f(x):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return constrain_batch(x * 2)

  out = jax.jit(f, out_shardings=None)(
    jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  )
  assert out.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  np.testing.assert_array_equal(np.asarray(out), 2 * np.ones((8, 3)))
  odd = jax.jit(f)(jnp.ones((6, 3)))  # 6 rows do not split 4 ways: left alone
  assert odd.shape == (6, 3)
