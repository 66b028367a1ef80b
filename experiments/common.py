"""Helpers every experiment reuses: configs, output layout, aggregation, tables, plots.

Layout of one experiment's output (``<out>/<experiment>/``):

* ``runs/<method>_seed<k>.jsonl``: per-run metrics written by
  :func:`jaxweights.train_loop` through a :class:`jaxweights.JsonlLogger`;
* ``summary.json``: ``{"experiment", "config", "metrics"}`` where ``metrics`` maps
  ``method -> {metric: mean, "<metric>_std": std}`` over seeds;
* ``table.md``: the same numbers as a markdown table, with notes;
* one or more PNG plots (loss-vs-step curves, mean line and a +-std band).

Standard deviations are sample standard deviations (``ddof=1``) over seeds, 0 for
a single seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

import jaxweights

RESULTS = "results"


@dataclasses.dataclass(frozen=True)
class Claim:
  """One direction a paper reports, to be checked against our paired deltas.

  Attributes:
    text: the claim in words ("LinUpper converges faster than uniform").
    paper: the paper's own figure, cited (table or figure, and its numbers).
    method: our method the claim is about.
    metric: the metric compared, paired per seed against ``baseline``
      (``delta_<metric>`` must be in the metrics).
    lower_is_better: the direction the paper claims for ``method`` vs ``baseline``.
    baseline: the method compared against.
  """

  text: str
  paper: str
  method: str
  metric: str
  lower_is_better: bool = True
  baseline: str = "uniform"


def claim_verdict(metrics: Mapping[str, Mapping[str, float]], claim: Claim, n: int) -> dict[str, str]:
  """``{"claim", "paper", "ours", "verdict"}`` for one claim, from the paired deltas.

  The rule of :func:`paired_verdicts`: the direction counts only when
  ``|mean delta| > 2 standard errors`` over ``n >= 3`` seeds. The verdict is
  ``reproduces``, ``opposite direction`` or ``no significant difference``
  (``too few seeds`` below 3).
  """
  vals = metrics.get(claim.method, {})
  key = f"delta_{claim.metric}"
  if key not in vals:
    return {"claim": claim.text, "paper": claim.paper, "ours": "not measured", "verdict": "not measured"}
  d, s = vals[key], vals[f"{key}_std"]
  ours = (
    f"{claim.method} {fmt(vals[claim.metric])} vs {claim.baseline} "
    f"{fmt(metrics[claim.baseline][claim.metric])}; paired Δ {d:+.3g} ± {s:.2g} (n={n})"
  )
  if n < 3:
    verdict = "too few seeds"
  elif abs(d) > 2 * s / math.sqrt(n):
    verdict = "reproduces" if (d < 0) == claim.lower_is_better else "opposite direction"
  else:
    verdict = "no significant difference"
  return {"claim": claim.text, "paper": claim.paper, "ours": ours, "verdict": verdict}


def write_claims(
  exp_dir: str | os.PathLike, metrics: Mapping[str, Mapping[str, float]], claims: Sequence[Claim], n: int
) -> list[dict[str, str]]:
  """Checks ``claims`` on ``metrics``; writes ``claims.json``; returns the rows."""
  rows = [claim_verdict(metrics, c, n) for c in claims]
  (Path(exp_dir) / "claims.json").write_text(json.dumps(rows, indent=2) + "\n")
  return rows


def claims_table(rows: Sequence[Mapping[str, str]]) -> str:
  """A markdown table: the paper's claim, its figure, ours, the verdict."""
  lines = ["| the paper's claim | the paper's figure | ours | verdict |", "|---|---|---|---|"]
  lines += [f"| {r['claim']} | {r['paper']} | {r['ours']} | **{r['verdict']}** |" for r in rows]
  return "\n".join(lines)


def replace(config: ml_collections.ConfigDict, **updates: Any) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``updates`` applied; a field it does not have raises."""
  unknown = set(updates) - set(config.keys())
  if unknown:
    raise KeyError(f"unknown config fields: {sorted(unknown)}")
  new = ml_collections.ConfigDict(config.to_dict())
  with new.unlocked():
    for key, value in updates.items():
      new[key] = value
  return new


def config_json(config: Mapping[str, Any] | ml_collections.ConfigDict) -> dict:
  """A JSON-safe plain copy of a config (tuples become lists)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  return json.loads(json.dumps(dict(config), default=_json_default))


