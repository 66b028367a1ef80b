"""The PRESENCE LM experiment: smoke config end to end, and its building blocks.

The smoke run checks the summary schema, finite metrics, the outputs, and that
the per-kind weight-mass logging is right: under uniform weights every kind's
mass per step equals its share of the batch.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxweights
from experiments import EXPERIMENTS, common, presence_lm
from experiments import weight_mass as mass
from experiments.presence_lm import inject, tracin

NAME = "presence_lm"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("presence")
  config = presence_lm.get_config("smoke")
  config.cache_dir = str(out / "corpus_cache")
  summary = presence_lm.train_and_evaluate(config, out / NAME, log=lambda *_: None)
  return out / NAME, config, summary


def test_registered():
  assert NAME in EXPERIMENTS


def _check_metrics(metrics, methods):
  assert set(metrics) == set(methods)
  for method, values in metrics.items():
    for key in ("heldout_loss", "delta_heldout_loss", "best_heldout_loss", "step_ms"):
      assert key in values, (method, key)
    for key, value in values.items():
      assert isinstance(value, float) and math.isfinite(value), (method, key, value)
      if not key.endswith("_std"):
        assert values[f"{key}_std"] >= 0.0


def test_smoke_headline_is_the_papers_setting(smoke):
  """Clean mixture batches, the equal-weight per-domain metric, first block, switch at 10%."""
  exp_dir, config, summary = smoke
  assert set(summary) == {"experiment", "config", "metrics"} and summary["experiment"] == NAME
  assert json.loads((exp_dir / "summary.json").read_text()) == summary
  assert config.layers == ("blocks/0",) and config.switch_fraction == 0.1
  assert config.noise_fraction == 0 and config.duplicate_fraction == 0
  facts = summary["config"]
  assert facts["kinds"] == facts["domains"] == ["python", "prose", "c"]
  assert max(facts["passes"].values()) <= 1.0
  _check_metrics(summary["metrics"], config.methods)
  for values in summary["metrics"].values():
    per_domain = [values[f"heldout_loss_{d}"] for d in facts["domains"]]
    assert values["heldout_loss"] == pytest.approx(np.mean(per_domain), rel=1e-6)
    assert "pool_loss_clean" not in values and "tracin_auroc_random" not in values
  uni = summary["metrics"]["uniform"]
  for d in facts["domains"]:  # uniform weights give every domain its share
    for stage in ("s0", "s1"):
      assert uni[f"rel_mass_{d}_{stage}"] == pytest.approx(1.0, abs=1e-5)
  assert summary["metrics"]["presence_mb"]["ess_fraction_s1"] < 0.999  # weights not uniform
  claims = json.loads((exp_dir / "claims.json").read_text())
  assert [c["claim"].split(" (")[0] for c in claims] == ["Two-stage PRESENCE"]
  table = (exp_dir / "table.md").read_text()
  assert table.startswith("## ") and "### Diagnostic (ours" in table
  for method in config.methods:
    assert f"| {method} |" in table
    for seed in config.seeds:
      records = jaxweights.read_jsonl(common.run_log_path(exp_dir, method, seed))
      assert records[0]["step"] == 0 and max(r["step"] for r in records) == config.num_steps
  for png in ("heldout_loss.png", "weight_mass.png"):
    assert (exp_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_diagnostic_injected_noise(smoke):
  exp_dir, config, _ = smoke
  diag = json.loads((exp_dir / "diagnostic" / "summary.json").read_text())
  sub = diag["config"]
  assert sub["noise_fraction"] > 0 and sub["layers"] is None
  metrics = diag["metrics"]
  _check_metrics(metrics, config.diagnostic.methods)
  counts = inject.kind_counts(sub["batch_size"], sub["noise_fraction"], sub["duplicate_fraction"])
  uni = metrics["uniform"]
  for k in inject.KINDS:
    assert uni[f"mass_{k}"] == pytest.approx(counts[k] / sub["batch_size"], abs=1e-5)
    for stage in ("s0", "s1"):
      assert uni[f"rel_mass_{k}_{stage}"] == pytest.approx(1.0, abs=1e-5)
  for values in metrics.values():
    assert sum(values[f"mass_{k}"] for k in inject.KINDS) == pytest.approx(1.0, abs=1e-4)
    for k in inject.KINDS:
      assert f"pool_loss_{k}" in values
  for key in ("tracin_auroc_random", "tracin_auroc_injected", "tracin_top10_injected"):
    assert 0.0 <= uni[key] <= 1.0
  assert any(k.startswith("ck") and k.endswith("_coherence_clean") for k in uni)
  assert "tracin_auroc_random" not in metrics["presence"]
  table = (exp_dir / "diagnostic" / "table.md").read_text()
  assert "Offline TracIn" in table and "ours, not the paper's claim" in table


def test_headline_refuses_injection(tmp_path):
  config = common.replace(presence_lm.get_config("smoke"), noise_fraction=0.1)
  with pytest.raises(ValueError, match="diagnostic"):
    presence_lm.train_and_evaluate(config, tmp_path, log=lambda *_: None)


def test_injection_is_pure_and_recorded():
  tokens = [np.arange(3000, dtype=np.int32) % 200 + 50, np.arange(2000, dtype=np.int32) % 100 + 10]
  kw = dict(
    seed=3,
    batch_size=16,
    seq_len=12,
    vocab_size=300,
    noise_fraction=0.125,
    duplicate_fraction=0.25,
    duplicate_pool=5,
  )
  a, b = inject.Injector(tokens, **kw), inject.Injector(tokens, **kw)
  for step in (0, 7):
    x, y = a.batch(step), b.batch(step)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  batch = a.batch(7)
  counts = np.bincount(batch["kind"], minlength=4)
  assert counts.tolist() == [10, 1, 1, 4]
  clean = jaxweights.data.mixture_lm_batch(tokens, seed=3, step=7, batch_size=16, seq_len=12)["tokens"]
  for i, kind in enumerate(batch["kind"]):
    row = batch["tokens"][i]
    if kind == inject.CLEAN:
      np.testing.assert_array_equal(row, clean[i])
    elif kind == inject.SHUFFLED:
      np.testing.assert_array_equal(np.sort(row), np.sort(clean[i]))
    elif kind == inject.DUPLICATE:
      assert any((row == p).all() for p in a.pool)
    else:
      assert row.min() >= 0 and row.max() < 300
  with pytest.raises(ValueError):
    inject.kind_counts(8, 0.1, 0.1)
  pool = a.scoring_pool(40, {"clean": 20, "shuffled": 6, "random": 6})
  assert np.bincount(pool["kind"], minlength=4).tolist() == [20, 6, 6, 5]
  batches = inject.fixed_batches(pool, 16)
  assert len(batches) == 3 and not batches[-1]["mask"][-1].any()


def test_track_kinds_accounts_both_paths():
  """The wrapper sums the weights the step used, via update and via gradient."""
  kind = jnp.array([0, 1, 2, 3, 0, 0], jnp.int32)
  mask = jnp.array([True, True, True, True, True, False])
  weights = jnp.array([0.1, 0.2, 0.3, 0.4, 0.0, 0.5])

  def inner_update(inputs, state):
    return weights, state

  def inner_gradient(ctx):
    return jaxweights.GradientOutput(None, jnp.zeros(6), mask, weights, ctx.state)

  inner = jaxweights.Weighting(init=tuple, update=inner_update, gradient=inner_gradient)
  w = mass.track_kinds(inner, switch_step=2)
  state = w.init()
  inputs = jaxweights.WeightInputs(
    jnp.zeros(6), mask, None, {"kind": kind}, jnp.int32(1), jax.random.PRNGKey(0)
  )
  _, state = w.update(inputs, state)
  ctx = jaxweights.GradientContext(
    None, None, None, None, {"kind": kind}, state, jnp.int32(5), jax.random.PRNGKey(0)
  )
  out = w.gradient(ctx)
  state = out.state
  np.testing.assert_allclose(state["mass"][0], [0.1, 0.2, 0.3, 0.4], atol=1e-7)
  np.testing.assert_allclose(state["mass"][1], [0.1, 0.2, 0.3, 0.4], atol=1e-7)
  np.testing.assert_allclose(state["share"][0], [0.4, 0.2, 0.2, 0.2], atol=1e-7)
  assert state["inner"] == ()
  # A declining override leaves the accounting to update.
  declining = mass.track_kinds(inner._replace(gradient=lambda ctx: None), switch_step=2)
  assert declining.gradient(ctx._replace(state=declining.init())) is None


def test_auroc_and_top_shares():
  assert tracin.auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
  assert tracin.auroc(np.array([1.0]), np.array([1.0])) == 0.5
  scores = np.arange(20, dtype=float)
  kinds = np.array([0] * 18 + [2, 2])
  shares = tracin.top_shares(scores, kinds, 0.1)
  assert shares["random"] == 1.0 and shares["clean"] == 0.0
