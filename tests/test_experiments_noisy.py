"""The noisy-digits experiment end to end (smoke config) and its small helpers."""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxweights
from experiments import EXPERIMENTS, common, load, noisy_digits
from experiments.noisy_digits import train as nd
from jaxweights import noisy_labels as nl


def _quiet(*_):
  return None


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("noisy") / nd.EXPERIMENT
  config = noisy_digits.get_config("smoke")
  summary = noisy_digits.train_and_evaluate(config, out, log=_quiet)
  return out, config, summary


def test_registered_and_configs():
  assert "noisy_digits" in EXPERIMENTS
  assert load("noisy_digits") is noisy_digits
  for name in ("smoke", "quick", "full"):
    config = noisy_digits.get_config(name)
    assert config.methods[0] == "ce"
    assert config.num_steps % config.eval_every == 0 and config.warmup_steps % config.eval_every == 0
    nd.check_config(config)
  quick, full = noisy_digits.get_config("quick"), noisy_digits.get_config("full")
  # The paper's setting: its noise columns, the authors' MNIST map, their schedule, estimated T.
  assert tuple(quick.settings) == ("sym20", "sym50", "asym20", "asym40")
  assert tuple(quick.asymmetric_map) == (0, 1, 7, 8, 4, 6, 5, 7, 8, 9)
  assert quick.continue_after_warmup and quick.headline_T == "est"
  assert quick.learning_rate == 1e-3 and quick.batch_size == 128 and quick.dws_alpha == 10.0
  assert len(quick.seeds) >= 3 and len(full.seeds) >= 5 and full.num_steps > quick.num_steps
  # Our variants are robustness studies, never the headline.
  assert not full.robustness["from_scratch"]["continue_after_warmup"]
  with pytest.raises(ValueError):
    noisy_digits.get_config("nope")


def test_summary_schema_and_finite(smoke):
  exp_dir, config, summary = smoke
  assert json.loads((exp_dir / "summary.json").read_text()) == summary
  assert set(summary) == {"experiment", "config", "metrics"}
  assert summary["experiment"] == "noisy_digits" and summary["config"]["name"] == "smoke"
  assert set(summary["metrics"]) == set(config.methods)
  for method, values in summary["metrics"].items():
    for key, value in values.items():
      assert isinstance(value, float) and math.isfinite(value), (method, key, value)
      if not key.endswith("_std"):
        assert values[f"{key}_std"] >= 0.0
    for s in config.settings:
      for key in ("test_acc", "best_test_acc", "memorised", "memorised_at_warmup", "mass_corrupt"):
        assert f"{s}_{key}" in values, (method, s, key)
      assert f"delta_{s}_test_acc" in values
      assert 0.0 <= values[f"{s}_test_acc"] <= values[f"{s}_best_test_acc"] <= 100.0
      assert values[f"{s}_skipped_updates"] == 0.0
      assert (f"{s}_T_mae" in values) == method.endswith("_est")
  m = summary["metrics"]
  assert m["ce"]["delta_sym50_test_acc"] == 0.0
  # The warm-up is shared: every method saw the same CE model at the estimation step.
  assert len({m[k]["sym50_memorised_at_warmup"] for k in m}) == 1


def test_pipeline_learns_and_weights_move_off_noise(smoke):
  _, _, summary = smoke
  m = summary["metrics"]
  assert m["ce"]["clean_test_acc"] > 85.0  # CE on clean labels: the pipeline learns
  # Uniform weights (CE, Forward) put the corrupted share of the batch on corrupted
  # samples; the transition weights put less (the CE warm-up is in both means).
  assert m["forward_est"]["sym50_mass_corrupt"] == pytest.approx(m["ce"]["sym50_mass_corrupt"])
  for method in ("rent_est", "dws_true"):
    assert m[method]["sym50_mass_corrupt"] < m["ce"]["sym50_mass_corrupt"] - 0.02
  assert summary["config"]["realised_noise_rates"]["sym50"] == pytest.approx(0.5, abs=0.05)


