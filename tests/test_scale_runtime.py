"""Runtime at scale: asynchronous and non-local checkpoints, restoring onto another
mesh, throughput metrics, process-0 logging."""

from __future__ import annotations

import chex
import jax
import numpy as np
import optax
import pytest
from flax import nnx

import jaxweights as jw
from jaxweights.runtime import aot
from jaxweights.runtime import checkpoint as ckpt_lib
from jaxweights.runtime import loop as loop_lib


def _fsdp_state(mesh):
  graphdef, state = jw.init_train_state(jw.MLP(16, [64], 8, rngs=nnx.Rngs(0)), optax.adam(1e-3))
  shardings = jw.state_shardings(state, mesh)
  return graphdef, jw.place(state, shardings), shardings


def test_save_on_one_mesh_restore_on_another(tmp_path):
  _, state, _ = _fsdp_state(jw.make_mesh(1, 8, 1))
  with jw.Checkpointer(tmp_path / "run") as ck:
    ck.save(0, state)
  # Restore onto a (4, 2) layout: the values come back, laid out as the target asks.
  _, target, shardings = _fsdp_state(jw.make_mesh(4, 2, 1))
  target = jax.tree.map(lambda x: x * 0, target)
  with jw.Checkpointer(tmp_path / "run") as ck:
    restored = ck.restore(target)
  chex.assert_trees_all_equal(jax.device_get(restored), jax.device_get(state))
  for x, s in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)):
    assert x.sharding == s
  assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(restored.params))


def test_async_save_returns_before_the_write_and_restores(tmp_path):
  _, state, _ = _fsdp_state(jw.make_mesh(2, 4, 1))
  ck = jw.Checkpointer(tmp_path / "run", async_save=True, max_to_keep=2)
  for step in (1, 2, 3):
    assert ck.save(step, jax.tree.map(lambda x, s=step: x + 0 * s, state))
  ck.wait()
  assert ck.all_steps() == [2, 3]
  chex.assert_trees_all_equal(jax.device_get(ck.restore(state)), jax.device_get(state))
  ck.close()


def test_urls_pass_through_untouched(monkeypatch, tmp_path):
  # A gs:// directory must reach orbax as the URL, not as <cwd>/gs:/bucket/run, and
  # the local-only lock is not attempted on it.
  seen = {}

  class FakeManager:
    def __init__(self, directory, **kwargs):
      seen["directory"] = str(directory)

    def close(self):
      pass

    def wait_until_finished(self):
      pass

  monkeypatch.setattr(ckpt_lib.ocp, "CheckpointManager", FakeManager)
  monkeypatch.setattr(ckpt_lib, "_check_writable", lambda d: seen.setdefault("probed", d))
  monkeypatch.setattr(ckpt_lib, "_acquire_lock", lambda d: pytest.fail("lock attempted on a URL"))
  ck = jw.Checkpointer("gs://bucket/run")
  assert ck.directory == "gs://bucket/run" == seen["directory"] == seen["probed"]
  ck.close()
  monkeypatch.undo()
  local = jw.Checkpointer(tmp_path / "x" / ".." / "run")
  assert local.directory == str((tmp_path / "run").resolve())
  local.close()


def test_throughput_and_mfu_metrics(tmp_path):
  graphdef, state = jw.init_train_state(jw.MLP(8, [16], 4, rngs=nnx.Rngs(0)), optax.sgd(0.1))

  def loss_fn(model, batch):
    return jw.LossOutput(jw.cross_entropy(model(batch["x"]), batch["y"]))

  step = jw.make_train_step(graphdef, loss_fn, optax.sgd(0.1))
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(32, 8)).astype("float32"), "y": rng.integers(0, 4, 32)}
  compiled = step.lower(state, batch).compile()
  flops = aot.compiled_flops(compiled)
  assert flops and flops > 2 * 32 * (8 * 16 + 16 * 4)  # at least the forward matmuls
  _, history = jw.train_loop(
    step,
    state,
    lambda i: batch,
    6,
    log_every=2,
    samples_per_step=32,
    tokens_per_step=32 * 5,
    flops_per_step=flops,
    peak_flops=1e12,
  )
  rec = history[-1]
  assert rec["samples_per_s"] == pytest.approx(32 * rec["steps_per_s"])
  assert rec["tokens_per_s"] == pytest.approx(160 * rec["steps_per_s"])
  assert rec["mfu"] == pytest.approx(rec["tflops_per_device"] * 1e12 / 1e12)
  assert 0 < rec["mfu"] < 1
  assert loop_lib.peak_flops_per_device() is None  # a CPU has no entry: no MFU by default


def test_only_process_zero_writes_logs(monkeypatch, tmp_path):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  jw.JsonlLogger(tmp_path / "a.jsonl").log({"step": 1})
  assert not (tmp_path / "a.jsonl").exists()
  jw.JsonlLogger(tmp_path / "b.jsonl", all_processes=True).log({"step": 1})
  assert (tmp_path / "b.jsonl").exists()


def test_process_local_batch_loads_only_this_process_rows():
  mesh = jw.make_mesh(2, 4, 1)
  data = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
  indices = jw.data.batch_indices(40, 16, seed=0, step=2)
  asked = []

  def load_rows(idx):
    asked.append(idx)
    return {"x": data[idx], "i": idx}

  batch = jw.data.process_local_batch(load_rows, indices, mesh)
  # One process here: it holds every row, and the batch equals shard_batch's.
  np.testing.assert_array_equal(jw.data.process_rows(mesh, 16), np.arange(16))
  expected = jw.shard_batch({"x": data[indices], "i": indices}, mesh)
  for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
  assert len(asked) == 1 and len(asked[0]) == 16
  with pytest.raises(ValueError, match="cannot be split"):
    jw.data.process_local_batch(load_rows, indices[:6], mesh)
  with pytest.raises(ValueError, match="rows"):
    jw.data.process_local_batch(lambda idx: {"x": data[idx][:-1]}, indices, mesh)
