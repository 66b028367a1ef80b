"""Per-family cost curves: weighted vs plain step, vs batch size and vs model size.

``python -m benchmarks.family_curves [--out DIR] [--sizes quick|demo|full] [--only FAMILY ...]``

For every family, at every point of a batch-size sweep (fixed model) and of a
model-size sweep (fixed batch), the plain step and the family's weighted step of
the same model and batch are compiled, timed with interleaved repeats (median;
each repeat loops the step to at least ``MIN_REPEAT_S`` except in quick mode)
and their XLA peak memory read; each record carries the ratio to the plain step,
so users see how the overhead grows (the point the two sweeps share is measured
once and recorded in both). Writes ``family_curves.json``,
``family_curves.md`` and ``family_curves.png`` (log-log: one row per family;
time and peak memory vs batch and vs model size, each with its ratio to the
plain step).

Families, their weighted step and their plain step (``width`` in the records is
the family's model-size knob):

* ``loss_based``: LinUpper (r = 0.4) on a TransformerLM vs ``weighting=None``
  (width: d_model; batch: sequences);
* ``presence``: PRESENCE tau = -1, one-backward book-keeping, same LM;
* ``rent`` / ``dws``: on an MLP classifier (width: hidden width; batch: examples);
* ``tiw_dsm``: the TIW-DSM step (frozen TimeDiscriminator 64 -> 256 x 2; weights
  and corrected target) vs the plain DSM step (``weighting=None``,
  :func:`jaxweights.substrates.diffusion.dsm_loss_fn`) of the ``tiw_dsm/digits_unet``
  benchmark's ScoreUNet 8x8x1 (built by :func:`benchmarks.tiw_dsm.digits_setup`;
  width: U-Net channels, the discriminator stays fixed; batch: images);
* ``q_probe``: the Q-probe training step, L_PG (softmax(Q) over each prompt's
  k = 10 candidates weights their rewards: the step
  :func:`jaxweights.families.q_probe.probe.train_probe` compiles) vs L_Q on the same linear
  probe and batch, every candidate weighted alike (built by
  :func:`benchmarks.q_probe.probe_step`; width: embedding dimension d; batch:
  prompts, i.e. groups of k = 10 candidates). Both go through
  ``make_train_step(weighting=None)``: Q-probe's reweighting lives in its loss,
  not in a ``Weighting``. The plain step is L_Q rather than ``benchmarks/q_probe.py``'s
  baseline because that baseline is a PyTorch re-implementation of the same
  L_PG loop (a peer comparison, not a plain step), and L_PG with uniform
  weights has a zero gradient (``-mean(r)`` does not depend on Q); L_Q is the
  paper's unweighted probe objective.

Size sets (``--sizes``): ``full`` (default) is each family's own sweep;
``demo`` is the moderate set :mod:`experiments.run_all` writes into the report
(a few minutes on a 2-core CPU); ``quick`` (``--quick``) is tiny, for tests.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxweights as jw
from benchmarks import q_probe as qb
from benchmarks import tiw_dsm as tb
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
  cfg = jw.TransformerConfig(
    vocab_size=1024, d_model=width, n_layers=2, n_heads=4, d_ff=4 * width, max_len=seq_len
  )
  model = jw.TransformerLM(cfg, rngs=nnx.Rngs(0))
  tx = optax.adamw(3e-4)
  graphdef, state = jw.init_train_state(model, tx)
  _, wstate = jw.init_train_state(model, tx, weighting)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch_size, seq_len + 1))
  batch = {"tokens": jnp.asarray(tokens, jnp.int32)}
  return Point(
    jw.make_train_step(graphdef, _lm_loss, tx),
    jw.make_train_step(graphdef, _lm_loss, tx, weighting),
    state,
    wstate,
    batch,
    jw.count_params(model),
  )


def _mlp_point(weighting, batch_size: int, width: int) -> Point:
  model = jw.MLP(64, [width, width], 10, rngs=nnx.Rngs(0))
  tx = optax.adamw(1e-3)
  loss_fn = nl.classification_loss()
  graphdef, state = jw.init_train_state(model, tx)
  _, wstate = jw.init_train_state(model, tx, weighting)
  rng = np.random.default_rng(0)
  batch = {
    "x": jnp.asarray(rng.normal(size=(batch_size, 64)), jnp.float32),
    "y": jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32),
  }
  return Point(
    jw.make_train_step(graphdef, loss_fn, tx),
    jw.make_train_step(graphdef, loss_fn, tx, weighting),
    state,
    wstate,
    batch,
    jw.count_params(model),
  )


def _tiw_point(batch_size: int, channels: int) -> Point:
  setup = tb.digits_setup(channels, hidden=256, batch_size=batch_size, methods=(tb.TIW,))
  return Point(
    setup.plain_step,
    setup.weighted_steps[tb.TIW],
    setup.state,
    setup.weighted_states[tb.TIW],
    setup.batch,
    sum(x.size for x in jax.tree.leaves(setup.state.params)),
  )


def _q_probe_point(groups: int, d: int) -> Point:
  plain, state, batch, params = qb.probe_step(d, groups, "mse")
  weighted, _, _, _ = qb.probe_step(d, groups, "pg")
  return Point(plain, weighted, state, state, batch, params)


T10 = nl.symmetric_transition(10, 0.3)

# family -> build(batch, width, seq), the full sweeps (batch sweep at width_at,
# width sweep at batch_at), what width and batch mean, and the smaller size sets
# (quick: QUICK unless the family has its own).
FAMILIES = {
  "loss_based": dict(
    build=lambda b, w, seq: _lm_point(jw.linupper_weighting(r=0.4), b, w, seq),
    batches=(4, 8, 16, 32),
    widths=(64, 128, 256),
    batch_at=8,
    width_at=128,
    width_is="d_model",
    batch_is="sequences",
    demo=dict(batches=(4, 8, 16), widths=(64, 128), batch_at=8, width_at=64),
  ),
  "presence": dict(
    build=lambda b, w, seq: _lm_point(jw.presence_weighting(tau=-1.0), b, w, seq),
    batches=(4, 8, 16, 32),
    widths=(64, 128, 256),
    batch_at=8,
    width_at=128,
    width_is="d_model",
    batch_is="sequences",
    demo=dict(batches=(4, 8, 16), widths=(64, 128), batch_at=8, width_at=64),
  ),
  "rent": dict(
    build=lambda b, w, seq: _mlp_point(nl.rent_weighting(T10), b, w),
    batches=(64, 256, 1024, 4096),
    widths=(128, 512, 2048),
    batch_at=256,
    width_at=512,
    width_is="MLP hidden width",
    batch_is="examples",
    demo=dict(batches=(64, 512, 4096), widths=(128, 512, 2048), batch_at=512, width_at=512),
  ),
  "dws": dict(
    build=lambda b, w, seq: _mlp_point(nl.dws_weighting(T10, alpha=10.0), b, w),
    # Up to width 4096 (17M params): DWS's M x B sampling is a fixed cost per
    # batch size, so its ratio only nears 1 once the step is ~20x that cost.
    batches=(64, 256, 1024, 4096),
    widths=(128, 512, 2048, 4096),
    batch_at=256,
    width_at=512,
    width_is="MLP hidden width",
    batch_is="examples",
    demo=dict(batches=(64, 512, 4096), widths=(128, 512, 2048), batch_at=512, width_at=512),
  ),
  "tiw_dsm": dict(
    build=lambda b, w, seq: _tiw_point(b, w),
    batches=(64, 128, 256, 512),
    widths=(16, 32, 64, 128),
    batch_at=256,
    width_at=64,
    width_is="ScoreUNet channels",
    batch_is="images",
    demo=dict(batches=(32, 128, 512), widths=(8, 16, 32), batch_at=128, width_at=32),
    quick=dict(batches=(4, 8), widths=(8, 16), batch_at=4, width_at=8),
  ),
  "q_probe": dict(
    build=lambda b, w, seq: _q_probe_point(b, w),
    batches=(25, 50, 100, 200, 400),
    widths=(512, 1024, 4096, 8192),
    batch_at=100,
    width_at=4096,
    width_is="embedding dimension d",
    batch_is="prompts x 10 candidates",
    demo=dict(batches=(25, 100, 400), widths=(256, 1024, 4096), batch_at=100, width_at=1024),
  ),
}
QUICK = dict(batches=(4, 8), widths=(32, 64), batch_at=4, width_at=32)
SIZES = ("quick", "demo", "full")
SEQ_LEN = {"quick": 16, "demo": 32, "full": 64}  # LM sequence length per size set
MIN_REPEAT_S = 0.02  # each timed repeat loops the step at least this long (not in quick)


def family_spec(name: str, sizes: str = "full") -> dict:
  """The sweep of ``name`` at the size set ``sizes`` ("quick", "demo" or "full")."""
  if sizes not in SIZES:
    raise ValueError(f"sizes must be one of {SIZES}, got {sizes!r}.")
  spec = dict(FAMILIES[name])
  if sizes == "quick":
    spec.update(spec.get("quick", QUICK))
  elif sizes == "demo":
    spec.update(spec["demo"])
  return spec


def measure(point: Point, repeats: int, quick: bool, min_repeat_s: float = 0.0) -> dict:
  opts = QUICK_COMPILER_OPTIONS if quick else None
  plain = compile_step(point.plain, point.state, point.batch, opts)
  weighted = compile_step(point.weighted, point.weighted_state, point.batch, opts)
  for fn, st in ((plain, point.state), (weighted, point.weighted_state)):
    jax.block_until_ready(fn(st, point.batch))
  # Calls per repeat: enough plain steps to fill min_repeat_s (tiny steps are noisy).
  n = max(1, int(np.ceil(min_repeat_s / max(_time_loop(plain, point.state, point.batch, 1), 1e-9))))
  t_plain, t_weighted = [], []
  for i in range(repeats):  # interleaved, order alternating
    order = [(plain, point.state, t_plain), (weighted, point.weighted_state, t_weighted)]
    for fn, st, out in order if i % 2 == 0 else order[::-1]:
      out.append(_time_loop(fn, st, point.batch, n))
  mp, mw = peak_memory_bytes(plain), peak_memory_bytes(weighted)
  tp, tw = statistics.median(t_plain), statistics.median(t_weighted)
  return {
    "plain_ms": tp * 1e3,
    "weighted_ms": tw * 1e3,
    "time_ratio": tw / tp,
    "plain_peak_bytes": mp,
    "weighted_peak_bytes": mw,
    "memory_ratio": (mw / mp) if mp and mw else None,
    "params": point.params,
    "calls_per_repeat": n,
  }


def run(
  families: Sequence[str], *, quick: bool = False, sizes: str | None = None, repeats: int = 5, log=print
) -> list[dict]:
  """Records of every point of ``families``' sweeps at the size set ``sizes``
  (default: "quick" if ``quick`` else "full")."""
  sizes = sizes or ("quick" if quick else "full")
  quick = sizes == "quick"
  records = []
  for name in families:
    spec = family_spec(name, sizes)
    sweeps = [("batch", b, spec["width_at"]) for b in spec["batches"]]
    sweeps += [("model", spec["batch_at"], w) for w in spec["widths"]]
    measured = {}  # the point the two sweeps share is measured once
    for sweep, b, w in sweeps:
      if (b, w) not in measured:
        point = spec["build"](b, w, SEQ_LEN[sizes])
        measured[b, w] = measure(point, repeats, quick, 0.0 if quick else MIN_REPEAT_S)
      rec = {"family": name, "sweep": sweep, "batch": b, "width": w, **measured[b, w]}
      records.append(rec)
      log(
        f"{name:>10s} {sweep:>5s} batch={b:<5d} width={w:<5d} params={rec['params']:>9d} "
        f"plain={rec['plain_ms']:.2f}ms x{rec['time_ratio']:.3f} time "
        f"x{(rec['memory_ratio'] or float('nan')):.3f} memory"
      )
  return records


def markdown(records: list[dict]) -> str:
  lines = [
    "| family | sweep | batch | width | params | plain ms | time ratio | memory ratio |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in records:
    mem = f"{r['memory_ratio']:.3f}" if r["memory_ratio"] else "n/a"
    lines.append(
      f"| {r['family']} | {r['sweep']} | {r['batch']} | {r['width']} | {r['params']} | "
      f"{r['plain_ms']:.2f} | {r['time_ratio']:.3f} | {mem} |"
    )
  families = list(dict.fromkeys(r["family"] for r in records))
  lines += [
    "",
    "Width and batch per family: "
    + "; ".join(
      f"{f}: width = {FAMILIES[f]['width_is']}, batch = {FAMILIES[f]['batch_is']}"
      for f in families
      if f in FAMILIES
    )
    + ".",
  ]
  return "\n".join(lines) + "\n"


def plot(records: list[dict], path: pathlib.Path) -> None:
  """Log-log, one row per family: time and peak memory vs batch and vs parameters,
  plain and weighted step, with the ratio to the plain step on a second axis."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import NullFormatter

  panels = [
    (sweep, key, xlabel, what, plain, weighted, ratio, unit, scale)
    for sweep, key, xlabel in (("batch", "batch", "batch size"), ("model", "params", "parameters"))
    for what, plain, weighted, ratio, unit, scale in (
      ("time", "plain_ms", "weighted_ms", "time_ratio", "ms", 1.0),
      ("peak memory", "plain_peak_bytes", "weighted_peak_bytes", "memory_ratio", "MiB", 2.0**-20),
    )
  ]
  families = list(dict.fromkeys(r["family"] for r in records))
  fig, axes = plt.subplots(
    len(families), len(panels), figsize=(5 * len(panels), 3.2 * len(families)), squeeze=False
  )
  for row, fam in zip(axes, families):
    for ax, (sweep, key, xlabel, what, plain, weighted, ratio, unit, scale) in zip(row, panels):
      pts = sorted((r for r in records if r["family"] == fam and r["sweep"] == sweep), key=lambda r: r[key])
      x = [r[key] for r in pts]
      val = lambda r, k: r[k] * scale if r[k] else np.nan
      ax.loglog(x, [val(r, plain) for r in pts], "o-", label=f"plain step ({unit})")
      ax.loglog(x, [val(r, weighted) for r in pts], "s--", label=f"{fam} step ({unit})")
      ax.xaxis.set_minor_formatter(NullFormatter())
      ax.set_xlabel(xlabel)
      ax.set_title(f"{fam}: {what} vs {xlabel}", fontsize=10)
      ax2 = ax.twinx()
      ax2.plot(x, [r[ratio] or np.nan for r in pts], "k:", label=f"{what} ratio")
      ax2.set_ylabel("ratio vs plain")
      ax.legend(loc="upper left", fontsize=7)
      ax2.legend(loc="lower right", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="bench_results")
  parser.add_argument(
    "--sizes",
    choices=SIZES,
    default=None,
    help="size set: full (default), demo (the report's) or quick (tests)",
  )
  parser.add_argument("--quick", action="store_true", help="tiny sizes (for tests): --sizes quick")
  parser.add_argument("--only", nargs="+", choices=sorted(FAMILIES), default=None)
  parser.add_argument(
    "--repeats", type=int, default=None, help="timed repeats per point (default: 2 quick, 3 demo, 5 full)"
  )
  args = parser.parse_args(argv)
  if args.quick and args.sizes not in (None, "quick"):
    parser.error("--quick contradicts --sizes " + args.sizes)
  sizes = "quick" if args.quick else (args.sizes or "full")
  repeats = args.repeats or {"quick": 2, "demo": 3, "full": 5}[sizes]
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  records = run(args.only or list(FAMILIES), sizes=sizes, repeats=repeats)
  meta = {"device": device_string(), "quick": sizes == "quick", "sizes": sizes, "repeats": repeats}
  (out / "family_curves.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
  (out / "family_curves.md").write_text(
    f"Per-family cost curves on {meta['device']} (`{sizes}` sizes, median of {repeats} "
    "interleaved repeats; ratios vs the plain step of the same model and batch, same "
    "process).\n\n" + markdown(records)
  )
  plot(records, out / "family_curves.png")
  return records


if __name__ == "__main__":
  main(sys.argv[1:])
