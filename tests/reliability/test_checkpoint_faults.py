"""Checkpoint faults: damaged steps, bad options, locked, read-only and foreign directories.

Each case states what happened before the fix (a hang, a lost checkpoint, a silent
cast) and what must happen now.
"""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxweights as jw
from jaxweights.runtime.checkpoint import CheckpointLockedError, CheckpointMismatchError


def batch_fn(step, n=8):
  rng = np.random.default_rng((5, step))
  return {
    "x": jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
    "y": jnp.asarray(rng.integers(0, 3, n), jnp.int32),
  }


def loss_fn(model, batch):
  return jw.LossOutput(jw.cross_entropy(model(batch["x"]), batch["y"]))


def setup(width=8, dtype=jnp.float32):
  tx = optax.adamw(1e-2)
  model = jw.MLP(4, [width], 3, rngs=nnx.Rngs(0))
  if dtype != jnp.float32:
    model = jax.tree.map(lambda x: x.astype(dtype), model)
  graphdef, state = jw.init_train_state(model, tx, seed=1)
  return jw.make_train_step(graphdef, loss_fn, tx), state


def equal(a, b):
  return all(
    np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def damage(step_dir, kind):
  files = sorted(p for p in step_dir.rglob("*") if p.is_file())
  if kind == "empty":
    shutil.rmtree(step_dir)
    step_dir.mkdir()
  elif kind == "delete_files":
    for p in files:
      p.unlink()
  elif kind == "truncate":
    for p in files:
      if p.stat().st_size > 1:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
  elif kind == "flip_bytes":
    for p in files:
      data = bytearray(p.read_bytes())
      for i in range(0, len(data), max(1, len(data) // 7)):
        data[i] ^= 0xFF
      p.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["empty", "delete_files", "truncate", "flip_bytes"])
def test_damaged_newest_step_never_poisons_older_ones_and_the_final_state_is_saved(tmp_path, kind):
  step, state0 = setup()
  full, _ = jw.train_loop(step, state0, batch_fn, 10)
  with jw.Checkpointer(tmp_path, max_to_keep=5) as ck:
    jw.train_loop(step, state0, batch_fn, 8, checkpointer=ck, checkpoint_every=2)
  damage(tmp_path / "8", kind)
  with jw.Checkpointer(tmp_path, max_to_keep=5) as ck:
    with pytest.warns(UserWarning, match="step 8 .* unreadable"):
      resumed, _ = jw.train_loop(step, state0, batch_fn, 10, checkpointer=ck)
    assert ck.restored_step == 6
    assert ck.latest_step() == 10  # the final state was saved despite the broken step 8
  assert equal(resumed, full)
  assert (tmp_path / ".unreadable").exists() and not (tmp_path / "8").exists()
  with jw.Checkpointer(tmp_path) as ck:  # and a later run gets the final state
    assert equal(ck.restore(state0), full) and ck.restored_step == 10


def test_bad_options_are_refused_before_training(tmp_path):
  for kwargs in (
    {"max_to_keep": 0},
    {"max_to_keep": -1},
    {"save_interval_steps": 0},
    {"max_to_keep": 1.5},
    {"save_interval_steps": True},
  ):
    with pytest.raises(ValueError, match="must be an integer >= 1"):
      jw.Checkpointer(tmp_path / "x", **kwargs)


def test_a_run_past_its_num_steps_is_refused_and_the_checkpoint_kept(tmp_path):
  step, state0 = setup()
  with jw.Checkpointer(tmp_path) as ck:
    jw.train_loop(step, state0, batch_fn, 4, checkpointer=ck)
  with jw.Checkpointer(tmp_path) as ck:
    with pytest.raises(ValueError, match="already at step 4"):
      jw.train_loop(step, state0, batch_fn, 1, checkpointer=ck)
    assert ck.all_steps() == [4]


def test_unwritable_directory_is_refused_at_construction(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(PermissionError, match="not writable"):
    jw.Checkpointer(blocker / "ckpt")
  if os.geteuid() != 0:  # root writes through permission bits: only checkable as a user
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(PermissionError, match="not writable"):
      jw.Checkpointer(ro)


def test_two_runs_on_one_directory_are_refused_clearly(tmp_path):
  first = jw.Checkpointer(tmp_path)
  with pytest.raises(CheckpointLockedError, match="in use by another run"):
    jw.Checkpointer(tmp_path)
  first.close()
  jw.Checkpointer(tmp_path).close()  # free again once the first run closed


def test_restore_into_another_model_or_dtype_is_refused_not_cast(tmp_path):
  step, state = setup()
  with jw.Checkpointer(tmp_path) as ck:
    ck.save(1, state)
  _, wider = setup(width=16)
  _, bf16 = setup(dtype=jnp.bfloat16)
  with jw.Checkpointer(tmp_path) as ck:
    with pytest.raises(CheckpointMismatchError, match=r"shape|another model"):
      ck.restore(wider)
    with pytest.raises(CheckpointMismatchError, match="bfloat16"):
      ck.restore(bf16)
    with pytest.raises(CheckpointMismatchError):
      ck.restore(bf16, step=1)
    assert equal(ck.restore(state), state)  # nothing was moved aside


def test_a_directory_of_another_config_is_refused(tmp_path):
  jw.Checkpointer(tmp_path, fingerprint={"lr": 1e-3}).close()
  jw.Checkpointer(tmp_path, fingerprint={"lr": 1e-3}).close()  # same config: fine
  with pytest.raises(ValueError, match="another configuration"):
    jw.Checkpointer(tmp_path, fingerprint={"lr": 3e-4})
