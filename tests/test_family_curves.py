"""Per-family cost curves: the quick sweep produces finite ratios and a plot."""

import json
import math

import pytest

from benchmarks import family_curves

RECORD_KEYS = {
  "family",
  "sweep",
  "batch",
  "width",
  "plain_ms",
  "weighted_ms",
  "time_ratio",
  "plain_peak_bytes",
  "weighted_peak_bytes",
  "memory_ratio",
  "params",
  "calls_per_repeat",
}


def check_records(records, families, sizes):
  assert [r["family"] for r in records] == [
    f
    for f in families
    for _ in range(
      len(family_curves.family_spec(f, sizes)["batches"]) + len(family_curves.family_spec(f, sizes)["widths"])
    )
  ]
  for fam in families:
    spec = family_curves.family_spec(fam, sizes)
    mine = [r for r in records if r["family"] == fam]
    batch = [r for r in mine if r["sweep"] == "batch"]
    model = [r for r in mine if r["sweep"] == "model"]
    assert [r["batch"] for r in batch] == list(spec["batches"])
    assert {r["width"] for r in batch} == {spec["width_at"]}
    assert [r["width"] for r in model] == list(spec["widths"])
    assert {r["batch"] for r in model} == {spec["batch_at"]}
    assert len({r["params"] for r in model}) == len(model)  # width changes the model
  for r in records:
    assert set(r) == RECORD_KEYS, r
    for key in ("plain_ms", "weighted_ms", "time_ratio"):
      assert math.isfinite(r[key]) and r[key] > 0, (key, r)
    assert r["memory_ratio"] is None or (math.isfinite(r["memory_ratio"]) and r["memory_ratio"] > 0)
    assert isinstance(r["params"], int) and r["params"] > 0
    assert r["calls_per_repeat"] >= 1


@pytest.mark.slow
def test_quick_family_curves(tmp_path):
  """Every family (TIW-DSM and Q-probe included): both sweeps, finite positive ratios, files."""
  families = list(family_curves.FAMILIES)
  assert {"loss_based", "presence", "rent", "dws", "tiw_dsm", "q_probe"} <= set(families)
  records = family_curves.main(["--quick", "--out", str(tmp_path)])
  check_records(records, families, "quick")
  saved = json.loads((tmp_path / "family_curves.json").read_text())
  assert saved["records"] == json.loads(json.dumps(records))
  assert saved["meta"]["sizes"] == "quick"
  md = (tmp_path / "family_curves.md").read_text()
  for fam in families:
    assert f"| {fam} | batch |" in md and f"| {fam} | model |" in md
  assert "ScoreUNet channels" in md and "embedding dimension" in md
  png = (tmp_path / "family_curves.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


@pytest.mark.parametrize("sizes", family_curves.SIZES)
def test_size_sets(sizes):
  """Every family has both sweeps at every size set, and quick is the smallest."""
  for fam in family_curves.FAMILIES:
    spec = family_curves.family_spec(fam, sizes)
    assert len(spec["batches"]) >= 2 and len(spec["widths"]) >= 2, (fam, sizes)
    assert list(spec["batches"]) == sorted(set(spec["batches"]))
    assert list(spec["widths"]) == sorted(set(spec["widths"]))
    if fam == "tiw_dsm":  # the U-Net's GroupNorms need channels divisible by 8
      assert all(w % 8 == 0 for w in (*spec["widths"], spec["width_at"]))
    quick = family_curves.family_spec(fam, "quick")
    assert max(quick["batches"]) <= max(spec["batches"])
    assert max(quick["widths"]) <= max(spec["widths"])
  with pytest.raises(ValueError):
    family_curves.family_spec("rent", "huge")