def test_claims_cite_the_paper(smoke):
  exp_dir, config, _ = smoke
  rows = json.loads((exp_dir / "claims.json").read_text())
  # smoke: RENT (est T) vs CE and vs Forward; no Reweight, no DWS with the estimated T.
  assert [r["claim"] for r in rows] == [
    "sym50: RENT above CE at the last epoch (est T)",
    "sym50: RENT above Forward at the last epoch (est T)",
  ]
  assert "RENT 69.0 vs CE 46.6" in rows[0]["paper"] and "RENT 69.0 vs Forward 58.8" in rows[1]["paper"]
  assert {r["verdict"] for r in rows} == {"too few seeds"}  # 2 seeds
  table = (exp_dir / "table.md").read_text()
  assert "### The paper's claims" in table and "- 2 claims: too few seeds 2." in table
  # The other T's rows are checked against the same directions, as a diagnostic outside claims.json.
  assert "The paper's directions checked with the true T" in table
  assert (
    "- 1 claims: too few seeds 1. A direction counts when |paired Δ| > 2 standard errors over ≥ 3 seeds.\n"
    in table
  )


def test_claim_lines_list_the_decided_claims():
  rows = [
    {"claim": "a", "ours": "x", "verdict": "reproduces"},
    {"claim": "b", "ours": "y", "verdict": "no significant difference"},
    {"claim": "c", "ours": "z", "verdict": "opposite direction"},
    {"claim": "d", "ours": "w", "verdict": "reproduces"},
  ]
  lines = nd.claim_lines(rows)
  assert lines[0].startswith("4 claims: reproduces 2, no significant difference 1, opposite direction 1.")
  assert lines[1:] == ["reproduces: a — x", "reproduces: d — w", "opposite direction: c — z"]