def config_getter(experiment: str) -> Callable[[str], ml_collections.ConfigDict]:
  """``get_config(name)`` over the modules of ``experiments/<experiment>/configs/``."""

  def get_config(name: str = "quick") -> ml_collections.ConfigDict:
    """The named configuration (a module of ``configs/``: ``smoke``, ``quick``, ``full``, ...)."""
    from experiments import cli  # pylint: disable=import-outside-toplevel

    return cli.parse_config(experiment, [f"--config={name}"])

  return get_config


def experiment_dir(workdir: str | os.PathLike) -> Path:
  """``workdir`` as a Path (created, with its ``runs/`` folder)."""
  path = Path(workdir)
  (path / "runs").mkdir(parents=True, exist_ok=True)
  return path


def shared_path(path: str | os.PathLike) -> Path:
  """``path`` without the per-process scratch component (``.process<k>``).

  In a multi-process run only process 0 writes results to ``--out``; the others
  write to ``<out>/.process<k>``. Checkpoints are different: orbax's save is
  collective, so every process must save to the SAME directory.
  """
  parts = [p for p in Path(path).parts if not (p.startswith(".process") and p[8:].isdigit())]
  return Path(*parts)


def run_logger(exp_dir: Path, method: str, seed: int) -> jaxweights.JsonlLogger:
  """A fresh logger at ``runs/<method>_seed<seed>.jsonl`` (an old file is removed)."""
  path = run_log_path(exp_dir, method, seed)
  path.unlink(missing_ok=True)
  # Every process logs: each has its own workdir (``.process<k>`` for k > 0), and
  # each reads its own log back to compute the run's metrics.
  return jaxweights.JsonlLogger(path, all_processes=True)


def run_log_path(exp_dir: Path, method: str, seed: int) -> Path:
  return Path(exp_dir) / "runs" / f"{method}_seed{seed}.jsonl"


def seeds_loop(
  methods: Sequence[str],
  seeds: Sequence[int],
  run_one: Callable[[str, int], dict[str, float]],
  *,
  log: Callable[[str], None] = print,
) -> dict[str, list[dict[str, float]]]:
  """Runs ``run_one(method, seed)`` for every pair, methods outermost.

  Methods outermost lets ``run_one`` reuse one compiled step across seeds.

  Returns:
    ``{method: [metrics of seed 0, metrics of seed 1, ...]}``.
  """
  results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
  for method in methods:
    for seed in seeds:
      t0 = time.perf_counter()
      metrics = run_one(method, seed)
      results[method].append(metrics)
      shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
      log(f"  {method:>10s} seed {seed}: {shown} ({time.perf_counter() - t0:.1f}s)")
  return results


