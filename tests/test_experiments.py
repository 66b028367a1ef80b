"""End-to-end tests of the experiments: smoke configs (fast) and quick configs (slow).

The smoke runs execute every registered experiment once into a shared temporary
folder (module-scoped fixture) and check what the report depends on:
``summary.json``'s schema, finite metrics, a plot, ``table.md`` and the per-run
JSON-lines logs. Under the 8 fake CPU devices of ``conftest.py`` the LM
experiment runs on its data mesh (batch sharded).
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import ml_collections
import numpy as np
import pytest

import jaxweights
from experiments import EXPERIMENTS, cli, common, load, report, run_all


def _smoke_config(name, tmp_path):
  config = load(name).get_config("smoke")
  if name == "loss_lm":
    # Each strategy is one more compiled step; the strategies themselves are
    # unit-tested, so the fast run checks the plumbing with two of them.
    config.methods = ("uniform", "linupper")
  if "cache_dir" in config:
    config.cache_dir = str(tmp_path / "corpus_cache")
  return config


# Experiments whose smoke run has no test file of its own run in the fast suite;
# the others (tests/test_experiments_{presence,noisy,tiw,qprobe}.py run them) join
# here only in the slow suite, where the report over every experiment is checked.
FAST = ("loss_linreg", "loss_lm")


class _Lazy(dict):
  """Smoke summaries, each experiment run on first use into one shared folder."""

  def __init__(self, out):
    super().__init__()
    self.out = out

  def __missing__(self, name):
    module = load(name)
    self[name] = module.train_and_evaluate(
      _smoke_config(name, self.out), self.out / name, log=lambda *_: None
    )
    return self[name]


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
  out = tmp_path_factory.mktemp("results")
  return out, _Lazy(out)


def check_summary(summary: dict, name: str, config) -> None:
  assert set(summary) == {"experiment", "config", "metrics"}
  assert summary["experiment"] == name
  assert summary["config"]["name"] == config.name
  extra = {f"{m}@bf16" for m in config.get("bf16_methods", ())}  # loss_lm's precision check
  if config.get("volmin") is not None:  # noisy_digits' learned-T rows
    extra.add("volmin")
  assert set(summary["metrics"]) == set(config.methods) | extra
  for method, values in summary["metrics"].items():
    assert values, method
    for key, value in values.items():
      assert isinstance(value, float), (method, key)
      assert math.isfinite(value), (method, key, value)
      if not key.endswith("_std"):
        assert f"{key}_std" in values, (method, key)
        assert values[f"{key}_std"] >= 0.0


@pytest.mark.parametrize(
  "name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in EXPERIMENTS]
)
def test_smoke_outputs(smoke_results, name):
  out, summaries = smoke_results
  config = _smoke_config(name, out)
  exp_dir = out / name
  summary = summaries[name]
  on_disk = json.loads((exp_dir / "summary.json").read_text())
  assert on_disk == summary
  check_summary(on_disk, name, config)
  assert list(exp_dir.glob("*.png"))
  for png in exp_dir.glob("*.png"):
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = (exp_dir / "table.md").read_text()
  assert table.startswith("## ")
  for method in config.methods:
    assert f"| {method} |" in table
  for method in config.methods:
    for seed in config.seeds:
      records = jaxweights.read_jsonl(common.run_log_path(exp_dir, method, seed))
      assert records[0]["step"] == 0  # the evaluation before training
      assert max(r["step"] for r in records) == config.num_steps
      assert any("loss_mean" in r for r in records)


def test_uniform_weights_are_uniform(smoke_results):
  _, summaries = smoke_results
  lm = summaries["loss_lm"]["metrics"]["uniform"]
  assert lm["ess_fraction"] == pytest.approx(1.0, abs=1e-5)
  assert lm["weight_ratio"] == pytest.approx(1.0, abs=1e-4)
  assert lm["delta_heldout_loss"] == 0.0
  for domain in ("python", "prose", "c"):  # uniform weights give every domain its share
    assert lm[f"mass_{domain}"] == pytest.approx(1.0, abs=1e-5)
  linreg = summaries["loss_linreg"]["metrics"]
  # Uniform weights give each kind its share of the batch; LinUpper moves mass
  # off the easy (low-loss) rows.
  assert linreg["uniform"]["mass_easy"] == pytest.approx(0.4, abs=0.05)
  assert linreg["linupper"]["mass_easy"] < linreg["uniform"]["mass_easy"]


def test_lm_bf16_run_tracks_float32(smoke_results):
  # The bf16-compute rerun sees the same batches: its training curve differs (so
  # the dtype took effect) but stays within 5% of the float32 curve at every step.
  out, summaries = smoke_results
  bf16 = summaries["loss_lm"]["metrics"]["linupper@bf16"]
  assert 0.0 < bf16["train_curve_max_rel_gap"] < 0.05
  assert bf16["skipped_updates"] == 0.0
  assert "Mixed precision: bf16 compute vs float32" in (out / "loss_lm" / "table.md").read_text()


def test_lm_is_the_papers_setting(smoke_results):
  """A uniform mixture of three domains, at most one pass, the equal-weight per-domain metric."""
  out, summaries = smoke_results
  summary = summaries["loss_lm"]
  assert (out / "loss_lm" / "tokenizer" / "tokenizer.json").exists()
  split = json.loads((out / "loss_lm" / "tokenizer" / "split.json").read_text())
  assert split["domains"] == ["python", "prose", "c"]
  assert all(c["test"] >= 1 and c["train"] > c["test"] for c in split["chunks"].values())
  assert max(summary["config"]["passes"].values()) <= 1.0
  for method in summary["config"]["methods"]:
    m = summary["metrics"][method]
    per_domain = [m[f"heldout_loss_{d}"] for d in split["domains"]]
    assert m["heldout_loss"] == pytest.approx(np.mean(per_domain), rel=1e-6), method
  claims = json.loads((out / "loss_lm" / "claims.json").read_text())
  assert {c["claim"].split()[0] for c in claims} == {"LinUpper", "Quadratic"}


def test_lm_refuses_more_than_one_pass(tmp_path):
  from experiments import loss_lm

  config = common.replace(_smoke_config("loss_lm", tmp_path), num_steps=100_000)
  with pytest.raises(ValueError, match="passes over a domain"):
    loss_lm.train_and_evaluate(config, tmp_path / "lm", log=lambda *_: None)


def test_report_assembles_the_fast_experiments(smoke_results):
  out, summaries = smoke_results
  for name in FAST:
    summaries[name]  # pylint: disable=pointless-statement  (runs it)
  text = report.write_report(out).read_text()
  for name in FAST:
    assert f"# {name}" in text


@pytest.mark.slow
def test_report_assembles_every_experiment(smoke_results):
  out, summaries = smoke_results
  for name in EXPERIMENTS:
    summaries[name]  # pylint: disable=pointless-statement  (runs it)
  path = report.write_report(out)
  text = path.read_text()
  assert text.startswith("# jaxweights experiment report")
  assert "`smoke`" in text
  for name in EXPERIMENTS:
    assert f"# {name}" in text
    for png in (out / name).glob("*.png"):
      # Relative links: the folder stays valid when moved.
      assert f"]({name}/{png.name})" in text
  assert "](/" not in text


def test_report_without_table_and_empty(tmp_path):
  assert "No `*/summary.json`" in report.build_report(tmp_path)
  exp = common.experiment_dir(tmp_path / "other")
  common.write_summary(exp, "other", {"name": "quick"}, {"a": {"x": 1.0, "x_std": 0.5}})
  text = report.build_report(tmp_path, now=datetime.datetime(2025, 1, 2, 3, 4))
  assert "2025-01-02 03:04" in text
  assert "| a | 1 ± 0.5 |" in text


def _fake_curves(results):
  curves = results / report.CURVES_DIR
  curves.mkdir(parents=True, exist_ok=True)
  (curves / "family_curves.json").write_text(json.dumps({"meta": {"sizes": "demo"}, "records": []}))
  (curves / "family_curves.md").write_text(
    "Per-family cost curves on cpu.\n\n| family | sweep |\n|---|---|\n| tiw_dsm | batch |\n"
  )
  (curves / "family_curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")
  return curves


def test_report_cost_curves_section(tmp_path):
  assert "# Cost curves" not in report.build_report(tmp_path)
  _fake_curves(tmp_path)
  common.write_summary(
    common.experiment_dir(tmp_path / "other"), "other", {"name": "quick"}, {"a": {"x": 1.0, "x_std": 0.5}}
  )
  text = report.build_report(tmp_path)
  section = text[text.index("# Cost curves") :]
  assert text.index("# other") < text.index("# Cost curves")
  assert "| tiw_dsm | batch |" in section
  assert "](cost_curves/family_curves.png)" in section  # relative link
  assert "python -m benchmarks.family_curves --sizes demo" in section
  assert "--no-curves" in section


def test_run_all_curve_sizes(tmp_path, monkeypatch):
  """run_all runs the curves at the config's size set, into <out>/cost_curves/."""
  from benchmarks import family_curves

  calls = []

  def fake_main(argv):
    calls.append(argv)
    _fake_curves(Path(argv[argv.index("--out") + 1]).parent)
    return []

  monkeypatch.setattr(family_curves, "main", fake_main)
  monkeypatch.setattr(run_all, "EXPERIMENTS", ())
  run_all.main(["--config", "quick", "--out", str(tmp_path)])
  assert calls == [["--sizes", "demo", "--out", str(tmp_path / "cost_curves")]]
  assert "# Cost curves" in (tmp_path / "REPORT.md").read_text()
  run_all.main(["--config", "smoke", "--out", str(tmp_path / "x")])
  assert calls[-1][:2] == ["--sizes", "quick"]
  run_all.main(["--config", "quick", "--out", str(tmp_path / "y"), "--no-curves"])
  assert len(calls) == 2
  with pytest.raises(SystemExit):
    run_all.main(["--no-curves", "--curves", "quick"])


