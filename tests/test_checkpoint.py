"""Checkpoint then resume equals the uninterrupted run, bit for bit (CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxweights as jw


def batch_fn(step, n=16):
  rng = np.random.default_rng((7, step))
  return {"x": jnp.asarray(rng.normal(size=(n, 8)), jnp.float32),
          "y": jnp.asarray(rng.integers(0, 4, n), jnp.int32)}


def loss_fn(model, batch):
  return jw.LossOutput(jw.cross_entropy(model(batch["x"]), batch["y"]))



def stateful_weighting():
  def update(inputs, state):
    noise = jax.random.uniform(inputs.key, inputs.losses.shape)
    w = jw.normalize.softmax(inputs.losses + noise + state, inputs.mask)
    return w, state + 0.5
  return jw.Weighting(init=lambda: jnp.zeros((), jnp.float32), update=update)


def setup():
  tx = optax.adamw(1e-2)
  weighting = stateful_weighting()
  graphdef, state = jw.init_train_state(jw.MLP(8, [16], 4, rngs=nnx.Rngs(0)), tx, weighting, seed=3)
  return jw.make_train_step(graphdef, loss_fn, tx, weighting), state


@pytest.mark.parametrize("sharded", [False, True])
def test_resume_is_bit_identical(tmp_path, sharded):
  step, state0 = setup()
  if sharded:
    mesh = jw.data_mesh()
    state0 = jw.replicate(state0, mesh)
    bf = lambda s: jw.shard_batch(batch_fn(s), mesh)
  else:
    bf = batch_fn
  full, _ = jw.train_loop(step, state0, bf, 10)

  ckpt = jw.Checkpointer(tmp_path / "ckpt", max_to_keep=2)
  jw.train_loop(step, state0, bf, 6, checkpointer=ckpt, checkpoint_every=3)
  assert ckpt.all_steps() == [3, 6]
  ckpt.close()
  # A new process would start from a fresh state and the checkpoint directory.
  ckpt = jw.Checkpointer(tmp_path / "ckpt", max_to_keep=2)
  resumed, history = jw.train_loop(step, state0, bf, 10, checkpointer=ckpt)
  assert history[0]["step"] == 7
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(resumed.step) == 10 and float(resumed.weighting_state) == 5.0
  if sharded:
    leaf = jax.tree.leaves(resumed.params)[0]
    assert len(leaf.sharding.device_set) == 8


def test_restore_without_checkpoint_raises(tmp_path):
  _, state = setup()
  with pytest.raises(FileNotFoundError):
    jw.Checkpointer(tmp_path / "empty").restore(state)
