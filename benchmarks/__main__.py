"""Command line: ``python -m benchmarks [--json PATH] [--md PATH] [--quick] ...``.

Runs every registered case (see :mod:`benchmarks.cases`), writes the rows as a
JSON list and as a markdown table, and prints the table.

Example:
  python -m benchmarks --only lm_step --repeats 9
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

from benchmarks import cases as registry
from benchmarks.harness import Settings, markdown_table, measure_case

DEFAULT_JSON = "bench_results/bench.json"
DEFAULT_MD = "bench_results/bench.md"
FULL_SETTINGS = Settings(repeats=7, warmup=2, min_repeat_s=0.25)
QUICK_SETTINGS = Settings(repeats=3, warmup=1, min_repeat_s=0.0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks",
    description="Weighted vs plain train-step time and peak memory.",
  )
  parser.add_argument("--json", default=DEFAULT_JSON, help=f"JSON rows (default {DEFAULT_JSON})")
  parser.add_argument("--md", default=DEFAULT_MD, help=f"markdown table (default {DEFAULT_MD})")
  parser.add_argument(
    "--quick",
    action="store_true",
    help="tiny models and 3 repeats (seconds; for tests)",
  )
  parser.add_argument("--only", default=None, help="run only cases whose name contains SUBSTR")
  parser.add_argument("--skip", default=None, help="leave out cases whose name contains SUBSTR")
  parser.add_argument("--repeats", type=int, default=None, help="timed repeats per step")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  """Runs the benchmarks; returns the rows it wrote."""
  args = parse_args(argv)
  settings = QUICK_SETTINGS if args.quick else FULL_SETTINGS
  if args.repeats is not None:
    settings = Settings(repeats=args.repeats, warmup=settings.warmup, min_repeat_s=settings.min_repeat_s)
  selected = registry.select(registry.all_cases(), args.only)
  if args.skip:
    selected = [c for c in selected if args.skip not in c.name]
  if not selected:
    raise SystemExit(f"no benchmark case name contains {args.only!r}.")

  rows: list[dict] = []
  for case in selected:
    print(f"[benchmarks] {case.name} ...", file=sys.stderr, flush=True)
    rows.extend(measure_case(case, settings, quick=args.quick))

  table = markdown_table(rows)
  for path, text in ((args.json, json.dumps(rows, indent=2) + "\n"), (args.md, table)):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  print(table, end="")
  return rows


if __name__ == "__main__":
  main()
