"""``python -m experiments.run_all [--config quick] [--out results] [--only NAME ...] [--no-curves]``.

Runs every registered experiment (:data:`experiments.EXPERIMENTS`) one after the
other with the named config, then the per-family cost curves
(:mod:`benchmarks.family_curves`: compiled step time and peak memory of each
family's weighted step vs the plain step, vs batch size and vs model size) into
``<out>/cost_curves/``, then assembles ``<out>/REPORT.md`` (which shows the
curves when those files exist).

The curves' size set follows the config (:data:`CURVE_SIZES`: ``smoke`` ->
``quick``, ``quick`` -> ``demo``, a few minutes on a 2-core CPU, ``full`` ->
``full``) unless ``--curves`` names one; ``--no-curves`` skips them, and so does
``--only`` unless ``--curves`` is given.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from experiments import EXPERIMENTS, common, load, report

CURVE_SIZES = {"smoke": "quick", "quick": "demo", "full": "full"}
CURVES_DIR = report.CURVES_DIR


def run_curves(out: str | Path, sizes: str) -> float:
  """Writes the family cost curves at ``sizes`` into ``<out>/cost_curves/``; returns seconds."""
  from benchmarks import family_curves  # pylint: disable=import-outside-toplevel

  t0 = time.perf_counter()
  family_curves.main(["--sizes", sizes, "--out", str(Path(out) / CURVES_DIR)])
  return time.perf_counter() - t0


def main(argv=None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--config", default="quick", help="the config every experiment runs (smoke, quick, full)"
  )
  parser.add_argument("--out", default=common.RESULTS)
  parser.add_argument(
    "--only",
    nargs="+",
    choices=EXPERIMENTS,
    default=None,
    help="run only these experiments (default: all; skips the cost curves unless --curves is given)",
  )
  curves = parser.add_mutually_exclusive_group()
  curves.add_argument(
    "--curves",
    choices=sorted(set(CURVE_SIZES.values())),
    default=None,
    help="size set of the cost curves (default: from the config: "
    + ", ".join(f"{c} -> {s}" for c, s in CURVE_SIZES.items())
    + ")",
  )
  curves.add_argument("--no-curves", action="store_true", help="skip the cost curves")
  args = parser.parse_args(argv)
  runtimes: dict[str, float] = {}
  for name in args.only or EXPERIMENTS:
    module = load(name)
    t0 = time.perf_counter()
    module.train_and_evaluate(module.get_config(args.config), Path(args.out) / name)
    runtimes[name] = time.perf_counter() - t0
  curve_sizes = None
  if not args.no_curves and (args.curves or not args.only):
    curve_sizes = args.curves or CURVE_SIZES[args.config]
    curve_s = run_curves(args.out, curve_sizes)
  path = report.write_report(args.out)
  for name, seconds in runtimes.items():
    print(f"{name}: {seconds:.1f}s")
  if curve_sizes:
    print(f"cost curves ({curve_sizes} sizes): {curve_s:.1f}s")
  print(f"report: {path}")
  return runtimes


if __name__ == "__main__":
  main()
