"""Cost curves of per-sample gradient norms: time and peak memory vs batch and length.

``python -m benchmarks.cost_curves [--out DIR] [--quick]`` sweeps the batch size
(at a fixed sequence length) and the sequence length (at a fixed batch size) of a
small :class:`jaxweights.TransformerLM`, and at every point measures

* ``plain``: the plain train step (``make_train_step``, AdamW),
* ``ghost``: exact ghost norms (one tapped forward/backward),
* ``vmap``: exact ``vmap(grad)`` norms in chunks of ``VMAP_CHUNK`` samples,
* ``jvp``: the forward-mode estimate with ``JVP_PROBES`` probes,

the last three as jitted ``(state, batch) -> [batch]`` functions (see
:func:`benchmarks.self_influence.norms_fn`). Time is the median of interleaved
repeats; peak memory is XLA's (:func:`benchmarks.harness.peak_memory_bytes`).
Writes ``cost_curves.json`` (one record per point and method) and
``cost_curves.png`` (log-log, one panel per sweep and measure) under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import statistics
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxweights
from benchmarks.harness import (
  QUICK_COMPILER_OPTIONS,
  _time_loop,
  compile_step,
  device_string,
  peak_memory_bytes,
)
from benchmarks.self_influence import JVP_PROBES, LEARNING_RATE, _lm_loss, norms_fn

VMAP_CHUNK = 4
METHODS: tuple[str, ...] = ("plain", "ghost", "vmap", "jvp")


@dataclasses.dataclass(frozen=True)
class Sweep:
  """What to measure.

  Attributes:
    config: the transformer's sizes (``max_len`` must cover ``seq_lens``).
    batch_sizes: the batch sweep, at sequence length ``seq_at``.
    seq_at: the sequence length of the batch sweep.
    seq_lens: the length sweep, at batch size ``batch_at``.
    batch_at: the batch size of the length sweep.
    repeats: timed repeats per point and method (median reported).
    min_repeat_s: each repeat loops the step until about this long.
    compiler_options: XLA options (the quick sweep compiles cheaply).
  """

  config: jaxweights.TransformerConfig
  batch_sizes: tuple[int, ...]
  seq_at: int
  seq_lens: tuple[int, ...]
  batch_at: int
  repeats: int = 3
  min_repeat_s: float = 0.1
  compiler_options: dict | None = None


DEFAULT = Sweep(
  config=jaxweights.TransformerConfig.tiny(max_len=256),
  batch_sizes=(2, 4, 8, 16, 32),
  seq_at=64,
  seq_lens=(16, 32, 64, 128, 256),
  batch_at=8,
)
QUICK = Sweep(
  config=jaxweights.TransformerConfig.tiny(
    vocab_size=128, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=16
  ),
  batch_sizes=(2, 4),
  seq_at=8,
  seq_lens=(8, 16),
  batch_at=2,
  repeats=1,
  min_repeat_s=0.0,
  compiler_options=QUICK_COMPILER_OPTIONS,
)


def _steps(graphdef, tx):
  return {
    "plain": jaxweights.make_train_step(graphdef, _lm_loss, tx, weighting=None),
    "ghost": norms_fn(graphdef, _lm_loss, method="ghost"),
    "vmap": norms_fn(graphdef, _lm_loss, method="vmap", chunk_size=VMAP_CHUNK),
    "jvp": norms_fn(graphdef, _lm_loss, method="jvp", num_probes=JVP_PROBES),
  }


def measure_point(sweep: Sweep, batch_size: int, seq_len: int) -> dict[str, dict]:
  """``{method: {"time_ms", "peak_memory_bytes"}}`` at one batch size and length."""
  cfg = sweep.config
  model = jaxweights.TransformerLM(cfg, rngs=nnx.Rngs(0))
  tx = optax.adamw(LEARNING_RATE)
  graphdef, state = jaxweights.init_train_state(model, tx)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
  batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}
  compiled = {
    m: compile_step(s, state, batch, sweep.compiler_options) for m, s in _steps(graphdef, tx).items()
  }
  for fn in compiled.values():
    jax.block_until_ready(fn(state, batch))
  once = _time_loop(compiled["plain"], state, batch, 1)
  n = max(1, math.ceil(sweep.min_repeat_s / max(once, 1e-9)))
  times = {m: [] for m in METHODS}
  for r in range(sweep.repeats):
    k = r % len(METHODS)
    for m in METHODS[k:] + METHODS[:k]:
      times[m].append(_time_loop(compiled[m], state, batch, n))
  return {
    m: {
      "time_ms": 1e3 * statistics.median(times[m]),
      "peak_memory_bytes": peak_memory_bytes(compiled[m]),
    }
    for m in METHODS
  }


def run(sweep: Sweep, log=None) -> list[dict]:
  """Every point of both sweeps, one record per (point, method)."""
  points = [("batch", b, sweep.seq_at) for b in sweep.batch_sizes]
  points += [("seq", sweep.batch_at, t) for t in sweep.seq_lens]
  cfg = sweep.config
  model_name = f"TransformerLM ({cfg.n_layers}x{cfg.d_model}, d_ff {cfg.d_ff}, vocab {cfg.vocab_size})"
  device = device_string()
  records = []
  cache: dict[tuple[int, int], dict] = {}  # the sweeps may share a point
  for kind, b, t in points:
    if (b, t) not in cache:
      if log:
        print(f"[cost_curves] {kind} sweep: batch {b}, seq {t} ...", file=log, flush=True)
      cache[b, t] = measure_point(sweep, b, t)
    measured = cache[b, t]
    plain = measured["plain"]
    for m in METHODS:
      rec = measured[m]
      peak, plain_peak = rec["peak_memory_bytes"], plain["peak_memory_bytes"]
      records.append(
        {
          "sweep": kind,
          "batch": b,
          "seq": t,
          "method": m,
          "time_ms": rec["time_ms"],
          "peak_memory_bytes": peak,
          "time_ratio_vs_plain": rec["time_ms"] / plain["time_ms"],
          "peak_memory_ratio_vs_plain": (None if peak is None or not plain_peak else peak / plain_peak),
          "model": model_name,
          "device": device,
          "repeats": sweep.repeats,
          "vmap_chunk": VMAP_CHUNK,
          "jvp_probes": JVP_PROBES,
        }
      )
  return records


def plot(records: list[dict], path: pathlib.Path) -> bool:
  """Log-log time and memory curves; False (nothing written) without matplotlib."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  labels = {
    "plain": "plain train step",
    "ghost": "ghost norms (exact)",
    "vmap": f"vmap(grad) norms (chunk {VMAP_CHUNK})",
    "jvp": f"jvp norms ({JVP_PROBES} probes)",
  }
  fig, axes = plt.subplots(2, 2, figsize=(10, 8))
  for col, (kind, xkey, xlabel) in enumerate(
    (("batch", "batch", "batch size"), ("seq", "seq", "sequence length"))
  ):
    fixed = [r for r in records if r["sweep"] == kind]
    if not fixed:
      continue
    other = f"seq {fixed[0]['seq']}" if kind == "batch" else f"batch {fixed[0]['batch']}"
    for row, (ykey, scale, ylabel) in enumerate(
      (("time_ms", 1.0, "time per call (ms)"), ("peak_memory_bytes", 2.0**-20, "peak memory (MiB)"))
    ):
      ax = axes[row][col]
      for m in METHODS:
        pts = [(r[xkey], r[ykey]) for r in fixed if r["method"] == m and r[ykey] is not None]
        if pts:
          xs, ys = zip(*pts)
          ax.plot(xs, [y * scale for y in ys], marker="o", label=labels[m])
      ax.set_xscale("log", base=2)
      ax.set_yscale("log")
      ax.set_xlabel(f"{xlabel} ({other})")
      ax.set_ylabel(ylabel)
      ax.grid(True, which="both", alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.suptitle(f"{records[0]['model']} on {records[0]['device']}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def markdown(records: list[dict]) -> str:
  """One line per point: each method's time (ms) and peak memory (MiB) and ratios."""
  lines = [
    "| sweep | batch | seq | "
    + " | ".join(f"{m} ms (x plain)" for m in METHODS)
    + " | "
    + " | ".join(f"{m} MiB (x plain)" for m in METHODS)
    + " |"
  ]
  lines.append("|" + "---|" * (3 + 2 * len(METHODS)))
  keyed = {}
  for r in records:
    keyed.setdefault((r["sweep"], r["batch"], r["seq"]), {})[r["method"]] = r
  for (kind, b, t), by in keyed.items():
    times = [f"{by[m]['time_ms']:.1f} ({by[m]['time_ratio_vs_plain']:.2f})" for m in METHODS]
    mems = [
      "n/a"
      if by[m]["peak_memory_bytes"] is None
      else f"{by[m]['peak_memory_bytes'] / 2**20:.1f} ({by[m]['peak_memory_ratio_vs_plain']:.2f})"
      for m in METHODS
    ]
    lines.append(f"| {kind} | {b} | {t} | " + " | ".join(times + mems) + " |")
  return "\n".join(lines) + "\n"


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(","))


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.cost_curves",
    description="Time and peak memory of per-sample gradient norms vs batch and length.",
  )
  parser.add_argument("--out", default="bench_results", help="output folder")
  parser.add_argument("--quick", action="store_true", help="a tiny model and sweep (for tests)")
  parser.add_argument("--batch-sizes", type=_ints, default=None, help="e.g. 2,4,8")
  parser.add_argument("--seq-lens", type=_ints, default=None, help="e.g. 16,32,64")
  parser.add_argument("--repeats", type=int, default=None)
  args = parser.parse_args(argv)
  sweep = QUICK if args.quick else DEFAULT
  changes = {
    k: v
    for k, v in (("batch_sizes", args.batch_sizes), ("seq_lens", args.seq_lens), ("repeats", args.repeats))
    if v is not None
  }
  sweep = dataclasses.replace(sweep, **changes)
  longest = max(sweep.seq_lens + (sweep.seq_at,))
  if longest > sweep.config.max_len:
    sweep = dataclasses.replace(sweep, config=dataclasses.replace(sweep.config, max_len=longest))

  records = run(sweep, log=sys.stderr)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "cost_curves.json").write_text(json.dumps(records, indent=2) + "\n")
  table = markdown(records)
  (out / "cost_curves.md").write_text(table)
  if not plot(records, out / "cost_curves.png"):
    print("[cost_curves] matplotlib is not installed: no plot written.", file=sys.stderr)
  print(table, end="")
  return records


if __name__ == "__main__":
  main()
