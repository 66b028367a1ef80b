"""Per-family cost curves: the quick sweep produces finite ratios and a plot."""

import json

import numpy as np
import pytest

from benchmarks import family_curves


@pytest.mark.slow
def test_quick_family_curves(tmp_path):
  records = family_curves.main(["--quick", "--out", str(tmp_path)])
  assert {r["family"] for r in records} == set(family_curves.FAMILIES)
  assert {r["sweep"] for r in records} == {"batch", "model"}
  for r in records:
    assert np.isfinite(r["time_ratio"]) and r["time_ratio"] > 0
    assert r["memory_ratio"] is None or r["memory_ratio"] > 0
  saved = json.loads((tmp_path / "family_curves.json").read_text())
  assert len(saved["records"]) == len(records)
  assert (tmp_path / "family_curves.png").stat().st_size > 1000
