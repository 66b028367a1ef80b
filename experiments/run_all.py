"""``python -m experiments.run_all [--config quick] [--out results] [--only NAME ...]``.

Runs every registered experiment (:data:`experiments.EXPERIMENTS`) one after the
other with the named config, then assembles ``<out>/REPORT.md``.
"""

from __future__ import annotations

import argparse
import time

from experiments import EXPERIMENTS, common, load, report


def main(argv=None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="quick", choices=common.CONFIG_NAMES)
  parser.add_argument("--out", default=common.RESULTS)
  parser.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=None,
                      help="run only these experiments (default: all)")
  args = parser.parse_args(argv)
  runtimes: dict[str, float] = {}
  for name in args.only or EXPERIMENTS:
    module = load(name)
    t0 = time.perf_counter()
    module.run(module.get_config(args.config), args.out)
    runtimes[name] = time.perf_counter() - t0
  path = report.write_report(args.out)
  for name, seconds in runtimes.items():
    print(f"{name}: {seconds:.1f}s")
  print(f"report: {path}")
  return runtimes


if __name__ == "__main__":
  main()
