"""The TIW-DSM experiments' data, metrics and method wiring (fast; the smoke
end-to-end runs are in tests/test_experiments.py through the registry)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.tiw_digits import configs as digits_configs
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
  assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
  assert M.frechet_distance(a, a + shift) == pytest.approx(1.0, rel=1e-6)


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
  # Exact unbiased samples: mode TV ~ 0; exact biased samples: the biased proportions.
  rng = np.random.default_rng(1)
  m = gmm.sample_metrics(data_mix.sample(rng, 4000)[0], data, config)
  assert m["mode_tv"] < 0.03
  m = gmm.sample_metrics(bias_mix.sample(rng, 4000)[0], data, config)
  target = 0.5 * np.abs(np.array(config.mixture["bias_weights"]) - 0.25).sum()
  assert m["mode_tv"] == pytest.approx(target, abs=0.03)
  assert m["p_mode0"] == pytest.approx(config.mixture["bias_weights"][0], abs=0.03)


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
  # Rank r of the permuted class order holds counts[r] biased images.
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


def test_unknown_configs():
  for module in (gmm_configs, digits_configs):
    with pytest.raises(ValueError):
      module.get_config("nope")
    for name in ("smoke", "quick", "full"):
      cfg = module.get_config(name)
      assert set(cfg.methods) <= set(M.DESCRIPTIONS)
