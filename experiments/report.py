"""``python -m experiments.report [--results results]``: assembles ``REPORT.md``.

For every ``<results>/*/summary.json`` (registered experiments first, in registry
order, then any others alphabetically) the report gets the experiment's
``table.md``, its PNG plots (relative links, so the folder can be moved or
zipped), and the config that produced it. The header has the date, the git
commit when available, and the config names used. When ``<results>/cost_curves/``
holds the per-family cost curves (:mod:`benchmarks.family_curves`, written by
:mod:`experiments.run_all`), a "Cost curves" section follows with their table,
their plot and how to regenerate them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
from pathlib import Path

from experiments import EXPERIMENTS, common

CURVES_DIR = "cost_curves"  # <results>/cost_curves/family_curves.{json,md,png}


def _git_commit() -> str | None:
  try:
    out = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"],
      capture_output=True,
      text=True,
      timeout=5,
      cwd=Path(__file__).resolve().parent,
    )
  except (OSError, subprocess.SubprocessError):
    return None
  if out.returncode != 0:
    return None
  return out.stdout.strip() or None


def _order(names: list[str]) -> list[str]:
  known = [n for n in EXPERIMENTS if n in names]
  return known + sorted(n for n in names if n not in EXPERIMENTS)


def build_report(results: str | Path, *, now: datetime.datetime | None = None) -> str:
  """The markdown text of the report over ``results`` (no files are written)."""
  results = Path(results)
  summaries = {p.parent.name: common.read_summary(p) for p in sorted(results.glob("*/summary.json"))}
  now = now or datetime.datetime.now()
  configs = sorted({str(s.get("config", {}).get("name", "?")) for s in summaries.values()})
  lines = [
    "# jaxweights experiment report",
    "",
    f"- Date: {now:%Y-%m-%d %H:%M}",
    f"- Config(s): {', '.join(f'`{c}`' for c in configs) or 'none'}",
  ]
  commit = _git_commit()
  if commit:
    lines.append(f"- Code: git commit `{commit}`")
  lines += [f"- Experiments: {', '.join(_order(list(summaries))) or 'none found'}", ""]
  if not summaries:
    lines += [f"No `*/summary.json` under `{results}`.", ""]
  lines += verdicts_section(results, _order(list(summaries)))
  for name in _order(list(summaries)):
    summary = summaries[name]
    exp_dir = results / name
    config = summary.get("config", {})
    lines += [f"# {summary.get('experiment', name)}", ""]
    runtime = config.get("runtime_s")
    lines += [
      f"Config `{config.get('name', '?')}`"
      + (f", runtime {runtime:.0f}s" if isinstance(runtime, (int, float)) else "")
      + f"; files in `{name}/`.",
      "",
    ]
    claims = _read_claims(exp_dir)
    if claims:
      lines += ["## Paper vs ours", "", common.claims_table(claims), ""]
    table = exp_dir / "table.md"
    if table.exists():
      # Demote the table's headings by one level under the experiment's heading.
      text = table.read_text().rstrip()
      lines += [_demote(text), ""]
    else:
      lines += [common.markdown_table(summary["metrics"], _columns(summary["metrics"])), ""]
    for png in sorted(exp_dir.glob("*.png")):
      lines += [f"![{name}: {png.stem}]({name}/{png.name})", ""]
    lines += [
      "<details><summary>config</summary>",
      "",
      "```json",
      json.dumps(config, indent=1, sort_keys=True),
      "```",
      "",
      "</details>",
      "",
    ]
  lines += cost_curves_section(results)
  return "\n".join(lines)


def _read_claims(exp_dir: Path) -> list[dict]:
  path = exp_dir / "claims.json"
  return json.loads(path.read_text()) if path.exists() else []


def verdicts_section(results: str | Path, names: list[str]) -> list[str]:
  """The report's "Paper vs ours" overview: every experiment's claims and verdicts.

  Each experiment writes ``claims.json`` (:func:`experiments.common.write_claims`):
  the directions its paper reports, checked against our paired deltas in the
  paper's own setting. Experiments without one are listed as such.
  """
  lines = [
    "# Paper vs ours: verdicts",
    "",
    "Each row is a direction the paper reports, checked in the paper's setting at "
    "our scale with paired per-seed deltas (a direction counts when |mean Δ| > 2 "
    "standard errors over >= 3 seeds). Generated from the runs below.",
    "",
    "| experiment | the paper's claim | the paper's figure | ours | verdict |",
    "|---|---|---|---|---|",
  ]
  missing = []
  for name in names:
    rows = _read_claims(Path(results) / name)
    if not rows:
      missing.append(name)
    lines += [f"| {name} | {r['claim']} | {r['paper']} | {r['ours']} | **{r['verdict']}** |" for r in rows]
  lines.append("")
  if missing:
    lines += [f"No claims checked by: {', '.join(missing)}.", ""]
  return lines


def cost_curves_section(results: str | Path) -> list[str]:
  """The report's "Cost curves" lines, or none when ``<results>/cost_curves/`` has no table."""
  curves = Path(results) / CURVES_DIR
  table = curves / "family_curves.md"
  if not table.exists():
    return []
  sizes = "demo"
  meta_path = curves / "family_curves.json"
  if meta_path.exists():
    try:
      sizes = json.loads(meta_path.read_text()).get("meta", {}).get("sizes") or sizes
    except (json.JSONDecodeError, AttributeError):
      pass
  lines = [
    "# Cost curves",
    "",
    "Per family, the compiled weighted step against the plain step of the same model "
    "and batch: step time and XLA peak memory vs batch size (fixed model) and vs model "
    "size (fixed batch), with the ratio to the plain step at each point "
    f"(`{sizes}` sizes; files in `{CURVES_DIR}/`).",
    "",
    _demote(table.read_text().rstrip()),
    "",
  ]
  png = curves / "family_curves.png"
  if png.exists():
    lines += [f"![cost curves (log-log)]({CURVES_DIR}/{png.name})", ""]
  out = Path(results).as_posix()
  lines += [
    f"Regenerate: `python -m benchmarks.family_curves --sizes {sizes} --out "
    f"{out}/{CURVES_DIR}` then `python -m experiments.report --results {out}`; or "
    "with the experiments, `python -m experiments.run_all` (`make demo`: `demo` sizes; "
    "`--curves full` for the full sweep, `--no-curves` to skip them).",
    "",
  ]
  return lines


def _demote(markdown: str) -> str:
  return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def _columns(metrics: dict) -> list[tuple[str, str]]:
  keys = []
  for values in metrics.values():
    keys += [k for k in values if not k.endswith("_std") and k not in keys]
  return [(k, k) for k in keys]


def write_report(results: str | Path = common.RESULTS) -> Path:
  """Writes ``<results>/REPORT.md`` and returns its path."""
  results = Path(results)
  results.mkdir(parents=True, exist_ok=True)
  path = results / "REPORT.md"
  path.write_text(build_report(results))
  return path


def main(argv=None) -> Path:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--results", default=common.RESULTS)
  args = parser.parse_args(argv)
  path = write_report(args.results)
  print(f"wrote {path}")
  return path


if __name__ == "__main__":
  main()
