"""The registry: every family's benchmark cases.

A family adds rows by writing ``benchmarks/<family>.py`` with a module-level
``CASES: list[benchmarks.harness.Case]`` and appending the module's name to
:data:`FAMILY_MODULES`.
"""

from __future__ import annotations

import importlib

from benchmarks.harness import Case

FAMILY_MODULES: tuple[str, ...] = (
  "benchmarks.loss_based",
  "benchmarks.self_influence",
  "benchmarks.noisy_labels",
  "benchmarks.tiw_dsm",
  "benchmarks.q_probe",
  "benchmarks.scale",
)


def all_cases() -> list[Case]:
  """Every registered case, in registry order; names must be unique."""
  cases = [c for name in FAMILY_MODULES for c in importlib.import_module(name).CASES]
  names = [c.name for c in cases]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"duplicate benchmark case names: {duplicates}.")
  return cases


def select(cases: list[Case], only: str | None) -> list[Case]:
  """The cases whose name contains ``only`` (all of them when None)."""
  return list(cases) if not only else [c for c in cases if only in c.name]