def test_outputs_on_disk(smoke):
  exp_dir, config, summary = smoke
  assert (exp_dir / "test_acc_est_T.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = (exp_dir / "table.md").read_text()
  assert table.startswith("## ")
  for method in config.methods:
    assert f"| {method} |" in table
  # The regime sentence is generated from CE's numbers.
  ce = summary["metrics"]["ce"]
  assert f"CE fits {ce['sym50_memorised']:.1f}% of the corrupted training labels" in table
  t_info = json.loads((exp_dir / "t_estimates.json").read_text())
  for seed in config.seeds:
    nl.check_transition_matrix(np.asarray(t_info["sym50"]["T_est"][str(seed)]), 10)
  for method in config.methods:
    for seed in config.seeds:
      records = jaxweights.read_jsonl(common.run_log_path(exp_dir, method, seed))
      assert records[0]["step"] == 0
      assert max(r["step"] for r in records) == config.num_steps
      assert any("loss_mean" in r for r in records)
      assert {r["setting"] for r in records} == ({"sym50", "clean"} if method == "ce" else {"sym50"})


def test_methods_continue_the_warmed_up_ce_run(smoke):
  """The authors' schedule: every method's log up to the warm-up is CE's, then it diverges."""
  exp_dir, config, _ = smoke
  w = config.warmup_steps
  for seed in config.seeds:
    ce = [
      r for r in jaxweights.read_jsonl(common.run_log_path(exp_dir, "ce", seed)) if r["setting"] == "sym50"
    ]
    for method in config.methods[1:]:
      recs = jaxweights.read_jsonl(common.run_log_path(exp_dir, method, seed))
      head = [r for r in recs if r["step"] <= w]
      assert {r["phase"] for r in head} == {"warmup_ce"}
      assert [r["test_acc"] for r in head] == [r["test_acc"] for r in ce if r["step"] <= w]
      assert {r["phase"] for r in recs if r["step"] > w} == {method}
      after = [r["loss_mean"] for r in recs if r["step"] > w]
      assert after != [r["loss_mean"] for r in ce if r["step"] > w]


def test_continue_as_keeps_network_and_optimiser():
  config = noisy_digits.get_config("smoke")
  tx = optax.adam(1e-3)
  _, ce_state = jaxweights.init_train_state(nd.make_model(config, 0), tx, nd.make_weighting("ce", config))
  ce_state = ce_state._replace(step=jnp.asarray(48, jnp.int32))
  T = nl.symmetric_transition(10, 0.5)
  state = nd.continue_as("rent", ce_state, nd.make_weighting("rent", config).init(), T)
  assert state.params is ce_state.params and state.opt_state is ce_state.opt_state
  assert int(state.step) == 48
  np.testing.assert_array_equal(state.weighting_state[0].T, T)


def test_settings_and_the_authors_asymmetric_map():
  config = noisy_digits.get_config("quick")
  assert nd.parse_setting("sym50") == ("symmetric", 0.5)
  assert nd.parse_setting("asym20") == ("asymmetric", 0.2)
  for bad in ("sym", "pair40", "asym400"):
    with pytest.raises(ValueError):
      nd.parse_setting(bad)
  T = nd.transition_for("asym40", config)
  nl.check_transition_matrix(T, 10)
  # 2->7, 3->8, 5<->6 at rate 0.4; every other class keeps its label.
  for clean, noisy in ((2, 7), (3, 8), (5, 6), (6, 5)):
    assert T[noisy, clean] == pytest.approx(0.4) and T[clean, clean] == pytest.approx(0.6)
  for c in (0, 1, 4, 7, 8, 9):
    assert T[c, c] == 1.0
  np.testing.assert_allclose(nd.transition_for("sym20", config), nl.symmetric_transition(10, 0.2))


def test_parse_method():
  assert nd.parse_method("ce") == ("ce", None)
  assert nd.parse_method("rent_est") == ("rent", "est")
  assert nd.parse_method("forward_true") == ("forward", "true")
  for bad in ("rent", "rent_false", "foo_true"):
    with pytest.raises(ValueError):
      nd.parse_method(bad)


def test_add_delta_vs_pairs_with_the_same_T():
  per_seed = {
    "ce": [{"a": 1.0}, {"a": 2.0}],
    "forward_est": [{"a": 3.0}, {"a": 5.0}],
    "rent_est": [{"a": 4.0}, {"a": 4.0}],
    "forward_true": [{"a": 0.0}, {"a": 0.0}],
    "rent_true": [{"a": 1.0}, {"a": 3.0}],
  }
  name = nd.add_delta_vs(per_seed, "a", "forward")
  assert name == "a_vs_forward"
  assert [r["delta_a_vs_forward"] for r in per_seed["rent_est"]] == [1.0, -1.0]
  assert [r["delta_a_vs_forward"] for r in per_seed["rent_true"]] == [1.0, 3.0]
  assert [r["delta_a_vs_forward"] for r in per_seed["forward_est"]] == [0.0, 0.0]
  assert "a_vs_forward" not in per_seed["ce"][0]


def test_claims_follow_the_paper_and_the_headline_T():
  methods = ("ce", "forward_est", "reweight_est", "dws_est", "rent_est", "rent_true")
  claims = nd.make_claims(["sym20", "asym40", "sym80"], "est", methods)
  assert len(claims) == 2 * 2 * 3  # two paper columns (sym80 is not one) x {RENT, DWS} x 3 baselines
  by = {(c.method, c.baseline, c.metric): c for c in claims}
  rent = by[("rent_est", "forward_est", "asym40_test_acc_vs_forward")]
  assert "RENT 77.8 vs Forward 74.2" in rent.paper and not rent.lower_is_better
  assert ("dws_est", "ce", "sym20_test_acc") in by
  assert all(c.method.endswith("_est") for c in claims)
  # A measured claim: the verdict reads the paired delta.
  metrics = {
    "rent_est": {"sym20_test_acc": 90.0, "delta_sym20_test_acc": 2.0, "delta_sym20_test_acc_std": 0.5},
    "ce": {"sym20_test_acc": 88.0},
  }
  row = common.claim_verdict(metrics, by[("rent_est", "ce", "sym20_test_acc")], 3)
  assert row["verdict"] == "reproduces"


def test_regime_lines_are_generated():
  metrics = {
    "ce": {
      "sym50_memorised": 91.25,
      "sym50_memorised_at_warmup": 4.0,
      "sym50_best_test_acc": 90.0,
      "sym50_test_acc": 60.0,
    }
  }
  (line,) = nd.regime_lines(metrics, ["sym50"])
  assert "91.2%" in line and "4.0%" in line and "30.0 pp" in line


def test_T_is_swapped_without_rebuilding():
  """The T in the state (weightings) or the batch (Forward) is what the step uses."""
  config = noisy_digits.get_config("smoke")
  tx = optax.adam(1e-3)
  graphdef, _ = jaxweights.init_train_state(nd.make_model(config, 0), tx)
  comp = nd.build_chunk("reweight", config, tx, graphdef)
  _, state = jaxweights.init_train_state(nd.make_model(config, 0), tx, comp.weighting)
  T = nl.asymmetric_transition(10, 0.4)
  swapped = nd.with_T(state, "reweight", T)
  np.testing.assert_array_equal(swapped.weighting_state[0].T, T)
  assert nd.with_T(state, "ce", T) is state
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((2, 8, 64), np.float32))
  y = jnp.asarray(rng.integers(0, 10, (2, 8), dtype=np.int32))
  c = jnp.zeros((2, 8), jnp.float32)
  eye = jnp.eye(10)
  _, m_eye = comp(state, x, y, c, eye)
  _, m_T = comp(swapped, x, y, c, eye)
  # T = I gives uniform weights (ESS = batch); the asymmetric T does not.
  assert float(m_eye["ess"][0]) == pytest.approx(8.0, rel=1e-4)
  assert float(m_T["ess"][0]) < 8.0 - 1e-3
  # Forward reads T from the batch.
  fwd = nd.build_chunk("forward", config, tx, graphdef)
  _, fstate = jaxweights.init_train_state(nd.make_model(config, 0), tx, fwd.weighting)
  _, f_eye = fwd(fstate, x, y, c, eye)
  _, f_T = fwd(fstate, x, y, c, jnp.asarray(T))
  assert float(f_eye["loss_mean"][0]) != pytest.approx(float(f_T["loss_mean"][0]))


