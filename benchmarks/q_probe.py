"""Benchmark cases for Q-probes: probe training and selection vs PyTorch.

Both cases time jaxweights against a plain PyTorch re-implementation of the
same computation on the same data, in the same process and in interleaved
rounds (so drift on a shared machine hits both alike). In the rows,
``"plain"`` is jaxweights and the other method is torch, so
``time_ratio_vs_plain`` = torch / jaxweights (> 1: jaxweights is faster).

* ``q_probe/train_pg``: :func:`jaxweights.families.q_probe.probe.train_probe` with L_PG (the
  paper's recipe: linear probe, AdamW lr 5e-5, batches of 100 groups of 10
  samples of one prompt, groups re-formed every epoch) on 100k x 4096 float32
  features (500 prompts x 200 samples), 150 epochs, against the same loop in
  torch (the same :func:`~jaxweights.families.q_probe.probe.pg_groups` and batch order, the
  same initial probe; torch eager forward, softmax-weighted reward, backward,
  ``torch.optim.AdamW``). 150 epochs of that size take minutes per
  implementation on 2 CPU cores, so the row measures ``MEASURED_EPOCHS`` epochs
  and extrapolates, as its note says: jaxweights' per-epoch time = (time of
  ``1 + E`` epochs - time of 1 epoch) / E, which takes the compilation inside
  every ``train_probe`` call out of it; torch's = time of ``1 + E`` epochs /
  (1 + E) (nothing to compile); the 150-epoch estimate is time(1 epoch) + 149 x
  per-epoch time. ``step_ms`` is the per-epoch time. The two probes' parameters after
  the same epochs are compared (``max_rel_diff_theta``).
* ``q_probe/select``: candidates per second of Q-probe selection: the probe's
  ``Q`` on ``[prompts, k = 48, 4096]`` features (2048 prompts, 98,304
  candidates), ``softmax(Q / 0.1)`` over each prompt's candidates and one draw
  per prompt (:func:`jaxweights.families.q_probe.probe.select`, jitted) vs the same in torch
  (matmul, softmax, ``torch.multinomial``).

Peak memory: XLA's peak of one compiled call (the train step ``train_probe``
builds, or the selection function) vs the PyTorch memory profiler's peak of
live tensors in one call (one update on a gathered batch, or one selection);
for training that is the per-step working set (the feature matrix, kept on the
host by both, is not counted), for selection it includes the candidates'
features (an input of both).

``--quick`` (the tests) uses 2000 x 64 features, 2 measured epochs and 64
prompts x 48 x 64 candidates. The cases need torch (``pip install
'jaxweights[peers]'``); without it they are left out with a note on stderr.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxweights
from benchmarks.harness import (
  PLAIN,
  QUICK_COMPILER_OPTIONS,
  Case,
  Settings,
  compile_step,
  meets_target,
  peak_memory_bytes,
)
from jaxweights import q_probe

TORCH = "torch (eager re-implementation)"
TRAIN_CASE = "q_probe/train_pg"
SELECT_CASE = "q_probe/select"

EPOCHS = 150
MEASURED_EPOCHS = 3
LEARNING_RATE = 5e-5
BATCH_SIZE = 1000
GROUP_SIZE = 10
K = 48
BETA = 0.1

FULL = dict(n=100_000, d=4096, per_prompt=200, measured_epochs=MEASURED_EPOCHS, prompts=2048)
QUICK = dict(n=2000, d=64, per_prompt=50, measured_epochs=2, prompts=40)


def torch_available() -> bool:
  """Whether torch is installed (found, not imported: that is slow)."""
  try:
    return importlib.util.find_spec("torch") is not None
  except (ImportError, ValueError):
    return False


@functools.lru_cache(maxsize=1)
def _data(n: int, d: int, per_prompt: int):
  """Features ``[n, d]`` (standard normal), 0/1 rewards, prompt ids (shared by both cases)."""
  rng = np.random.default_rng(0)
  features = rng.standard_normal((n, d), dtype=np.float32)
  rewards = (rng.random(n) < 0.3).astype(np.float32)
  prompt_ids = np.arange(n) // per_prompt
  return features, rewards, prompt_ids


def _import_torch():
  # libgomp's default spin-waiting stalls torch whenever another process holds
  # a core (shared CPUs); read when torch loads libgomp, so set before import.
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(len(os.sched_getaffinity(0)))
  return torch


def _device(torch) -> str:
  return (
    f"cpu (jax {jax.__version__} {jax.devices()[0].device_kind}; torch "
    f"{torch.__version__}, {torch.get_num_threads()} threads)"
  )


def _interleaved(calls: dict, repeats: int) -> dict[str, float]:
  """Median seconds per call of each function, timed in rotating rounds."""
  names = list(calls)
  times = {m: [] for m in names}
  for r in range(repeats):
    k = r % len(names)
    for m in names[k:] + names[:k]:
      t0 = time.perf_counter()
      calls[m]()
      times[m].append(time.perf_counter() - t0)
  return {m: statistics.median(ts) for m, ts in times.items()}


def _rows(case, settings, rows_data, device, model, batch):
  """Rows in the harness schema, plain (jaxweights) first."""
  rows = []
  plain_s, plain_peak = rows_data[PLAIN]["s"], rows_data[PLAIN]["peak"]
  for m, vals in rows_data.items():
    time_ratio = vals["s"] / plain_s
    memory_ratio = vals["peak"] / plain_peak
    target_time, target_memory = case.targets_for(m)
    row = {
      "benchmark": case.name,
      "method": m,
      "time_ratio_vs_plain": time_ratio,
      "peak_memory_ratio_vs_plain": memory_ratio,
      "plain_step_ms": 1e3 * plain_s,
      "step_ms": 1e3 * vals["s"],
      "plain_peak_memory_bytes": plain_peak,
      "peak_memory_bytes": vals["peak"],
      "device": device,
      "model": model,
      "batch": batch,
      "repeats": settings.repeats,
      "calls_per_repeat": 1,
      "target_time_ratio": target_time,
      "target_memory_ratio": target_memory,
      "meets_target": meets_target(target_time, target_memory, time_ratio, memory_ratio),
    }
    row.update(vals.get("extra", {}))
    rows.append(row)
  return rows


# --- probe training -----------------------------------------------------------------------


def probe_step(d: int, groups: int, objective: str = "pg"):
  """The probe train step on a batch of ``groups`` prompts x ``GROUP_SIZE`` candidates.

  ``objective="pg"``: the step :func:`~jaxweights.families.q_probe.probe.train_probe` compiles
  for L_PG (softmax(Q) over each prompt's candidates weights its rewards);
  ``"mse"``: L_Q on the same batch, every candidate weighted alike (per group,
  the mean of the candidates' squared errors: with every candidate real, the
  gradient of ``train_probe``'s L_Q step on the same candidates). Both through
  :func:`jaxweights.make_train_step`, linear probe, AdamW.

  Returns:
    ``(step, state, batch, n_params)``; the batch is ``{"x": [groups, k, d],
    "r": [groups, k], "mask": [groups]}`` (standard normal features, 0/1 rewards).
  """
  probe = q_probe.Probe(d, rngs=nnx.Rngs(0))
  tx = optax.adamw(LEARNING_RATE, weight_decay=0.0)
  graphdef, state = jaxweights.init_train_state(probe, tx)
  if objective == "pg":
    loss_fn = lambda m, b: jaxweights.LossOutput(q_probe.pg_loss(m(b["x"]), b["r"]), b["mask"])
  elif objective == "mse":
    loss_fn = lambda m, b: jaxweights.LossOutput(q_probe.mse_loss(m(b["x"]), b["r"]).mean(axis=1), b["mask"])
  else:
    raise ValueError(f"objective must be 'pg' or 'mse', got {objective!r}.")
  step = jaxweights.make_train_step(graphdef, loss_fn, tx)
  rng = np.random.default_rng(0)
  batch = {
    "x": jnp.asarray(rng.standard_normal((groups, GROUP_SIZE, d), dtype=np.float32)),
    "r": jnp.asarray((rng.random((groups, GROUP_SIZE)) < 0.3).astype(np.float32)),
    "mask": jnp.ones(groups, bool),
  }
  return step, state, batch, jaxweights.count_params(probe)


def _pg_step_peak(d: int, quick: bool) -> int:
  """XLA peak memory of the step train_probe compiles for L_PG (same loss and shapes)."""
  step, state, batch, _ = probe_step(d, BATCH_SIZE // GROUP_SIZE)
  compiled = compile_step(step, state, batch, QUICK_COMPILER_OPTIONS if quick else None)
  return peak_memory_bytes(compiled) or 1


class TorchPG:
  """The L_PG training loop of ``train_probe``, in plain PyTorch."""

  def __init__(self, torch, features, rewards, prompt_ids, seed: int = 0):
    self.torch = torch
    self.features = torch.from_numpy(features)
    self.rewards = torch.from_numpy(rewards)
    self.prompt_ids = prompt_ids
    self.seed = seed
    init = q_probe.Probe(features.shape[1], rngs=nnx.Rngs(seed))  # train_probe's initial probe
    self.kernel = np.asarray(init.layers[0].kernel.get_value())[:, 0].copy()
    self.bias = np.asarray(init.layers[0].bias.get_value()).copy()

  def train(self, epochs: int):
    torch = self.torch
    lin = torch.nn.Linear(self.features.shape[1], 1)
    with torch.no_grad():
      lin.weight.copy_(torch.from_numpy(self.kernel)[None, :])
      lin.bias.copy_(torch.from_numpy(self.bias))
    opt = torch.optim.AdamW(lin.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    per_step = BATCH_SIZE // GROUP_SIZE
    for epoch in range(epochs):
      groups = q_probe.pg_groups(self.prompt_ids, GROUP_SIZE, seed=self.seed, epoch=epoch)
      order = np.random.default_rng((self.seed, epoch, 1)).permutation(len(groups))
      for start in range(0, len(order), per_step):
        idx = torch.from_numpy(groups[order[start : start + per_step]])
        self._step(lin, opt, idx)
    return lin

  def _step(self, lin, opt, idx):
    self._update(lin, opt, self.features[idx], self.rewards[idx])

  def _update(self, lin, opt, x, r):
    torch = self.torch
    q = lin(x).squeeze(-1)  # [groups, group_size]
    loss = -(torch.softmax(q, dim=1) * r).sum(dim=1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  def step_peak_bytes(self) -> int:
    """Peak of one update on a gathered batch (like XLA's step: the batch is its input)."""
    from benchmarks.self_influence import _torch_peak_bytes  # pylint: disable=import-outside-toplevel

    lin = self.train(0)
    opt = self.torch.optim.AdamW(lin.parameters(), lr=LEARNING_RATE)
    groups = q_probe.pg_groups(self.prompt_ids, GROUP_SIZE, seed=self.seed, epoch=0)
    idx = self.torch.from_numpy(groups[: BATCH_SIZE // GROUP_SIZE])
    x, r = self.features[idx], self.rewards[idx]
    self._update(lin, opt, x, r)  # AdamW state exists before the profiled step
    return _torch_peak_bytes(self.torch, lambda: self._update(lin, opt, x, r))


def measure_train(case: Case, settings: Settings, quick: bool) -> list[dict]:
  torch = _import_torch()
  size = QUICK if quick else FULL
  features, rewards, prompt_ids = _data(size["n"], size["d"], size["per_prompt"])
  e = size["measured_epochs"]

  def ours(epochs):
    return q_probe.train_probe(
      features,
      rewards,
      prompt_ids,
      objective="pg",
      epochs=epochs,
      learning_rate=LEARNING_RATE,
      weight_decay=0.0,
      batch_size=BATCH_SIZE,
      group_size=GROUP_SIZE,
      seed=0,
    )

  peer = TorchPG(torch, features, rewards, prompt_ids)
  # Same numbers? Both loops from the same initial probe over the same batches.
  theirs = peer.train(e)
  mine = ours(e).probe
  theta = np.r_[
    np.asarray(mine.layers[0].kernel.get_value())[:, 0], np.asarray(mine.layers[0].bias.get_value())
  ]
  theta_t = np.r_[theirs.weight.detach().numpy()[0], theirs.bias.detach().numpy()]
  max_rel_diff = float(np.max(np.abs(theta - theta_t)) / np.max(np.abs(theta)))

  calls = {
    "jax 1": lambda: ours(1),
    f"jax {1 + e}": lambda: ours(1 + e),
    "torch 1": lambda: peer.train(1),
    f"torch {1 + e}": lambda: peer.train(1 + e),
  }
  s = _interleaved(calls, settings.repeats)
  # jaxweights compiles inside every train_probe call: the difference removes
  # it (if timing noise makes it non-positive, the plain average is used and
  # the note says so). Torch compiles nothing: its average over 1 + e epochs.
  diff = (s[f"jax {1 + e}"] - s["jax 1"]) / e
  how = {PLAIN: f"(t({1 + e} epochs) - t(1 epoch)) / {e}", TORCH: f"t({1 + e} epochs) / {1 + e}"}
  if diff <= 0:
    diff = s[f"jax {1 + e}"] / (1 + e)
    how[PLAIN] = f"t({1 + e} epochs) / {1 + e} (the difference was not positive: noise)"
  per_epoch = {PLAIN: diff, TORCH: s[f"torch {1 + e}"] / (1 + e)}
  first = {PLAIN: s["jax 1"], TORCH: s["torch 1"]}
  est = {m: first[m] + (EPOCHS - 1) * per_epoch[m] for m in per_epoch}
  peaks = {PLAIN: _pg_step_peak(size["d"], quick), TORCH: peer.step_peak_bytes()}
  steps_per_epoch = int(np.ceil(len(prompt_ids) // GROUP_SIZE / (BATCH_SIZE // GROUP_SIZE)))
  data = {}
  for m in (PLAIN, TORCH):
    note = (
      f"{EPOCHS} epochs ≈ {est[m]:.1f} s EXTRAPOLATED from {1 + e} measured epochs "
      f"(per-epoch = {how[m]}; 1 epoch incl. "
      f"{'compilation' if m == PLAIN else 'setup'} = {first[m]:.2f} s); step ms = one "
      f"epoch of {steps_per_epoch} steps"
    )
    if m == TORCH:
      note += (
        f"; torch / jaxweights per epoch = {per_epoch[TORCH] / per_epoch[PLAIN]:.2f}x; "
        f"probes after {e} epochs agree to {max_rel_diff:.1e} rel"
      )
    data[m] = {
      "s": per_epoch[m],
      "peak": peaks[m],
      "extra": {
        "epochs": EPOCHS,
        "measured_epochs": e,
        "extrapolated": True,
        "est_total_s": est[m],
        "first_epoch_s": first[m],
        "max_rel_diff_theta": max_rel_diff,
        "note": note,
      },
    }
  n, d = size["n"], size["d"]
  model = f"linear probe {d} -> 1 (L_PG, AdamW lr {LEARNING_RATE})"
  batch = (
    f"{n}x{d} f32 ({n // size['per_prompt']} prompts x {size['per_prompt']}), "
    f"{BATCH_SIZE // GROUP_SIZE} groups of {GROUP_SIZE}/step, per epoch"
  )
  return _rows(case, settings, data, _device(torch), model, batch)


# --- selection ------------------------------------------------------------------------------


def measure_select(case: Case, settings: Settings, quick: bool) -> list[dict]:
  torch = _import_torch()
  size = QUICK if quick else FULL
  features, _, _ = _data(size["n"], size["d"], size["per_prompt"])
  p, d = size["prompts"], size["d"]
  if p * K > len(features):
    raise ValueError(f"{p} prompts x {K} candidates exceed the {len(features)} features.")
  feats = features[: p * K].reshape(p, K, d)  # a view of the training features
  probe = q_probe.Probe(d, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(probe)

  def select(params, x, key):
    q = nnx.merge(graphdef, params)(x)
    return q_probe.select(key, q, BETA)

  x = jnp.asarray(feats)
  key = jax.random.key(0)
  compiled = jax.jit(select).lower(params, x, key).compile(QUICK_COMPILER_OPTIONS if quick else None)
  ours = lambda: jax.block_until_ready(compiled(params, x, key))

  kernel = torch.from_numpy(np.asarray(probe.layers[0].kernel.get_value())[:, 0].copy())
  bias = torch.from_numpy(np.asarray(probe.layers[0].bias.get_value()).copy())
  xt = torch.from_numpy(feats)
  gen = torch.Generator().manual_seed(0)

  def theirs():
    with torch.no_grad():
      q = xt @ kernel + bias
      return torch.multinomial(torch.softmax(q / BETA, dim=1), 1, generator=gen)[:, 0]

  # Same distribution? Compare the selection weights, not the (random) draws.
  w = np.asarray(q_probe.qprobe_weights(nnx.merge(graphdef, params)(x), BETA))
  with torch.no_grad():
    w_t = torch.softmax((xt @ kernel + bias) / BETA, dim=1).numpy()
  max_abs_diff = float(np.max(np.abs(w - w_t)))

  for fn in (ours, theirs):
    for _ in range(settings.warmup + 1):
      fn()
  # Each repeat loops the call to ~min_repeat_s (calibrated on jaxweights).
  once = time.perf_counter()
  ours()
  once = time.perf_counter() - once
  n = max(1, int(np.ceil(settings.min_repeat_s / max(once, 1e-9))))
  loop = lambda fn: lambda: [fn() for _ in range(n)]
  s = _interleaved({PLAIN: loop(ours), TORCH: loop(theirs)}, settings.repeats)
  s = {m: v / n for m, v in s.items()}

  from benchmarks.self_influence import _torch_peak_bytes  # pylint: disable=import-outside-toplevel

  peaks = {PLAIN: peak_memory_bytes(compiled) or 1, TORCH: _torch_peak_bytes(torch, theirs)}
  data = {}
  for m in (PLAIN, TORCH):
    rate = p * K / s[m]
    note = f"{rate / 1e6:.2f}M candidates/s"
    if m == TORCH:
      note += (
        f"; torch / jaxweights time = {s[TORCH] / s[PLAIN]:.2f}x; selection weights "
        f"agree to {max_abs_diff:.1e}"
      )
    data[m] = {
      "s": s[m],
      "peak": peaks[m],
      "extra": {"candidates_per_s": rate, "max_abs_diff_weights": max_abs_diff, "note": note},
    }
  model = f"linear probe {d} -> 1, softmax(Q / {BETA}) + one draw per prompt"
  batch = f"{p} prompts x k={K} x {d} f32 ({p * K} candidates)"
  rows = _rows(case, settings, data, _device(torch), model, batch)
  for row in rows:
    row["calls_per_repeat"] = n
  return rows


# --- registry -------------------------------------------------------------------------------


def _registry(with_torch: bool) -> list[Case]:
  if not with_torch:
    print(
      f"[benchmarks] {TRAIN_CASE} and {SELECT_CASE} left out: torch is not importable "
      "(pip install 'jaxweights[peers]').",
      file=sys.stderr,
    )
    return []
  return [
    Case(TRAIN_CASE, build=lambda quick: None, measure=measure_train),
    Case(SELECT_CASE, build=lambda quick: None, measure=measure_select),
  ]


CASES: list[Case] = _registry(torch_available())
