"""The Q-probe experiment: task pieces, evaluation pieces, configs and the smoke config end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import jaxweights
from experiments import EXPERIMENTS, common
from experiments.qprobe_arith import get_config, task, train, train_and_evaluate
from jaxweights import q_probe
from jaxweights.families.q_probe.policies import Tokens


def test_tokenizer_evaluator_and_reward():
  text = "17:1356=3*6-1*5;Y\n"
  assert task.decode(task.encode(text)) == text
  assert 0 not in task.encode(text) and max(task.encode(text)) < task.VOCAB_SIZE
  with pytest.raises(ValueError, match="alphabet"):
    task.encode("1/2")
  assert task.evaluate("3*6-1*5") == 13 and task.evaluate("2+3*4") == 14 and task.evaluate("1-2-3") == -4
  for bad in ("", "3*", "+3", "3**4", "12+3", "0+1"):
    with pytest.raises(ValueError):
      task.evaluate(bad)
  problem = task.Problem((1, 3, 5, 6), 13)
  assert problem.prompt == "13:1356="
  assert task.reward("3*6-1*5", problem) == 1.0
  assert task.reward("6*3-5*1", problem) == 1.0  # another correct string
  assert task.reward("3*6-5", problem) == 0.0  # a digit missing
  assert task.reward("3*6-1*5+1", problem) == 0.0  # a digit too many
  assert task.reward("3+6-1+5", problem) == 1.0  # and another
  assert task.reward("3+6+1+5", problem) == 0.0  # the digits, another value
  assert task.reward("3*6-1*", problem) == 0.0
  ids = task.encode("3*6-1*5;Y")
  assert task.completion_text(ids, 8) == "3*6-1*5"  # up to the end token
  comps = Tokens(np.array([[task.encode("6*3-5*1;"), task.encode("1+3+5+6;")]]), np.array([[8, 8]]))
  np.testing.assert_array_equal(task.rewards([problem], comps), [[1, 0]])


def test_expressions_and_many_distinct_correct_strings():
  exprs = task.expressions((1, 2, 2))
  # 3 orderings of the multiset x 9 operator pairs, every one evaluated.
  assert len(exprs) == 27 and len({e for e, _ in exprs}) == 27
  assert all(task.evaluate(e) == v for e, v in exprs)
  split = task.make_split(n_digits=4, max_digit=6, n_probe_train=40, n_probe_test=30, seed=0)
  # The point of the task: many distinct correct completions per prompt.
  assert np.mean([task.n_correct(p) for p in split.probe_test]) > 5
  for p in split.probe_test[:5]:
    good = task.correct_expressions(p)
    assert all(task.reward(e, p) == 1.0 for e in good)


def test_split_is_disjoint_and_worksheet_marks_are_right():
  split = task.make_split(n_digits=3, max_digit=5, n_probe_train=30, n_probe_test=20, seed=0)
  train_p, test_p, lm_p = (set(s) for s in (split.probe_train, split.probe_test, split.lm_train))
  assert len(train_p) == 30 and len(test_p) == 20
  assert not (train_p & test_p) and not (train_p & lm_p) and not (test_p & lm_p)
  assert len(train_p | test_p | lm_p) == len(task.all_problems(3, 5))
  text = task.WorksheetText(split.lm_train, 21, wrong_fraction=0.5, verdicts=True)
  batch = text.batch(seed=0, step=0, batch_size=64)
  lines = [task.decode(row) for row in batch["tokens"]]
  marks = []
  for line in lines:
    prompt, rest = line.split("=")
    target, digits = prompt.split(":")
    expr, mark = rest.split(";")[0], rest.split(";")[1][0]
    assert sorted(expr.replace("+", "").replace("-", "").replace("*", "")) == sorted(digits)
    assert (task.evaluate(expr) == int(target)) == (mark == "Y")
    marks.append(mark)
  assert 10 < marks.count("N") < 54
  np.testing.assert_array_equal(text.batch(seed=0, step=0, batch_size=64)["tokens"], batch["tokens"])
  row, mask = batch["tokens"][0], batch["mask"][0]
  assert task.decode(row[mask]) == lines[0].split("=")[1]  # the loss mask starts after "="


def test_chunks_estimators_and_layer():
  idx = train.chunks(3, 10, 4, seed=0)
  assert idx.shape == (3, 2, 4)
  for row in idx:
    assert len(set(row.ravel())) == 8  # disjoint chunks
  assert not np.array_equal(train.chunks(3, 10, 4, seed=1), idx)
  r = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], np.float32)
  assert train.pass_at_k(r, 1) == pytest.approx(np.mean([0.25, 0, 1]))
  assert train.pass_at_k(r, 2) == pytest.approx(np.mean([0.5, 0, 1]))
  q = np.array([[2.0, 1.0, 0.0, -1.0]] * 3)
  assert train.pair_auc(q, r) == 1.0 and train.pair_auc(-q, r) == 0.0
  assert train.q_spread(q) == pytest.approx(np.std([2.0, 1.0, 0.0, -1.0]))
  full = train.chunks(3, 4, 4, seed=0)
  exact = np.asarray(q_probe.expected_reward(q, r, 0.1)).mean()
  assert train.chunk_expected_reward(q, r, full, 0.1) == pytest.approx(exact, rel=1e-6)
  assert train.chunk_expected_reward(q, r, full, 0.0) == pytest.approx(2 / 3)  # argmax picks index 0
  assert train.chunk_expected_reward(q, r, train.chunks(3, 4, 1, seed=0), 0.1) == pytest.approx(r.mean())
  config = get_config("smoke")
  rr = np.random.default_rng(0).random((5, config.n_samples)) < 0.3
  base = train.base_metrics(config, rr.astype(np.float32), seed=0)
  for b in config.betas:  # a uniform draw whatever beta (beta = 0 is not one tie-broken draw)
    assert base[train.beta_key(b)] == pytest.approx(rr.mean(), abs=1e-6)
  assert train.embedding_layer(32, 26 / 32) == 26
  assert train.embedding_layer(4, 26 / 32) == 3
  assert train.embedding_layer(2, 26 / 32) == 1  # never the last block
  assert train.method_spec("api_L_PG") == ("api", "pg")
  with pytest.raises(ValueError, match="unknown method"):
    train.method_spec("L_XX")


def test_configs_follow_the_authors():
  assert "qprobe_arith" in EXPERIMENTS
  for name in ("smoke", "quick", "full"):
    config = get_config(name)
    assert config.k <= config.n_samples and max(config.ks) <= config.n_samples
  quick = get_config("quick")
  assert (quick.k, quick.beta, tuple(quick.betas)) == (48, 0.1, (0.0, 0.01, 0.1, 1.0))
  assert (quick.temperature, quick.top_p) == (0.8, 0.95)
  assert quick.n_samples >= 4 * quick.k and quick.num_steps == 150
  assert quick.probe.learning_rate == 5e-5 and quick.probe.train_beta == 1.0
  assert len(quick.seeds) >= 3 and quick.task.n_probe_test >= 100
  layer = train.embedding_layer(quick.base_lm.model.n_layers, quick.layer_fraction)
  assert 1 <= layer < quick.base_lm.model.n_layers
  assert any(m.startswith("api_") for m in quick.methods)


@pytest.mark.slow  # tests/test_experiments.py runs this smoke config in its slow suite too
def test_smoke_end_to_end(tmp_path):
  config = get_config("smoke")
  exp_dir = tmp_path / "qprobe_arith"
  summary = train_and_evaluate(config, exp_dir, log=lambda *_: None)
  assert json.loads((exp_dir / "summary.json").read_text()) == summary
  assert summary["experiment"] == "qprobe_arith" and summary["config"]["name"] == "smoke"
  assert set(summary["metrics"]) == set(config.methods)
  for method, values in summary["metrics"].items():
    for key, value in values.items():
      assert isinstance(value, float) and math.isfinite(value), (method, key, value)
      if not key.endswith("_std"):
        assert values[f"{key}_std"] >= 0
    for b in config.betas:
      assert 0.0 <= values[train.beta_key(b)] <= 1.0
  facts = summary["config"]
  assert facts["pass_at_k"][str(config.k)] >= facts["base_pass1"]
  for png in ("expected_reward_vs_k.png", "expected_reward_vs_beta.png"):
    assert (exp_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = (exp_dir / "table.md").read_text()
  assert table.startswith("## ")
  for row in ("base pass@1", "greedy", f"pass@{config.k}", *config.methods):
    assert f"| {row} |" in table
  claims = json.loads((exp_dir / "claims.json").read_text())
  assert {c["claim"] for c in claims} == {c.text for c in train.CLAIMS}
  # The API mode's features went through the disk.
  api = q_probe.PrecomputedEmbeddings.load(exp_dir / "api_embeddings_test.npz")
  assert api.features.shape == (config.task.n_probe_test, config.n_samples, config.api_lm.model.d_model)
  for method in config.methods:
    for seed in config.seeds:
      records = jaxweights.read_jsonl(common.run_log_path(exp_dir, method, seed))
      assert records[0]["step"] == 0
      assert max(r["step"] for r in records) == config.num_steps
      assert sum("loss_mean" in r for r in records) == config.num_steps


def test_diagnostic_pairs_match_l_pg_with_l_ce_of_the_same_settings():
  specs = get_config("quick").diagnostics
  runs = {name: [{"expected_reward": 0.3 + 0.01 * s} for s in range(3)] for name in specs}
  runs["L_PG_lr1e3"] = [{"expected_reward": 0.25 + 0.01 * s} for s in range(3)]
  pairs = train.pg_vs_ce_pairs(specs, runs)
  assert set(pairs) == {"L_PG_lr1e3 - L_CE_lr1e3"}  # train_beta01 has no L_CE twin
  assert pairs["L_PG_lr1e3 - L_CE_lr1e3"]["delta"] == pytest.approx(-0.05)
  assert pairs["L_PG_lr1e3 - L_CE_lr1e3"]["delta_std"] == pytest.approx(0.0, abs=1e-12)
