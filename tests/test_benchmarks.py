"""The benchmark harness runs end to end in quick mode and writes sane rows."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import cases as registry
from benchmarks.__main__ import main
from benchmarks.harness import PLAIN, Case, Settings, markdown_table

REQUIRED = {
  "benchmark": str,
  "method": str,
  "time_ratio_vs_plain": float,
  "peak_memory_ratio_vs_plain": float,
  "plain_step_ms": float,
  "step_ms": float,
  "device": str,
  "model": str,
  "batch": str,
  "repeats": int,
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  json_path, md_path = out / "bench.json", out / "bench.md"
  returned = main(["--quick", "--only", "loss_based", "--json", str(json_path), "--md", str(md_path)])
  return returned, json_path, md_path


def test_json_schema_and_ratios(quick_run):
  returned, json_path, _ = quick_run
  rows = json.loads(json_path.read_text())
  assert rows == json.loads(json.dumps(returned))
  assert rows, "no rows written"
  for row in rows:
    for key, typ in REQUIRED.items():
      assert isinstance(row[key], typ), (key, row)
    for key in ("time_ratio_vs_plain", "peak_memory_ratio_vs_plain", "plain_step_ms", "step_ms"):
      assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    assert row["repeats"] == 3
    assert "target_time_ratio" in row and "target_memory_ratio" in row
    assert row["meets_target"] in (True, False, None)


def test_every_case_has_plain_and_weighted_rows(quick_run):
  rows = json.loads(quick_run[1].read_text())
  names = [c.name for c in registry.select(registry.all_cases(), "loss_based")]
  assert sorted({r["benchmark"] for r in rows}) == sorted(names)
  for name in names:
    methods = [r["method"] for r in rows if r["benchmark"] == name]
    assert methods[0] == PLAIN and methods.count(PLAIN) == 1
    assert len(methods) > 1 and len(set(methods)) == len(methods)
    plain = next(r for r in rows if r["benchmark"] == name and r["method"] == PLAIN)
    assert plain["time_ratio_vs_plain"] == 1.0
    assert plain["peak_memory_ratio_vs_plain"] == 1.0
    for r in rows:
      if r["benchmark"] == name:
        assert r["plain_step_ms"] == plain["step_ms"]


def test_lm_case_has_the_issue_targets(quick_run):
  rows = json.loads(quick_run[1].read_text())
  lm = [r for r in rows if r["benchmark"] == "loss_based/lm_step"]
  assert {r["method"] for r in lm} == {PLAIN, "linupper", "quadratic", "extremes"}
  for r in lm:
    assert r["target_time_ratio"] == 1.03 and r["target_memory_ratio"] == 1.01
    assert isinstance(r["meets_target"], bool)


def test_markdown_has_one_line_per_row(quick_run):
  returned, _, md_path = quick_run
  lines = md_path.read_text().strip().splitlines()
  assert len(lines) == 2 + len(returned)
  assert md_path.read_text() == markdown_table(returned)
  assert all(line.startswith("|") and line.endswith("|") for line in lines)


def test_select_and_bad_settings():
  cases = registry.all_cases()
  assert [c.name for c in registry.select(cases, "loss_based/mlp")] == ["loss_based/mlp_step"]
  assert registry.select(cases, None) == cases
  assert registry.select(cases, "no-such-case") == []
  with pytest.raises(ValueError, match="repeats"):
    Settings(repeats=0)
  assert Case("x", lambda quick: None).target_time_ratio is None


@pytest.mark.slow
def test_fsdp_rows_shrink_per_device_memory(tmp_path):
  # 8 fake devices (conftest): the FSDP-sharded state takes less memory per device
  # than the replicated one, and the weighted step on it runs.
  rows = main(
    ["--quick", "--only", "scale/", "--json", str(tmp_path / "b.json"), "--md", str(tmp_path / "b.md")]
  )
  by = {(r["benchmark"], r["method"]): r for r in rows}
  fsdp = by[("scale/fsdp_memory", "plain, state FSDP-sharded")]
  assert "mesh 1x8x1" in fsdp["model"]
  assert fsdp["peak_memory_ratio_vs_plain"] < 0.6
  weighted = by[("scale/fsdp_linupper", "linupper")]
  assert math.isfinite(weighted["time_ratio_vs_plain"]) and weighted["peak_memory_ratio_vs_plain"] > 0
