"""The Q-probe arithmetic experiment: task pieces and the smoke config end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import jaxweights
from experiments import EXPERIMENTS, common
from experiments.qprobe_arith import experiment, get_config, run, task
from jaxweights import q_probe
from jaxweights.families.q_probe.policies import Tokens


def test_tokenizer_and_reward():
  text = "12+34=46;Y\n"
  assert task.decode(task.encode(text)) == text
  assert 0 not in task.encode(text) and max(task.encode(text)) < task.VOCAB_SIZE
  with pytest.raises(ValueError, match="alphabet"):
    task.encode("1-2")
  assert task.reward("46", 46) == 1.0
  assert task.reward("046", 46) == 1.0  # int() decides, as in the issue
  assert task.reward("47", 46) == 0.0 and task.reward("", 46) == 0.0
  assert task.reward("4Y", 46) == 0.0
  ids = task.encode("46;Y")
  assert task.completion_text(ids, 3) == "46"  # up to the end token
  comps = Tokens(np.array([[task.encode("46;") + [0, 0], task.encode("4;") + [0, 0, 0]]]), np.array([[3, 2]]))
  np.testing.assert_array_equal(task.rewards([task.Problem("12+34=", 46)], comps), [[1, 0]])


def test_split_is_disjoint_and_wrong_answers_are_wrong():
  split = task.make_split(
    add_max=20, mul_max=4, mul_fraction=0.5, n_probe_train=30, n_probe_test=20, lm_train_size=None, seed=0
  )
  train, test, lm = ({p.prompt for p in s} for s in (split.probe_train, split.probe_test, split.lm_train))
  assert len(train) == 30 and len(test) == 20
  assert not (train & test) and not (train & lm) and not (test & lm)
  assert sum("*" in p for p in train) == 15
  rng = np.random.default_rng(0)
  for kind in ("slip", "guess", "mix"):
    for answer in (0, 5, 99):
      wrong = task.wrong_answers(answer, kind, rng, 6, 120)
      assert len(wrong) == 6 and answer not in wrong and min(wrong) >= 0
  text = task.WorksheetText(split.lm_train, 17, wrong_fraction=0.5, verdicts=True)
  batch = text.batch(seed=0, step=0, batch_size=64)
  lines = [task.decode(row) for row in batch["tokens"]]
  marks = [line.split(";")[1][0] for line in lines]
  for line, mark in zip(lines, marks):
    prompt, rest = line.split("=")
    answer = eval(prompt)  # pylint: disable=eval-used  # the problem's own arithmetic
    assert (int(rest.split(";")[0]) == answer) == (mark == "Y")
  assert 10 < marks.count("N") < 54
  np.testing.assert_array_equal(text.batch(seed=0, step=0, batch_size=64)["tokens"], batch["tokens"])
  # The loss mask starts right after "=".
  row, mask = batch["tokens"][0], batch["mask"][0]
  assert task.decode(row[mask]) == lines[0].split("=")[1]


def test_estimators_and_pairs():
  r = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], np.float32)
  assert experiment.pass_at_k(r, 1) == pytest.approx(np.mean([0.25, 0, 1]))
  assert experiment.pass_at_k(r, 4) == pytest.approx(2 / 3)
  assert experiment.pass_at_k(r, 2) == pytest.approx(np.mean([0.5, 0, 1]))
  pairs = experiment.preference_pairs(r, 5, seed=0)
  assert pairs.shape == (5, 2)  # only prompt 0 has different rewards
  assert (pairs[:, 0] == 0).all() and set(pairs[:, 1]) <= {1, 2, 3}
  q = np.array([[2.0, 1.0, 0.0, -1.0]] * 3)
  assert experiment.pair_auc(q, r) == 1.0
  idx = experiment.subsets(3, 4, 2, draws=5, seed=0)
  assert idx.shape == (5, 3, 2) and (idx[..., 0] != idx[..., 1]).all()
  full = experiment.subsets(3, 4, 4, draws=1, seed=0)
  exact = np.asarray(q_probe.expected_reward(q, r, 0.1)).mean()
  assert experiment.subset_expected_reward(q, r, full, 0.1) == pytest.approx(exact, rel=1e-6)
  assert experiment.method_spec("api_L_PG") == ("api", "pg")
  with pytest.raises(ValueError, match="unknown method"):
    experiment.method_spec("L_XX")


def test_registered():
  assert "qprobe_arith" in EXPERIMENTS
  for name in ("smoke", "quick", "full"):
    config = get_config(name)
    assert config.k <= config.n_samples and max(config.ks) <= config.n_samples
  quick = get_config("quick")
  assert (quick.k, quick.beta) == (48, 0.1) and len(quick.seeds) >= 3
  assert quick.task["n_probe_train"] >= 100 and quick.n_samples >= 50
  assert quick.task["n_probe_test"] >= 100


@pytest.mark.slow  # tests/test_experiments.py runs this smoke config in the fast suite
def test_smoke_end_to_end(tmp_path):
  config = get_config("smoke")
  summary = run(config, str(tmp_path), log=lambda *_: None)
  exp_dir = tmp_path / "qprobe_arith"
  assert json.loads((exp_dir / "summary.json").read_text()) == summary
  assert set(summary) == {"experiment", "config", "metrics"}
  assert summary["experiment"] == "qprobe_arith" and summary["config"]["name"] == "smoke"
  assert set(summary["metrics"]) == set(config.methods)
  for method, values in summary["metrics"].items():
    for key, value in values.items():
      assert isinstance(value, float) and math.isfinite(value), (method, key, value)
      if not key.endswith("_std"):
        assert values[f"{key}_std"] >= 0
    for key in ("expected_reward", "argmax_reward", "base_pass1", "pass_at_k", "greedy"):
      assert 0.0 <= values[key] <= 1.0, (method, key)
    assert values["pass_at_k"] >= values["base_pass1"]
  for png in ("expected_reward_vs_k.png", "data_limited.png"):
    assert (exp_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = (exp_dir / "table.md").read_text()
  assert table.startswith("## ")
  for row in ("base pass@1", "greedy", f"pass@{config.k}", *config.methods):
    assert f"| {row} |" in table
  assert "ordering" in table
  # The API mode's features went through the disk.
  api = q_probe.PrecomputedEmbeddings.load(exp_dir / "api_embeddings_test.npz")
  assert api.features.shape == (
    config.task["n_probe_test"],
    config.n_samples,
    config.api_lm["model"]["d_model"],
  )
  for method in config.methods:
    for seed in config.seeds:
      records = jaxweights.read_jsonl(common.run_log_path(exp_dir, method, seed))
      assert records[0]["step"] == 0
      assert max(r["step"] for r in records) == config.num_steps
      assert sum("loss_mean" in r for r in records) == config.num_steps
