"""The TIW-DSM experiments: data, metrics, the authors'-code ablation, the feature
discriminator and its validation-split choice (fast), and the smoke runs end to
end (slow; tests/test_experiments.py runs them through the registry too)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import common
from experiments.tiw_digits import configs as digits_configs
from experiments.tiw_digits import features as F
from experiments.tiw_digits import train as digits
from experiments.tiw_gmm import configs as gmm_configs
from experiments.tiw_gmm import methods as M
from experiments.tiw_gmm import train as gmm
from jaxweights import data as jw_data
from jaxweights import density_ratio as dr
from jaxweights import diffusion as df


def test_distances():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((2000, 2))
  assert M.sliced_wasserstein(a, a) == 0.0
  shift = np.array([0.6, 0.8])  # |shift| = 1: SW = |shift| / sqrt(dim) on average
  assert M.sliced_wasserstein(a, a + shift) == pytest.approx(1 / np.sqrt(2), rel=0.1)
  assert M.sliced_wasserstein(a[:500], a + shift) == pytest.approx(1 / np.sqrt(2), rel=0.15)
  assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
  assert M.frechet_distance(a, a + shift) == pytest.approx(1.0, rel=1e-6)
  q = (np.arange(300) + 0.5) / 300
  np.testing.assert_allclose(M._quantiles(a[:777], q), np.quantile(a[:777], q, axis=0), atol=1e-12)


def test_gmm_headline_is_the_hard_setting():
  # Chosen from the paper's argument, before any run: overlapping modes (adjacent
  # means <= 3 std apart) and a 1-2% reference set; the authors' discriminator lr.
  config = gmm_configs.get_config("quick")
  means = np.asarray(config.mixture["means"])
  gaps = [np.linalg.norm(a - b) for a in means for b in means if np.any(a != b)]
  assert min(gaps) / config.mixture["std"] <= 3.0 + 1e-9
  assert 0.01 <= config.ref_size <= 0.02
  assert config.disc.learning_rate == 3e-4
  assert len(config.seeds) >= 3 and len(gmm_configs.get_config("full").seeds) == 5
  assert {"dsm_obs", "dsm_ref", "iw_dsm", "tiw_dsm", "authors_code"} <= set(config.methods)


def test_gmm_data_oracle_and_mode_metrics():
  config = gmm_configs.get_config("smoke")
  data = gmm.make_data(config, 0)
  assert len(data["x_ref"]) == round(config.ref_size * config.n_bias)
  assert data["ref_fraction"] == pytest.approx(len(data["x_ref"]) / len(data["x_obs"]))
  data_mix, bias_mix = gmm.mixtures(config)
  sde = df.VPSDE()
  oracle = gmm.oracle_ratio(config, sde)
  x = jnp.asarray(data["x_bias"][:50])
  t = jnp.full((50,), 0.3)
  a, b = sde.alpha(t), sde.sigma(t)
  np.testing.assert_allclose(
    oracle.apply(oracle.params, x, t), data_mix.log_prob(x, a, b) - bias_mix.log_prob(x, a, b), rtol=1e-5
  )
  target = gmm.target_proportions(config)
  np.testing.assert_allclose(target, 0.25, atol=0.01)  # symmetric cells, equal weights
  rng = np.random.default_rng(1)
  m = gmm.sample_metrics(data_mix.sample(rng, 4000)[0], data, config, target)
  assert m["mode_tv"] < 0.03
  # Biased samples: with overlapping modes the cell shares are the weights blurred
  # toward uniform, so the TV is positive but below that of the raw weights.
  m = gmm.sample_metrics(bias_mix.sample(rng, 4000)[0], data, config, target)
  raw = 0.5 * np.abs(np.array(config.mixture["bias_weights"]) - 0.25).sum()
  assert 0.1 < m["mode_tv"] < raw
  assert m["p_mode0"] < config.mixture["bias_weights"][0]


def test_ratio_and_correction_errors_vanish_for_the_exact_ratio():
  config = gmm_configs.get_config("smoke")
  data = gmm.make_data(config, 0)
  sde = df.VPSDE()
  oracle = gmm.oracle_ratio(config, sde)
  errors, _ = gmm.make_ratio_error_fn(config, sde, data["ref_fraction"], oracle)
  x_t = jnp.asarray(data["x_obs"][:200]) * 0.9
  td_mae, _, _, grad_err, grad_norm = errors((), (), x_t, 0.05, jnp.asarray(data["x_obs"]))
  assert float(td_mae) < 1e-4 and float(grad_err) < 1e-3 * float(grad_norm)
  assert float(grad_norm) > 0.1  # the correction is not trivially zero here
  # A wrong ratio (the exact one plus a tilt) shows up in both errors.
  tilted = dr.RatioModel(lambda p, x, t: oracle.apply(p, x, t) + 0.5 * x[:, 0], ())
  errors_tilted, _ = gmm.make_ratio_error_fn(config, sde, data["ref_fraction"], tilted)
  td_mae_t, _, _, grad_err_t, _ = errors_tilted((), (), x_t, 0.05, jnp.asarray(data["x_obs"]))
  assert float(td_mae_t) > 0.05 and float(grad_err_t) > 0.1


def _two_gaussian_logits(params, x_t, t):
  """The exact log p_data^t / p_bias^t of two 1-D-separated 2-D mixtures (a test oracle)."""
  del params
  sde = df.VPSDE()
  data = df.GaussianMixture((0.5, 0.5), ((-1.0, 0.0), (1.0, 0.0)), (0.5, 0.5))
  bias = data.with_weights((0.9, 0.1))
  a, b = sde.alpha(t), sde.sigma(t)
  return data.log_prob(x_t, a, b) - bias.log_prob(x_t, a, b)


def test_authors_code_row_reproduces_the_three_deviations():
  edm = df.EDMDiffusion()
  ratio = dr.RatioModel(_two_gaussian_logits, ())
  x = jnp.asarray([[-0.5, 0.1], [0.2, -0.3], [0.6, 0.4], [1.2, 0.0]], jnp.float32)
  batch = {
    "x": x,
    "t": jnp.full((4,), 0.05),
    "sigma": df.VPSDE().edm_sigma(jnp.full((4,), 0.05)),
    "noise": jnp.zeros_like(x),
  }
  ctx = type("Ctx", (), {"batch": batch, "key": jax.random.PRNGKey(0), "state": (), "axis_name": None})
  weighting = M.authors_code_weighting(ratio, edm)
  out = weighting.prepare(ctx)
  d = jax.nn.sigmoid(_two_gaussian_logits((), x * df.VPSDE().alpha(0.05), batch["t"]))
  # (3) w = 2d, and (2) collapsed into one batch factor shared by every sample.
  np.testing.assert_allclose(out[M.BATCH_FACTOR_KEY], np.full(4, float(jnp.mean(2 * d))), rtol=1e-5)
  # (1) the correction is -grad d: opposite in sign to the paper's +grad log w
  # (d is increasing in log w), and not proportional to it.
  _, paper = dr.ratio_and_correction(ratio, (), x, batch["t"], ref_fraction=0.05)
  authors = out[df.CORRECTION_KEY]
  assert np.all(np.sign(authors[:, 0]) == -np.sign(paper[:, 0]))
  ratios = np.asarray(authors[:, 0] / paper[:, 0])
  assert ratios.max() - ratios.min() > 1e-3
  inputs = type("In", (), {"mask": jnp.ones(4, bool), "axis_name": None, "batch": out})
  weights, _ = weighting.update(inputs, ())
  np.testing.assert_allclose(weights, 0.25)  # every sample weighted alike
  # The loss is the plain DSM loss times the batch factor.
  model = df.ScoreMLP(2, hidden=8, depth=1, embed_dim=4, rngs=nnx.Rngs(0))
  plain = df.dsm_loss_fn(edm)(model, {k: v for k, v in out.items() if k != M.BATCH_FACTOR_KEY}).loss
  scaled = M.authors_code_loss_fn(edm)(model, out).loss
  np.testing.assert_allclose(scaled, plain * float(jnp.mean(2 * d)), rtol=1e-5)


def test_every_method_builds_its_weighting():
  edm = df.EDMDiffusion()
  ratio = dr.RatioModel(lambda p, x, t: jnp.zeros(x.shape[:1]), ())
  for method in M.DESCRIPTIONS:
    w = M.make_weighting(
      method, edm, time_dependent=ratio, time_independent=ratio, oracle=ratio, ref_fraction=0.05, t_range=None
    )
    assert w.prepare is not None  # every method draws its noise in prepare
  with pytest.raises(ValueError, match="unknown method"):
    M.make_weighting(
      "nope", edm, time_dependent=ratio, time_independent=ratio, oracle=None, ref_fraction=0.05, t_range=None
    )
  with pytest.raises(ValueError, match="oracle"):
    M.make_weighting(
      "tiw_oracle",
      edm,
      time_dependent=ratio,
      time_independent=ratio,
      oracle=None,
      ref_fraction=0.05,
      t_range=None,
    )
  assert M.uses_reference_only("dsm_ref") and not M.uses_reference_only("dsm_obs")


def test_paired_deltas_vs_a_second_baseline():
  per_seed = {
    "a": [{"m": 1.0}, {"m": 2.0}],
    "b": [{"m": 0.5}, {"m": 3.0}],
    "c": [{"x": 0.0}, {"x": 0.0}],
  }
  common.add_paired_deltas_vs(per_seed, "m", "b")
  assert [r["delta_m_vs_b"] for r in per_seed["a"]] == [0.5, -1.0]
  assert [r["delta_m_vs_b"] for r in per_seed["b"]] == [0.0, 0.0]
  assert "delta_m_vs_b" not in per_seed["c"][0]


def test_feature_discriminator_uses_frozen_noise_conditional_features():
  enc = df.ScoreMLP(64, hidden=16, depth=2, embed_dim=8, rngs=nnx.Rngs(0))
  p = nnx.to_pure_dict(nnx.state(enc))
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 64))
  c = jnp.linspace(-1.0, 1.0, 5)
  feats = F.score_mlp_features(p, x, c, 8)
  np.testing.assert_allclose(enc.out(feats), enc(x, c), rtol=1e-5, atol=1e-6)
  # The features depend on the noise condition.
  assert float(jnp.abs(F.score_mlp_features(p, x, c + 0.5, 8) - feats).max()) > 1e-4
  model = F.FeatureDiscriminator(p, 8, hidden=8, depth=1, rngs=nnx.Rngs(1))
  assert set(nnx.to_pure_dict(nnx.state(model, nnx.Param))) == {"head"}  # only the head trains
  rng = np.random.default_rng(0)
  x_ref = rng.standard_normal((16, 64)).astype(np.float32)
  x_bias = rng.standard_normal((64, 64)).astype(np.float32) + 0.5
  ratio, _ = dr.train_discriminator(model, x_ref, x_bias, num_steps=5, batch_size=16)
  after = nnx.to_pure_dict(ratio.params)["encoder"]
  np.testing.assert_array_equal(after["inp"]["kernel"], p["inp"]["kernel"])
  _, grad = dr.ratio_and_correction(ratio, ratio.params, jnp.asarray(x_bias[:3]), jnp.full((3,), 0.2))
  assert grad.shape == (3, 64) and np.all(np.isfinite(grad))


def test_discriminator_choice_uses_a_disjoint_validation_split():
  fit, val = F.split_fit_validation(30, 0.2, np.random.default_rng(0))
  assert len(val) == 6 and not set(fit) & set(val) and len(fit) + len(val) == 30
  enc = df.ScoreMLP(64, hidden=8, depth=1, embed_dim=4, rngs=nnx.Rngs(0))
  p = nnx.to_pure_dict(nnx.state(enc))
  rng = np.random.default_rng(1)
  x_ref = rng.standard_normal((20, 64)).astype(np.float32)
  x_bias = rng.standard_normal((80, 64)).astype(np.float32) + 1.0
  make = lambda seed, hidden, depth: F.FeatureDiscriminator(p, 4, hidden, depth, rngs=nnx.Rngs(seed))
  idx, scores = F.select_discriminator(
    make,
    ((4, 1, 0), (8, 1, 40)),
    x_ref,
    x_bias,
    time_independent=True,
    validation_fraction=0.25,
    batch_size=16,
    learning_rate=3e-3,
    draws=2,
    seed=0,
  )
  assert idx == int(np.argmin(scores)) and len(scores) == 2
  # An untrained head is at chance; 40 steps on well-separated sets beat it.
  assert scores[0] == pytest.approx(np.log(2), abs=0.15) and idx == 1


def test_digits_data_is_long_tailed_with_a_balanced_disjoint_reference():
  config = digits_configs.get_config("quick")
  counts = digits.class_counts(config)
  assert counts[0] == config.n_head and np.all(np.diff(counts) <= 0)
  assert counts[-1] / counts[0] == pytest.approx(config.imbalance, rel=0.05)
  real = jw_data.load_digits(seed=config.data_seed)
  data = digits.make_data(config, real, seed=0)
  assert not set(data["i_bias"]) & set(data["i_ref"])
  y_ref = real["y_train"][data["i_ref"]]
  per_class = np.bincount(y_ref, minlength=10)
  assert np.all(per_class == per_class[0]) and per_class[0] >= 1
  assert len(data["x_ref"]) == pytest.approx(config.ref_size * len(data["x_bias"]), abs=10)
  y_bias = real["y_train"][data["i_bias"]]
  np.testing.assert_array_equal(np.bincount(y_bias, minlength=10)[data["order"]], counts)
  assert data["x_obs"].min() >= -1.0 and data["x_obs"].max() <= 1.0
  np.testing.assert_allclose(digits.to_pixels(digits.to_model(real["x_test"])), real["x_test"], atol=1e-6)


def test_digits_judge_on_real_balanced_digits():
  config = digits_configs.get_config("smoke")
  real = jw_data.load_digits(seed=0)
  judge = digits.Judge(real, config)
  m = judge.judge(real["x_test"], np.arange(10))
  assert m["class_tv"] < 0.25  # the smoke classifier is tiny; the quick one is ~97% accurate
  assert set(m) >= {"class_tv", "tail_mass", "fd", "confidence", "p_rank0", "p_rank9"}


def test_configs():
  for module in (gmm_configs, digits_configs):
    with pytest.raises(ValueError):
      module.get_config("nope")
    for name in ("smoke", "quick", "full"):
      cfg = module.get_config(name)
      assert set(cfg.methods) <= set(M.DESCRIPTIONS)
  assert len(digits_configs.get_config("full").seeds) == 5


@pytest.mark.slow
@pytest.mark.parametrize("module", [gmm, digits], ids=["tiw_gmm", "tiw_digits"])
def test_smoke_end_to_end(tmp_path, module):
  configs = gmm_configs if module is gmm else digits_configs
  config = configs.get_config("smoke")
  summary = module.train_and_evaluate(config, tmp_path, log=lambda *_: None)
  assert set(summary["metrics"]) == set(config.methods)
  claims = json.loads((tmp_path / "claims.json").read_text())
  assert [c["claim"] for c in claims] == [c.text for c in module.CLAIMS]
  assert all(c["verdict"] == "too few seeds" for c in claims)  # 2 seeds
  table = (tmp_path / "table.md").read_text()
  assert "The paper's claims" in table and "| authors_code |" in table