@pytest.mark.slow  # ~15 s: the quick config's CE run on the symmetric columns
def test_quick_config_reaches_the_memorisation_regime(tmp_path):
  """CE has memorised little when T is estimated and most corrupted labels by the last epoch."""
  config = common.replace(
    noisy_digits.get_config("quick"),
    methods=("ce",),
    seeds=(0,),
    settings=("sym20", "sym50"),
    clean_reference=False,
  )
  summary = noisy_digits.train_and_evaluate(config, tmp_path, log=_quiet)
  ce = summary["metrics"]["ce"]
  for s in ("sym20", "sym50"):
    assert ce[f"{s}_memorised_at_warmup"] < 20.0
    assert ce[f"{s}_memorised"] > 70.0
    assert ce[f"{s}_best_test_acc"] - ce[f"{s}_test_acc"] > 3.0


@pytest.mark.slow  # a second, fuller smoke run: Reweight, DWS (est T), VolMinNet, a robustness study
def test_volmin_and_robustness_study(tmp_path):
  config = common.replace(
    noisy_digits.get_config("smoke"),
    methods=("ce", "forward_est", "reweight_est", "dws_est", "rent_est"),
    seeds=(0, 1, 2),
    clean_reference=False,
    volmin={"lam": 1e-4, "init_diag": 0.9, "t_learning_rate": 1e-2},
    robustness={"from_scratch": {"continue_after_warmup": False, "volmin": None}},
  )
  summary = noisy_digits.train_and_evaluate(config, tmp_path, log=_quiet)
  assert set(summary["metrics"]) == set(config.methods) | {"volmin"}
  v = summary["metrics"]["volmin"]
  assert 0.0 <= v["sym50_test_acc"] <= 100.0 and v["sym50_T_mae"] >= 0.0
  rows = json.loads((tmp_path / "claims.json").read_text())
  assert len(rows) == 6 and all(r["verdict"] != "not measured" for r in rows)
  sub = common.read_summary(tmp_path / "robustness" / "from_scratch" / "summary.json")
  assert sub["config"]["name"] == "smoke/from_scratch" and not sub["config"]["continue_after_warmup"]
  # From scratch: the T-using runs do not share CE's warm-up log.
  recs = jaxweights.read_jsonl(common.run_log_path(tmp_path / "robustness" / "from_scratch", "rent_est", 0))
  assert {r["phase"] for r in recs} == {"rent_est"}
  table = (tmp_path / "table.md").read_text()
  assert "### Robustness study (ours, not the paper's setting): `from_scratch`" in table
  assert "### Learned T (VolMinNet" in table
  t_info = json.loads((tmp_path / "t_estimates.json").read_text())
  nl.check_transition_matrix(np.asarray(t_info["sym50"]["T_volmin"]["0"]), 10)
