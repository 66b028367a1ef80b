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
from experiments.noisy_digits import configs
from experiments.noisy_digits import train as nd
from jaxweights import noisy_labels as nl


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("noisy")
  config = noisy_digits.get_config("smoke")
  summary = noisy_digits.run(config, str(out), log=lambda *_: None)
  return out / nd.EXPERIMENT, config, summary


def test_registered():
  assert "noisy_digits" in EXPERIMENTS
  assert load("noisy_digits") is noisy_digits
  for name in ("smoke", "quick", "full"):
    config = noisy_digits.get_config(name)
    assert config.methods[0] == "ce"
    assert config.num_steps % config.eval_every == 0
  assert len(noisy_digits.get_config("quick").seeds) >= 3
  assert len(noisy_digits.get_config("full").seeds) == 5
  assert [s[0] for s in noisy_digits.get_config("quick").settings] == ["sym20", "sym50", "asym20", "asym40"]
  with pytest.raises(ValueError):
    noisy_digits.get_config("nope")


def test_summary_schema_and_finite(smoke):
  exp_dir, config, summary = smoke
  assert json.loads((exp_dir / "summary.json").read_text()) == summary
  assert set(summary) == {"experiment", "config", "metrics"}
  assert summary["experiment"] == "noisy_digits"
  assert summary["config"]["name"] == "smoke"
  assert set(summary["metrics"]) == set(config.methods) | {"volmin"}
  settings = [s[0] for s in config.settings]
  for method, values in summary["metrics"].items():
    for key, value in values.items():
      assert isinstance(value, float) and math.isfinite(value), (method, key, value)
      if not key.endswith("_std"):
        assert values[f"{key}_std"] >= 0.0
    if method == "volmin":  # learned T: accuracy, T error, no weights
      for s in settings:
        assert 0.0 <= values[f"{s}_test_acc"] <= 100.0 and values[f"{s}_T_mae"] >= 0.0
        assert values[f"{s}_skipped_updates"] == 0.0
      continue
    for s in settings:
      for key in ("test_acc", "best_test_acc", "delta_test_acc", "memorised", "mass_corrupt"):
        assert f"{s}_{key}" in values, (method, s, key)
      assert 0.0 <= values[f"{s}_test_acc"] <= values[f"{s}_best_test_acc"] <= 100.0
      assert values[f"{s}_skipped_updates"] == 0.0
      assert (f"{s}_T_mae" in values) == method.endswith("_est")
  assert summary["metrics"]["ce"]["sym50_delta_test_acc"] == 0.0


def test_pipeline_learns(smoke):
  _, _, summary = smoke
  ce = summary["metrics"]["ce"]
  assert ce["clean_test_acc"] > 90.0  # CE on clean labels: the pipeline learns
  # Uniform weights put the corrupted share of the batch on corrupted samples;
  # the transition weights (true T) put less.
  m = summary["metrics"]
  assert m["forward_true"]["sym50_mass_corrupt"] == pytest.approx(ce["sym50_mass_corrupt"])
  for kind in ("reweight", "dws", "rent"):
    assert m[f"{kind}_true"]["sym50_mass_corrupt"] < ce["sym50_mass_corrupt"] - 0.05
  assert summary["config"]["realised_noise_rates"]["sym50"] == pytest.approx(0.5, abs=0.05)


def test_outputs_on_disk(smoke):
  exp_dir, config, _ = smoke
  for name in ("test_acc_true_T.png", "test_acc_est_T.png", "t_estimate_error.png"):
    assert (exp_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = (exp_dir / "table.md").read_text()
  assert table.startswith("## ")
  for method in config.methods:
    assert f"| {method} |" in table
  t_info = json.loads((exp_dir / "t_estimates.json").read_text())
  for seed in config.seeds:
    T_hat = np.asarray(t_info["sym50"]["T_est"][str(seed)])
    nl.check_transition_matrix(T_hat, 10)
    nl.check_transition_matrix(np.asarray(t_info["sym50"]["T_volmin"][str(seed)]), 10)
  assert "### Learned T (VolMinNet" in table
  for method in config.methods:
    for seed in config.seeds:
      records = jaxweights.read_jsonl(common.run_log_path(exp_dir, method, seed))
      assert records[0]["step"] == 0
      assert max(r["step"] for r in records) == config.num_steps
      assert {r["setting"] for r in records} == ({"sym50", "clean"} if method == "ce" else {"sym50"})


def test_parse_method():
  assert nd.parse_method("ce") == ("ce", None)
  assert nd.parse_method("rent_est") == ("rent", "est")
  assert nd.parse_method("forward_true") == ("forward", "true")
  for bad in ("rent", "rent_false", "foo_true"):
    with pytest.raises(ValueError):
      nd.parse_method(bad)
  assert configs.METHODS[0] == "ce" and len(configs.METHODS) == 9


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


@pytest.mark.slow  # a second full smoke run
def test_ablation_table_is_appended(tmp_path):
  config = noisy_digits.get_config("smoke").replace(
    methods=("ce", "forward_true"),
    seeds=(0,),
    num_steps=24,
    warmup_steps=12,
    clean_reference=False,
    ablations={"short": {"num_steps": 12}},
  )
  summary = noisy_digits.run(config, str(tmp_path), log=lambda *_: None)
  assert set(summary["metrics"]) == {"ce", "forward_true", "volmin"}
  exp_dir = tmp_path / nd.EXPERIMENT
  sub = common.read_summary(exp_dir / "ablations" / "short" / nd.EXPERIMENT / "summary.json")
  assert sub["config"]["name"] == "smoke/short" and sub["config"]["num_steps"] == 12
  table = (exp_dir / "table.md").read_text()
  assert "### Ablation `short`" in table and "#### Last-evaluation" in table