def test_mean_std_and_aggregate():
  assert common.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2.0)))
  assert common.mean_std([5.0]) == (5.0, 0.0)
  per_seed = {"uniform": [{"m": 1.0}, {"m": 2.0}], "linupper": [{"m": 0.5}, {"m": 1.0}]}
  common.add_paired_deltas(per_seed, "m")
  agg = common.aggregate(per_seed)
  assert agg["linupper"]["delta_m"] == pytest.approx(-0.75)
  assert agg["linupper"]["delta_m_std"] == pytest.approx(np.std([-0.5, -1.0], ddof=1))
  assert agg["uniform"]["delta_m"] == 0.0
  with pytest.raises(ValueError):
    common.mean_std([])


def test_write_summary_schema(tmp_path):
  config = ml_collections.ConfigDict(dict(name="x", seeds=(0, 1), nested={"a": (1, 2)}))
  path = common.write_summary(tmp_path, "exp", config, {"u": {"m": 1, "m_std": 0.0}})
  assert json.loads(path.read_text()) == {
    "experiment": "exp",
    "config": {"name": "x", "seeds": [0, 1], "nested": {"a": [1, 2]}},
    "metrics": {"u": {"m": 1.0, "m_std": 0.0}},
  }
  with pytest.raises(TypeError):
    common.write_summary(tmp_path, "exp", config, {"u": {"m": "bad"}})