def mean_std(values: Iterable[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (``ddof=1``; 0 for one value)."""
  v = np.asarray(list(values), dtype=np.float64)
  if v.size == 0:
    raise ValueError("mean_std of no values.")
  std = float(v.std(ddof=1)) if v.size > 1 else 0.0
  return float(v.mean()), std


def aggregate(per_seed: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, dict[str, float]]:
  """``{method: [per-seed metrics]}`` -> ``{method: {m: mean, m_std: std}}``."""
  out: dict[str, dict[str, float]] = {}
  for method, runs in per_seed.items():
    keys = list(runs[0])
    out[method] = {}
    for key in keys:
      mean, std = mean_std(run[key] for run in runs)
      out[method][key] = mean
      out[method][f"{key}_std"] = std
  return out


def add_paired_deltas(
  per_seed: dict[str, list[dict[str, float]]],
  metric: str,
  baseline: str = "uniform",
) -> None:
  """Adds ``delta_<metric>`` = method - baseline, per seed (paired by seed).

  Seeds share the data and the initialisation across methods, so the per-seed
  difference removes that shared variance; its std is the honest error bar of
  "does this method beat the baseline".
  """
  if baseline not in per_seed:
    return
  base = [run[metric] for run in per_seed[baseline]]
  for runs in per_seed.values():
    for run, b in zip(runs, base):
      run[f"delta_{metric}"] = run[metric] - b


def add_paired_deltas_vs(per_seed: dict[str, list[dict[str, float]]], metric: str, baseline: str) -> None:
  """Adds ``<metric>_vs_<baseline>`` (a copy of ``metric``) and its paired delta to every run.

  :func:`add_paired_deltas` names the delta ``delta_<metric>`` whatever the
  baseline, so a second baseline needs its own metric name; a
  :class:`Claim` against that baseline uses ``metric=f"{metric}_vs_{baseline}"``.
  Methods without ``metric`` (or a missing baseline) are skipped.
  """
  if baseline not in per_seed or metric not in per_seed[baseline][0]:
    return
  alias = f"{metric}_vs_{baseline}"
  base = [run[metric] for run in per_seed[baseline]]
  for runs in per_seed.values():
    if metric not in runs[0]:
      continue
    for run, b in zip(runs, base):
      run[alias] = run[metric]
      run[f"delta_{alias}"] = run[metric] - b


def write_summary(
  exp_dir: str | os.PathLike,
  experiment: str,
  config: Mapping[str, Any],
  metrics: Mapping[str, Mapping[str, float]],
) -> Path:
  """Writes ``summary.json`` = ``{"experiment", "config", "metrics"}``."""
  for method, values in metrics.items():
    for key, value in values.items():
      if not isinstance(value, (int, float)):
        raise TypeError(f"metric {method}/{key} is {type(value).__name__}, not a number.")
  payload = {
    "experiment": experiment,
    "config": config_json(config),
    "metrics": {m: {k: float(v) for k, v in vals.items()} for m, vals in metrics.items()},
  }
  path = Path(exp_dir) / "summary.json"
  path.write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n")
  return path


def read_summary(path: str | os.PathLike) -> dict:
  return json.loads(Path(path).read_text())


def fmt(mean: float, std: float | None = None, digits: int = 4) -> str:
  """``mean ± std`` with ``digits`` significant digits."""
  if mean is None or (isinstance(mean, float) and math.isnan(mean)):
    return "n/a"
  text = f"{mean:.{digits}g}"
  if std is not None:
    text += f" ± {std:.2g}"
  return text


def markdown_table(
  metrics: Mapping[str, Mapping[str, float]],
  columns: Sequence[tuple[str, str]],
  *,
  digits: int = 4,
) -> str:
  """A markdown table: one row per method, ``columns = [(metric, header)]``."""
  lines = [
    "| method | " + " | ".join(h for _, h in columns) + " |",
    "|---|" + "---|" * len(columns),
  ]
  for method, values in metrics.items():
    cells = []
    for key, _ in columns:
      if key in values:
        cells.append(fmt(values[key], values.get(f"{key}_std"), digits))
      else:
        cells.append("—")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_table(
  exp_dir: str | os.PathLike,
  title: str,
  metrics: Mapping[str, Mapping[str, float]] | None = None,
  columns: Sequence[tuple[str, str]] = (),
  *,
  intro: str = "",
  blocks: Sequence[str] = (),
  notes: Sequence[str] = (),
  digits: int = 4,
) -> Path:
  """Writes ``table.md``: title, intro, the metrics table, extra blocks, notes.

  Args:
    exp_dir: the experiment's output folder.
    title: the level-2 heading.
    metrics: ``{method: {metric: mean, metric_std: std}}`` (None: no main table).
    columns: ``[(metric, header)]`` of the main table.
    intro: a paragraph above the table.
    blocks: further markdown lines (e.g. sub-tables of ablations).
    notes: bullet points at the end.
    digits: significant digits.
  """
  parts = [f"## {title}", ""]
  if intro:
    parts += [intro, ""]
  if metrics:
    parts += [markdown_table(metrics, columns, digits=digits), ""]
  parts += list(blocks)
  if notes:
    parts += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
  path = Path(exp_dir) / "table.md"
  path.write_text("\n".join(parts))
  return path


def dedupe_by_step(records: Sequence[Mapping[str, Any]]) -> list[dict]:
  """Keeps the last record per (step, set of keys), in first-seen order.

  A run resumed from a checkpoint re-logs the steps after that checkpoint; the
  later records are the ones the final state descends from.
  """
  latest: dict[tuple, dict] = {}
  for rec in records:
    kind = tuple(sorted(k for k in rec if k not in ("step", "time_s")))
    latest.pop((rec["step"], kind), None)
    latest[(rec["step"], kind)] = dict(rec)
  return sorted(latest.values(), key=lambda r: r["step"])


def curve(records: Sequence[Mapping[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
  """``(steps, values)`` of the records that carry ``key`` (last per step wins)."""
  by_step = {r["step"]: r[key] for r in records if key in r}
  if not by_step:
    return np.zeros(0), np.zeros(0)
  steps = sorted(by_step)
  return np.asarray(steps, np.float64), np.asarray([by_step[s] for s in steps], np.float64)


def read_curves(
  exp_dir: Path, methods: Sequence[str], seeds: Sequence[int], key: str
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
  """``{method: [(steps, values) per seed]}`` from the runs' JSON-lines logs."""
  return {m: [curve(jaxweights.read_jsonl(run_log_path(exp_dir, m, s)), key) for s in seeds] for m in methods}


def plot_curves(
  path: str | os.PathLike,
  curves: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
  *,
  ylabel: str,
  title: str,
  xlabel: str = "step",
  logy: bool = False,
  hline: tuple[float, str] | None = None,
) -> Path:
  """Mean line and a +-std band per method over seeds; saved as a PNG.

  Seeds of one method are put on the first seed's step grid (linear
  interpolation; the grids are identical in practice).
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
  for method, runs in curves.items():
    runs = [(s, v) for s, v in runs if len(s)]
    if not runs:
      continue
    grid = runs[0][0]
    ys = np.stack([np.interp(grid, s, v) for s, v in runs])
    mean = ys.mean(axis=0)
    std = ys.std(axis=0, ddof=1) if len(ys) > 1 else np.zeros_like(mean)
    (line,) = ax.plot(grid, mean, label=f"{method} (n={len(ys)})", lw=1.5)
    lower = mean - std
    if logy:
      lower = np.maximum(lower, mean * 1e-3)
    ax.fill_between(grid, lower, mean + std, color=line.get_color(), alpha=0.2, lw=0)
  if hline is not None:
    ax.axhline(hline[0], color="gray", ls="--", lw=1, label=hline[1])
  if logy:
    ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path = Path(path)
  fig.savefig(path)
  plt.close(fig)
  return path


def finish(exp_dir, experiment: str, config, metrics, runtime: float, log=print, **facts) -> dict:
  """Writes ``summary.json`` (config + ``facts``), logs, and returns the summary read back."""
  summary_config = config_json(config)
  summary_config.update(facts)
  write_summary(exp_dir, experiment, summary_config, metrics)
  log(f"[{experiment}] wrote {exp_dir} in {runtime:.1f}s")
  return read_summary(Path(exp_dir) / "summary.json")


def paired_verdicts(
  metrics,
  metric: str,
  n: int,
  *,
  baseline: str = "uniform",
  words=("better", "worse"),
  spec: str = "+.4g",
  std_spec: str = ".2g",
) -> list[str]:
  """``"method delta ± std (word)"`` per method for the paired ``delta_<metric>``.

  The rule every experiment uses: a difference counts only when
  ``|mean| > 2 standard errors`` (std / sqrt(n)) with at least 3 seeds; negative
  deltas are the first of ``words``.
  """
  parts = []
  for method, vals in metrics.items():
    if method == baseline or f"delta_{metric}" not in vals:
      continue
    d, s = vals[f"delta_{metric}"], vals[f"delta_{metric}_std"]
    if n < 3:
      word = "too few seeds to tell"
    elif abs(d) > 2 * s / math.sqrt(n):
      word = words[0] if d < 0 else words[1]
    else:
      word = "no clear difference"
    parts.append(f"{method} {d:{spec}} ± {s:{std_spec}} ({word})")
  return parts


def _json_default(obj):
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (np.floating,)):
    return float(obj)
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, (set, frozenset)):
    return sorted(obj)
  return repr(obj)
