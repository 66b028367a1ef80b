"""Noisy-label (DWS / RENT) benchmark cases run in quick mode with sane rows."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import cases as registry
from benchmarks import noisy_labels as nb
from benchmarks.__main__ import main
from benchmarks.harness import PLAIN

RATIOS = ("time_ratio_vs_plain", "peak_memory_ratio_vs_plain", "plain_step_ms", "step_ms")


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench_noisy")
  returned = main(["--quick", "--only", "noisy", "--json", str(out / "b.json"), "--md", str(out / "b.md")])
  assert json.loads((out / "b.json").read_text()) == json.loads(json.dumps(returned))
  md = (out / "b.md").read_text().strip().splitlines()
  assert len(md) == 2 + len(returned)
  return returned


def test_registered():
  assert "benchmarks.noisy_labels" in registry.FAMILY_MODULES
  names = [c.name for c in registry.all_cases()]
  assert all(c.name in names for c in nb.CASES)
  assert [c.name for c in registry.select(registry.all_cases(), "noisy")] == [c.name for c in nb.CASES]


def test_schema_and_finiteness(rows):
  names = {c.name for c in nb.CASES}
  assert {r["benchmark"] for r in rows} == names
  for row in rows:
    for key in RATIOS:
      assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, (key, row)
    assert isinstance(row["peak_memory_bytes"], int) and row["peak_memory_bytes"] > 0
    assert row["repeats"] == 3
    assert row["meets_target"] in (True, False, None)
    assert row["model"].startswith("MLP ")
  for name in names:
    case_rows = [r for r in rows if r["benchmark"] == name]
    methods = [r["method"] for r in case_rows]
    assert methods == [PLAIN, "rent", "dws", "reweight", "forward"]
    assert case_rows[0]["time_ratio_vs_plain"] == 1.0
    assert case_rows[0]["peak_memory_ratio_vs_plain"] == 1.0


def test_targets_on_rent_and_dws_only(rows):
  for r in rows:
    if r["method"] in ("rent", "dws"):
      assert (r["target_time_ratio"], r["target_memory_ratio"]) == (1.05, 1.05)
      assert isinstance(r["meets_target"], bool)
      assert r["note"]
    elif r["method"] != PLAIN:
      assert r["target_time_ratio"] is None and r["meets_target"] is None
