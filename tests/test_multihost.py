"""Multi-process runs: 2 processes x 4 CPU devices on loopback == 1 process x 8 devices."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("loss_mean", "loss_weighted", "weight_min", "weight_max", "ess", "heldout_loss")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(out, devices, extra=()):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "experiments.loss_lm", "--config", "smoke", "--out", str(out), *extra]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def records(run_dir):
  out = {}
  for path in sorted((run_dir / "runs").glob("*.jsonl")):
    out[path.name] = [json.loads(line) for line in path.read_text().splitlines()]
  return out


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  single = launch(tmp_path / "one", 8)
  port = free_port()
  procs = [
    launch(
      tmp_path / "two",
      4,
      ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(p)],
    )
    for p in range(2)
  ]
  for p in [single, *procs]:
    log, _ = p.communicate(timeout=900)
    assert p.returncode == 0, log[-3000:]
  one, two = records(tmp_path / "one" / "loss_lm"), records(tmp_path / "two" / "loss_lm")
  from experiments.loss_lm import configs

  config = configs.get_config("smoke")  # every method and its bf16 rerun, every seed
  runs = (len(config.methods) + len(config.bf16_methods)) * len(config.seeds)
  assert one.keys() == two.keys() and len(one) == runs
  compared = 0
  for name in one:
    # float32 runs agree to 1e-5. In the bf16-compute reruns the processes' float32
    # gradient all-reduce (gloo vs in-process) rounds differently in the last bits,
    # which can flip a bf16 rounding of an activation (bf16 resolution 2^-8): measured
    # 6e-5 relative in the loss after 10 steps, so those are held to 2e-3.
    rtol = 2e-3 if "@bf16" in name else 1e-5
    for a, b in zip(one[name], two[name], strict=True):
      for key in KEYS:
        if key in a:
          np.testing.assert_allclose(b[key], a[key], rtol=rtol, err_msg=f"{name} step {a['step']} {key}")
          compared += 1
  assert compared > 100
  summary = json.loads((tmp_path / "two" / "loss_lm" / "summary.json").read_text())
  assert summary["config"]["devices"] == 8


@pytest.mark.slow
def test_two_processes_with_checkpoints_save_resume_and_match(tmp_path):
  """Checkpointing in a 2-process run: every process saves to one directory (orbax
  saves collectively; a per-process directory deadlocked the first save). The run
  finishes within the timeout, a second launch resumes from the checkpoints, and
  the results equal the 1-process run's."""
  ckpt = ["--config.checkpoint_every=5"]
  single = launch(tmp_path / "one", 8, ckpt)
  log, _ = single.communicate(timeout=900)
  assert single.returncode == 0, log[-3000:]
  for attempt in range(2):  # the second launch restores the finished runs' checkpoints
    port = free_port()
    procs = [
      launch(
        tmp_path / "two",
        4,
        [*ckpt, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(p)],
      )
      for p in range(2)
    ]
    for p in procs:
      log, _ = p.communicate(timeout=900)
      assert p.returncode == 0, f"launch {attempt}: " + log[-3000:]
  ckpt_dirs = sorted((tmp_path / "two" / "loss_lm" / "checkpoints").iterdir())
  assert ckpt_dirs and not (tmp_path / "two" / "loss_lm" / ".process1" / "checkpoints").exists()
  assert all(any(p.name.isdigit() for p in d.iterdir()) for d in ckpt_dirs)
  one, two = records(tmp_path / "one" / "loss_lm"), records(tmp_path / "two" / "loss_lm")
  assert one.keys() == two.keys()
  for name in one:
    if "@bf16" in name:
      continue
    a, b = one[name][-1], two[name][-1]
    np.testing.assert_allclose(b["heldout_loss"], a["heldout_loss"], rtol=1e-5, err_msg=name)


@pytest.mark.slow
def test_fsdp_two_processes_each_loading_its_rows_match_one_process(tmp_path):
  worker = str(ROOT / "tests" / "fsdp_worker.py")

  def run(devices, *args):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return subprocess.Popen(
      [sys.executable, worker, *args],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )

  port = free_port()
  procs = [run(8, str(tmp_path / "one.npz"))] + [
    run(4, str(tmp_path / f"two{p}.npz"), f"127.0.0.1:{port}", "2", str(p)) for p in range(2)
  ]
  for p in procs:
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log[-3000:]
  one = np.load(tmp_path / "one.npz")
  parts = [np.load(tmp_path / f"two{p}.npz") for p in range(2)]
  params = [k for k in one.files if k.startswith("arr_")]
  for part in parts:
    assert int(part["local_devices"]) == 4
    for k in params:
      np.testing.assert_allclose(part[k], one[k], atol=1e-5, err_msg=k)
  # Each process loaded only its half of every batch; together, what one process loaded.
  halves = [part["loaded"] for part in parts]
  assert all(len(h) == len(one["loaded"]) // 2 for h in halves)
  assert sorted(np.concatenate(halves).tolist()) == sorted(one["loaded"].tolist())