def test_config_replace_and_curves():
  config = ml_collections.ConfigDict(dict(a=1, b=2))
  assert common.replace(config, a=3).a == 3 and config.a == 1
  with pytest.raises(KeyError):
    common.replace(config, c=1)
  with pytest.raises(AttributeError):
    config.c  # noqa: B018
  # A resumed run re-logs steps: the last record per step wins.
  records = [{"step": 1, "v": 1.0}, {"step": 2, "v": 2.0}, {"step": 2, "v": 3.0}]
  steps, values = common.curve(records, "v")
  assert steps.tolist() == [1.0, 2.0] and values.tolist() == [1.0, 3.0]
  assert len(common.dedupe_by_step(records)) == 2


def test_config_command_line(tmp_path):
  """--config names a config or a file; --config.<field>= overrides, nested too; unknown fields fail."""
  config = cli.parse_config(
    "loss_linreg", ["--config=smoke", "--config.num_steps=7", "--config.data.dim", "5"]
  )
  assert (config.name, config.num_steps, config.data.dim) == ("smoke", 7, 5)
  assert config.seeds == load("loss_linreg").get_config("smoke").seeds
  path = cli.config_path("loss_linreg", "full")
  assert cli.parse_config("loss_linreg", ["--config", path]).name == "full"
  with pytest.raises(ValueError, match="nope"):
    cli.parse_config("loss_linreg", ["--config=smoke", "--config.nope=1"])
  with pytest.raises(ValueError, match="unknown config"):
    cli.parse_config("loss_linreg", ["--config=nope"])
  seen = {}
  cli.main(
    "loss_linreg", lambda c, w: seen.update(config=c, workdir=w), ["--config=smoke", "--out", str(tmp_path)]
  )
  assert seen["workdir"] == tmp_path / "loss_linreg" and seen["config"].name == "smoke"
  cli.main("loss_linreg", lambda c, w: seen.update(workdir=w), ["--workdir", str(tmp_path / "w")])
  assert seen["workdir"] == tmp_path / "w"


