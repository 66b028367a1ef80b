"""Per-family cost curves: weighted vs plain step, vs batch size and vs model size.

``python -m benchmarks.family_curves [--out DIR] [--quick] [--only FAMILY]``

For every family, at every point of a batch-size sweep (fixed model) and of a
model-size sweep (fixed batch), the plain step (``weighting=None``) and the
family's weighted step of the same model and batch are compiled, timed with
interleaved repeats (median) and their XLA peak memory read; each record carries
the ratio to the plain step, so users see how the overhead grows. Writes
``family_curves.json``, ``family_curves.md`` and ``family_curves.png`` (log-log:
one row per family; time and memory vs batch and vs model size).

Families and their weighted step:

* ``loss_based``: LinUpper (r = 0.4) on a TransformerLM (sizes: d_model);
* ``presence``: PRESENCE tau = -1, one-backward book-keeping, same LM;
* ``rent`` / ``dws``: on an MLP classifier (sizes: hidden width).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxweights as jw
from benchmarks.harness import (
    QUICK_COMPILER_OPTIONS,
    _time_loop,
    compile_step,
    device_string,
    peak_memory_bytes,
)
from jaxweights import noisy_labels as nl


class Point(NamedTuple):
  plain: Callable
  weighted: Callable
  state: object
  weighted_state: object
  batch: object
  params: int


def _lm_loss(model, batch):
  logits = model(batch["tokens"][:, :-1])
  loss, mask = jw.token_mean_cross_entropy(logits, batch["tokens"][:, 1:])
  return jw.LossOutput(loss, mask)


def _lm_point(weighting, batch_size: int, width: int, seq_len: int) -> Point:
  cfg = jw.TransformerConfig(vocab_size=1024, d_model=width, n_layers=2, n_heads=4,
                             d_ff=4 * width, max_len=seq_len)
  model = jw.TransformerLM(cfg, rngs=nnx.Rngs(0))
  tx = optax.adamw(3e-4)
  graphdef, state = jw.init_train_state(model, tx)
  _, wstate = jw.init_train_state(model, tx, weighting)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch_size, seq_len + 1))
  batch = {"tokens": jnp.asarray(tokens, jnp.int32)}
  return Point(jw.make_train_step(graphdef, _lm_loss, tx),
               jw.make_train_step(graphdef, _lm_loss, tx, weighting),
               state, wstate, batch, jw.count_params(model))


def _mlp_point(weighting, batch_size: int, width: int) -> Point:
  model = jw.MLP(64, [width, width], 10, rngs=nnx.Rngs(0))
  tx = optax.adamw(1e-3)
  loss_fn = nl.classification_loss()
  graphdef, state = jw.init_train_state(model, tx)
  _, wstate = jw.init_train_state(model, tx, weighting)
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.normal(size=(batch_size, 64)), jnp.float32),
           "y": jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)}
  return Point(jw.make_train_step(graphdef, loss_fn, tx),
               jw.make_train_step(graphdef, loss_fn, tx, weighting),
               state, wstate, batch, jw.count_params(model))


T10 = nl.symmetric_transition(10, 0.3)

# family -> (build(batch, width), batch sweep, width sweep, fixed batch, fixed width)
FAMILIES = {
    "loss_based": dict(
        build=lambda b, w, seq: _lm_point(jw.loss_reweighting("linupper", r=0.4), b, w, seq),
        batches=(4, 8, 16, 32), widths=(64, 128, 256), batch_at=8, width_at=128),
    "presence": dict(
        build=lambda b, w, seq: _lm_point(jw.presence(tau=-1.0), b, w, seq),
        batches=(4, 8, 16, 32), widths=(64, 128, 256), batch_at=8, width_at=128),
    "rent": dict(
        build=lambda b, w, seq: _mlp_point(nl.transition_weighting("rent", T10), b, w),
        batches=(64, 256, 1024, 4096), widths=(128, 512, 2048), batch_at=256, width_at=512),
    "dws": dict(
        build=lambda b, w, seq: _mlp_point(nl.transition_weighting("dws", T10, alpha=10.0), b, w),
        batches=(64, 256, 1024, 4096), widths=(128, 512, 2048), batch_at=256, width_at=512),
}
QUICK = dict(batches=(4, 8), widths=(32, 64), batch_at=4, width_at=32)


def measure(point: Point, repeats: int, quick: bool) -> dict:
  opts = QUICK_COMPILER_OPTIONS if quick else None
  plain = compile_step(point.plain, point.state, point.batch, opts)
  weighted = compile_step(point.weighted, point.weighted_state, point.batch, opts)
  for fn, st in ((plain, point.state), (weighted, point.weighted_state)):
    jax.block_until_ready(fn(st, point.batch))
  t_plain, t_weighted = [], []
  for i in range(repeats):  # interleaved, order alternating
    order = [(plain, point.state, t_plain), (weighted, point.weighted_state, t_weighted)]
    for fn, st, out in (order if i % 2 == 0 else order[::-1]):
      out.append(_time_loop(fn, st, point.batch, 1))
  mp, mw = peak_memory_bytes(plain), peak_memory_bytes(weighted)
  tp, tw = statistics.median(t_plain), statistics.median(t_weighted)
  return {"plain_ms": tp * 1e3, "weighted_ms": tw * 1e3, "time_ratio": tw / tp,
          "plain_peak_bytes": mp, "weighted_peak_bytes": mw,
          "memory_ratio": (mw / mp) if mp and mw else None, "params": point.params}


def run(families: Sequence[str], *, quick: bool = False, repeats: int = 5, log=print) -> list[dict]:
  records = []
  seq = 16 if quick else 64
  for name in families:
    spec = dict(FAMILIES[name])
    if quick:
      spec.update(QUICK)
    sweeps = [("batch", b, spec["width_at"]) for b in spec["batches"]]
    sweeps += [("model", spec["batch_at"], w) for w in spec["widths"]]
    for sweep, b, w in sweeps:
      rec = {"family": name, "sweep": sweep, "batch": b, "width": w,
             **measure(spec["build"](b, w, seq), repeats, quick)}
      records.append(rec)
      log(f"{name:>10s} {sweep:>5s} batch={b:<5d} width={w:<5d} params={rec['params']:>9d} "
          f"plain={rec['plain_ms']:.2f}ms x{rec['time_ratio']:.3f} time "
          f"x{(rec['memory_ratio'] or float('nan')):.3f} memory")
  return records


def markdown(records: list[dict]) -> str:
  lines = ["| family | sweep | batch | width | params | plain ms | time ratio | memory ratio |",
           "|---|---|---|---|---|---|---|---|"]
  for r in records:
    mem = f"{r['memory_ratio']:.3f}" if r["memory_ratio"] else "n/a"
    lines.append(f"| {r['family']} | {r['sweep']} | {r['batch']} | {r['width']} | {r['params']} | "
                 f"{r['plain_ms']:.2f} | {r['time_ratio']:.3f} | {mem} |")
  return "\n".join(lines) + "\n"


def plot(records: list[dict], path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  families = list(dict.fromkeys(r["family"] for r in records))
  fig, axes = plt.subplots(len(families), 2, figsize=(10, 3.2 * len(families)), squeeze=False)
  for row, fam in zip(axes, families):
    for ax, (sweep, key, label) in zip(row, [("batch", "batch", "batch size"), ("model", "params", "parameters")]):
      pts = sorted((r for r in records if r["family"] == fam and r["sweep"] == sweep), key=lambda r: r[key])
      x = [r[key] for r in pts]
      ax.loglog(x, [r["plain_ms"] for r in pts], "o-", label="plain step (ms)")
      ax.loglog(x, [r["weighted_ms"] for r in pts], "s--", label=f"{fam} step (ms)")
      ax.set_xlabel(label)
      ax.set_title(f"{fam}: time vs {label}")
      ax2 = ax.twinx()
      ax2.plot(x, [r["time_ratio"] for r in pts], "k:", label="time ratio")
      ax2.plot(x, [r["memory_ratio"] or np.nan for r in pts], "r:", label="memory ratio")
      ax2.set_ylabel("ratio vs plain")
      ax.legend(loc="upper left", fontsize=7)
      ax2.legend(loc="lower right", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="bench_results")
  parser.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
  parser.add_argument("--only", nargs="+", choices=sorted(FAMILIES), default=None)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  records = run(args.only or list(FAMILIES), quick=args.quick,
                repeats=2 if args.quick else args.repeats)
  meta = {"device": device_string(), "quick": args.quick}
  (out / "family_curves.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
  (out / "family_curves.md").write_text(
      f"Per-family cost curves on {meta['device']} (ratios vs the plain step of the same "
      "model and batch, same process).\n\n" + markdown(records))
  plot(records, out / "family_curves.png")
  return records


if __name__ == "__main__":
  main(sys.argv[1:])
