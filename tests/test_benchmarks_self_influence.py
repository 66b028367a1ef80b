"""Self-influence benchmark cases and cost curves run in quick mode with sane output."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import cost_curves
from benchmarks import self_influence as si
from benchmarks.__main__ import main
from benchmarks.harness import PLAIN

RATIOS = ("time_ratio_vs_plain", "peak_memory_ratio_vs_plain", "plain_step_ms", "step_ms")


def _run(out, *extra):
  returned = main(
    ["--quick", "--only", "self_influence", *extra, "--json", str(out / "b.json"), "--md", str(out / "b.md")]
  )
  assert json.loads((out / "b.json").read_text()) == json.loads(json.dumps(returned))
  return returned


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
  # The fast suite measures the FFN cases; the decoder cases (TransformerLM and
  # Llama) compile ~10 programs each even when tiny, and are checked in the slow
  # suite (test_decoder_rows_ghost_chunked_and_jax_privacy_peer).
  return _run(tmp_path_factory.mktemp("bench_si"), "--skip", "_l")


def _case_rows(rows, name):
  return [r for r in rows if r["benchmark"] == name]


def test_schema_and_finiteness(rows):
  names = {c.name for c in si.CASES if "_l" not in c.name}
  assert {r["benchmark"] for r in rows} == names
  for row in rows:
    for key in RATIOS:
      assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, (key, row)
    assert isinstance(row["peak_memory_bytes"], int) and row["peak_memory_bytes"] > 0
    assert row["repeats"] == 3
    assert row["meets_target"] in (True, False, None)
  for name in names:
    methods = [r["method"] for r in _case_rows(rows, name)]
    assert methods[0] == PLAIN and len(set(methods)) == len(methods) > 1
    assert _case_rows(rows, name)[0]["time_ratio_vs_plain"] == 1.0


def _check_norms_rows(rows, name):
  by = {r["method"]: r for r in _case_rows(rows, name)}
  assert len(by) == 4
  assert any(m.startswith("vmap(grad)") and "chunk" in m for m in by)
  assert any(m.startswith("jvp") and f"{si.JVP_PROBES} probes" in m for m in by)
  for m, r in by.items():
    if m == si.GHOST:
      assert (r["target_time_ratio"], r["target_memory_ratio"]) == (1.5, 1.2)
      assert isinstance(r["meets_target"], bool)
    else:
      assert r["target_time_ratio"] is None and r["meets_target"] is None


def _check_presence_rows(rows, name):
  by = {r["method"]: r for r in _case_rows(rows, name)}
  assert set(by) == {PLAIN, si.PRESENCE, si.PRESENCE_MB, si.PRESENCE_2BWD}
  for m in (si.PRESENCE, si.PRESENCE_MB):
    assert by[m]["target_time_ratio"] == 1.3 and isinstance(by[m]["meets_target"], bool)
  assert by[si.PRESENCE_2BWD]["meets_target"] is None


def test_norms_rows_have_targets_only_on_ghost(rows):
  _check_norms_rows(rows, "self_influence/norms_ffn")


def test_presence_rows(rows):
  _check_presence_rows(rows, "self_influence/presence_ffn")


@pytest.mark.slow
def test_decoder_rows_ghost_chunked_and_jax_privacy_peer(tmp_path):
  rows = _run(tmp_path, "--skip", "_ffn")
  _check_norms_rows(rows, "self_influence/norms_lm")
  _check_presence_rows(rows, "self_influence/presence_lm")
  by = {r["method"]: r for r in _case_rows(rows, "self_influence/norms_llama")}
  assert {si.GHOST, si.GHOST_CHUNKED} <= set(by)
  for m in (si.GHOST, si.GHOST_CHUNKED):
    assert (by[m]["target_time_ratio"], by[m]["target_memory_ratio"]) == (1.3, 1.2)
  assert (si.JAX_PRIVACY in by) == si.jax_privacy_available()
  presence_rows = {r["method"] for r in _case_rows(rows, "self_influence/presence_llama")}
  assert {si.PRESENCE, si.PRESENCE_CHUNKED} <= presence_rows


def test_peer_row_or_clean_skip(rows, capsys):
  peer = _case_rows(rows, si.PEER_CASE)
  if si.peers_available():
    assert [r["method"] for r in peer] == [PLAIN, si.OPACUS_GHOST]
    opacus = peer[1]
    assert math.isfinite(opacus["opacus_ghost_vs_jaxweights_ghost_time"])
    assert opacus["max_rel_diff_vs_jaxweights_sq_norms"] < 1e-3  # same squared norms
    assert "jaxweights ghost" in opacus["note"]
  else:
    assert not peer
  cases = si._registry(with_peers=False)  # pylint: disable=protected-access
  assert si.PEER_CASE not in {c.name for c in cases}
  assert "left out" in capsys.readouterr().err


@pytest.mark.slow
def test_cost_curves_quick(tmp_path):
  records = cost_curves.main(["--quick", "--out", str(tmp_path)])
  saved = json.loads((tmp_path / "cost_curves.json").read_text())
  assert saved == json.loads(json.dumps(records))
  q = cost_curves.QUICK
  assert len(records) == len(cost_curves.METHODS) * (len(q.batch_sizes) + len(q.seq_lens))
  for r in records:
    assert r["method"] in cost_curves.METHODS and r["sweep"] in ("batch", "seq")
    for key in ("time_ms", "time_ratio_vs_plain", "peak_memory_ratio_vs_plain"):
      assert math.isfinite(r[key]) and r[key] > 0, (key, r)
  assert {r["batch"] for r in records if r["sweep"] == "batch"} == set(q.batch_sizes)
  assert {r["seq"] for r in records if r["sweep"] == "seq"} == set(q.seq_lens)
  assert (tmp_path / "cost_curves.png").stat().st_size > 1000
  assert (tmp_path / "cost_curves.md").read_text().count("\n") == 2 + len(records) // 4