def test_claim_verdicts(tmp_path):
  metrics = {
    "uniform": {"m": 10.0, "m_std": 1.0, "delta_m": 0.0, "delta_m_std": 0.0},
    "a": {"m": 8.0, "m_std": 1.0, "delta_m": -2.0, "delta_m_std": 0.5},
    "b": {"m": 12.0, "m_std": 1.0, "delta_m": 2.0, "delta_m_std": 0.5},
    "c": {"m": 10.1, "m_std": 1.0, "delta_m": 0.1, "delta_m_std": 1.0},
  }
  claims = [common.Claim("a beats uniform", "Fig. 1", m, "m") for m in ("a", "b", "c", "d")]
  rows = common.write_claims(tmp_path, metrics, claims, n=5)
  assert [r["verdict"] for r in rows] == [
    "reproduces",
    "opposite direction",
    "no significant difference",
    "not measured",
  ]
  assert common.claim_verdict(metrics, claims[0], 2)["verdict"] == "too few seeds"
  higher = common.Claim("b above uniform", "Fig. 1", "b", "m", lower_is_better=False)
  assert common.claim_verdict(metrics, higher, 5)["verdict"] == "reproduces"
  assert json.loads((tmp_path / "claims.json").read_text()) == rows
  common.write_summary(tmp_path, "x", {"name": "quick"}, {"a": {"m": 1.0, "m_std": 0.0}})
  text = report.build_report(tmp_path.parent)
  assert "# Paper vs ours: verdicts" in text and "| a beats uniform | Fig. 1 |" in text


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_has_the_shape(name):
  """main.py, configs/ (smoke, quick, full, accel and more) of ConfigDicts, train_and_evaluate, a README
  with the paper's setting vs ours."""
  root = Path(__file__).resolve().parent.parent / "experiments" / name
  assert (root / "main.py").exists() and (root / "train.py").exists()
  readme = (root / "README.md").read_text()
  assert "paper" in readme.lower() and "python -m experiments." in readme
  module = load(name)
  assert callable(module.train_and_evaluate)
  names = {p.stem for p in (root / "configs").glob("*.py") if not p.stem.startswith("_")}
  # A linear model needs no accelerator: loss_linreg's full config is its longest.
  assert {"smoke", "quick", "full"} | ({"accel"} if name != "loss_linreg" else set()) <= names
  for config in sorted(names):  # every config loads, and names itself
    cfg = module.get_config(config)
    assert isinstance(cfg, ml_collections.ConfigDict) and cfg.name == config


@pytest.mark.parametrize("name", ["loss_lm", "presence_lm"])
def test_lm_quick_configs_stay_within_one_pass(name, tmp_path):
  from experiments import lm_recipe

  config = load(name).get_config("quick")
  config.cache_dir = str(tmp_path)
  passes = lm_recipe.check_passes(config, lm_recipe.load_corpus(config))
  assert 0.5 < max(passes.values()) <= 1.0


def test_unknown_names():
  with pytest.raises(ValueError):
    load("nope")
  for name in EXPERIMENTS:
    with pytest.raises(ValueError):
      load(name).get_config("nope")


@pytest.mark.slow
def test_quick_configs_and_report(tmp_path):
  runtimes = run_all.main(["--config", "quick", "--out", str(tmp_path), "--curves", "quick"])
  assert set(runtimes) == set(EXPERIMENTS)
  for name in EXPERIMENTS:
    summary = common.read_summary(tmp_path / name / "summary.json")
    check_summary(summary, name, load(name).get_config("quick"))
  assert "# Cost curves" in (tmp_path / "REPORT.md").read_text()


@pytest.mark.slow  # the core resume test (tests/test_checkpoint.py) stays in the fast suite
def test_lm_resumes_from_checkpoint(tmp_path):
  """A run interrupted after a checkpoint ends exactly where an unbroken one does."""
  from experiments import loss_lm

  config = common.replace(
    _smoke_config("loss_lm", tmp_path), methods=("uniform", "linupper"), seeds=(0,), checkpoint_every=6
  )
  first = loss_lm.train_and_evaluate(config, tmp_path / "a" / "loss_lm", log=lambda *_: None)
  ckpt = tmp_path / "a" / "loss_lm" / "checkpoints" / "linupper_seed0"
  steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
  assert steps == [6, 12]
  # Simulate a crash between steps 6 and 12: only the step-6 checkpoint survives.
  import shutil

  shutil.rmtree(ckpt / "12")
  again = loss_lm.train_and_evaluate(config, tmp_path / "a" / "loss_lm", log=lambda *_: None)
  log = jaxweights.read_jsonl(common.run_log_path(tmp_path / "a" / "loss_lm", "linupper", 0))
  trained = [r["step"] for r in log if "loss_mean" in r]
  assert trained.count(2) == 1 and trained.count(8) == 2  # resumed after step 6
  for key in ("heldout_loss", "heldout_loss_prose", "train_loss_last10pct"):
    assert again["metrics"]["linupper"][key] == pytest.approx(first["metrics"]["linupper"][key], rel=1e-6)
