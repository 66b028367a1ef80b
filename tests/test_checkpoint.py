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
  return {
    "x": jnp.asarray(rng.normal(size=(n, 8)), jnp.float32),
    "y": jnp.asarray(rng.integers(0, 4, n), jnp.int32),
  }


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


def test_corrupted_latest_checkpoint_is_skipped_with_a_message(tmp_path):
  step, state0 = setup()
  full, _ = jw.train_loop(step, state0, batch_fn, 8)
  ckpt = jw.Checkpointer(tmp_path / "ckpt", max_to_keep=3)
  jw.train_loop(step, state0, batch_fn, 6, checkpointer=ckpt, checkpoint_every=2)
  ckpt.close()
  # Damage every data file of the newest step (6): truncate them.
  damaged = [p for p in (tmp_path / "ckpt" / "6").rglob("*") if p.is_file() and p.stat().st_size > 0]
  assert damaged
  for p in damaged:
    p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 3)])
  ckpt = jw.Checkpointer(tmp_path / "ckpt", max_to_keep=3)
  with pytest.warns(UserWarning, match="step 6 .* unreadable"):
    resumed, history = jw.train_loop(step, state0, batch_fn, 8, checkpointer=ckpt)
  assert ckpt.restored_step == 4 and history[0]["step"] == 5
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
@pytest.mark.parametrize("async_save", [False, True])
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path, async_save):
  import os
  import random
  import signal
  import subprocess
  import sys
  import time

  worker = [sys.executable, os.path.join(os.path.dirname(__file__), "crash_worker.py")]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JW_ASYNC_SAVE="1" if async_save else "0")
  subprocess.run([*worker, "-", str(tmp_path / "ref.npz")], check=True, env=env, timeout=600)
  kill_after = random.Random(os.getpid()).randrange(4, 35)  # a random step, logged on failure
  ckpt_dir = tmp_path / "ckpt"
  proc = subprocess.Popen([*worker, str(ckpt_dir), str(tmp_path / "out.npz")], env=env)
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    steps = [int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit()] if ckpt_dir.exists() else []
    if steps and max(steps) >= kill_after:
      break
    time.sleep(0.01)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / "out.npz").exists()
  subprocess.run([*worker, str(ckpt_dir), str(tmp_path / "out.npz")], check=True, env=env, timeout=600)
  ref, out = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "out.npz")
  assert ref.files == out.files
  for name in ref.files:
    np.testing.assert_array_equal(ref[name], out[name], err_msg=f"killed after step {kill_after}")
