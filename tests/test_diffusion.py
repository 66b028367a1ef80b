"""Diffusion substrate: VP-SDE, EDM, per-sample DSM, noise draws, networks, samplers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxweights as jw
from jaxweights import diffusion as df
from jaxweights.substrates.data import batch_indices

SDE = df.VPSDE()
GMM2 = df.GaussianMixture((0.7, 0.3), ((-2.0, 0.0), (2.0, 0.0)), (0.5, 0.5))


def test_vp_sde_closed_forms():
  t = jnp.array([1e-5, 0.01, 0.3, 1.0])
  np.testing.assert_allclose(SDE.alpha(t) ** 2 + SDE.sigma(t) ** 2, 1.0, atol=1e-6)
  b = 0.1 * t + 0.5 * 19.9 * t**2
  np.testing.assert_allclose(SDE.alpha(t), np.exp(-0.5 * b), rtol=1e-5)
  np.testing.assert_allclose(SDE.edm_sigma(t), SDE.sigma(t) / SDE.alpha(t), rtol=1e-4)
  np.testing.assert_allclose(SDE.t_from_edm_sigma(SDE.edm_sigma(t)), t, rtol=1e-4)
  np.testing.assert_allclose(SDE.condition(t), np.log(SDE.edm_sigma(t)) / 4, rtol=1e-5)
  np.testing.assert_allclose(SDE.beta(t), 0.1 + 19.9 * t, rtol=1e-6)


def test_importance_sampling_matches_beta_over_sigma2():
  grid = jnp.geomspace(SDE.t_min, SDE.t_max, 20001)
  pdf = SDE.t_density(grid)
  assert float(jnp.trapezoid(pdf, grid)) == pytest.approx(1.0, abs=1e-3)
  # The density is beta / sigma^2 up to its constant.
  ratio = pdf / (SDE.beta(grid) / SDE.sigma(grid) ** 2)
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-3)
  draws = np.sort(np.asarray(SDE.sample_t(jax.random.PRNGKey(0), (50000,))))
  assert draws.min() >= SDE.t_min and draws.max() <= SDE.t_max
  cdf = np.concatenate(
    [[0.0], np.cumsum(np.diff(np.asarray(grid)) * 0.5 * (np.asarray(pdf)[1:] + np.asarray(pdf)[:-1]))]
  )
  model_cdf = np.interp(draws, np.asarray(grid), cdf)
  ks = np.max(np.abs(model_cdf - np.arange(1, len(draws) + 1) / len(draws)))
  assert ks < 0.01
  u = SDE.sample_t(jax.random.PRNGKey(1), (50000,), "uniform")
  assert abs(float(jnp.mean(u)) - 0.5) < 0.01


def test_t_out_of_range():
  with pytest.raises(ValueError, match="t must be in"):
    SDE.alpha(jnp.array([1.5]))
  with pytest.raises(ValueError, match="t must be in"):
    SDE.check_t(jnp.array([0.0]))  # below t_min: not a training time
  with pytest.raises(ValueError, match="t must be in"):
    SDE.alpha(jnp.array([jnp.nan]))
  # Traced values are clipped (documented), never NaN.
  out = jax.jit(SDE.alpha)(jnp.array([-1.0, 2.0]))
  np.testing.assert_allclose(out, [1.0, SDE.alpha(1.0)], rtol=1e-6)
  with pytest.raises(ValueError, match="t sampling"):
    SDE.sample_t(jax.random.PRNGKey(0), (3,), "log")
  with pytest.raises(ValueError):
    df.VPSDE(beta_min=1.0, beta_max=0.5)


class _Zero(nnx.Module):
  def __init__(self):
    self.p = nnx.Param(jnp.zeros(()))

  def __call__(self, x, c):
    del c
    return x * 0.0 + self.p


def test_losses_by_hand():
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  corr = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  t = jnp.array([0.01, 0.1, 0.3, 0.6, 0.9])
  s = SDE.edm_sigma(t)
  model = _Zero()
  vp = df.VPDiffusion()
  # eps_hat = 0: the loss is mean((eps - s corr)^2) per sample.
  expected = np.mean((np.asarray(noise) - np.asarray(s)[:, None] * np.asarray(corr)) ** 2, 1)
  np.testing.assert_allclose(vp.loss(model, x0, t, s, noise, corr), expected, rtol=1e-5)
  edm = df.EDMDiffusion()
  # F = 0: D = c_skip x, target x0 + s^2 corr.
  xs = np.asarray(x0) + np.asarray(s)[:, None] * np.asarray(noise)
  c_skip = 0.25 / (np.asarray(s) ** 2 + 0.25)
  target = np.asarray(x0) + np.asarray(s)[:, None] ** 2 * np.asarray(corr)
  lam = (np.asarray(s) ** 2 + 0.25) / (np.asarray(s) ** 2 * 0.25)
  expected = lam * np.mean((c_skip[:, None] * xs - target) ** 2, 1)
  np.testing.assert_allclose(edm.loss(model, x0, t, s, noise, corr), expected, rtol=1e-4)
  with pytest.raises(ValueError, match=r"\[B\]"):
    vp.loss(model, x0, t[:3], s, noise)


def test_exact_denoiser_losses_are_minimal():
  """The true denoiser of a mixture beats a perturbed one in expected DSM loss."""
  rng = np.random.default_rng(1)
  x0, _ = GMM2.sample(rng, 8000)
  x0 = jnp.asarray(x0)
  noise = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
  edm = df.EDMDiffusion()
  s = jnp.full((x0.shape[0],), 0.8)

  class Exact:
    def __init__(self, shift):
      self.shift = shift

    def __call__(self, x_in, c):
      # Invert EDM's preconditioning so that D(x; s) = x + s^2 score(x).
      sig = jnp.exp(4 * c)[:, None]
      norm = jnp.sqrt(sig**2 + 0.25)
      x = x_in * norm
      d = x + sig**2 * GMM2.score(x, 1.0, sig[:, 0]) + self.shift
      return (d - 0.25 / norm**2 * x) / (sig * 0.5 / norm)

  mean_loss = jax.jit(lambda shift: edm.loss(Exact(shift), x0, s, s, noise).mean())
  best = mean_loss(0.0)
  for shift in (0.05, -0.05):
    assert mean_loss(shift) > best


def test_draw_is_keyed_by_global_index_and_same_on_8_devices():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 2)), jnp.float32)
  key = jax.random.PRNGKey(3)
  vp = df.VPDiffusion()
  one = df.draw_perturbation(vp, key, x)
  # Sample i's draw does not depend on the rest of the batch.
  sub = df.draw_perturbation(vp, key, x[:4])
  np.testing.assert_array_equal(sub["noise"], one["noise"][:4])
  mesh = jw.data_mesh()
  from jax.sharding import PartitionSpec as P

  fn = jax.jit(
    jax.shard_map(
      lambda k, xx: df.draw_perturbation(vp, k, xx, axis_name="data"),
      mesh=mesh,
      in_specs=(P(), P("data")),
      out_specs=P("data"),
    )
  )
  eight = fn(key, jw.shard_batch(x, mesh))
  for k in ("t", "sigma", "noise"):
    np.testing.assert_allclose(eight[k], one[k], rtol=1e-6, err_msg=k)
  paired = jax.jit(
    jax.shard_map(
      lambda k, xx: df.draw_perturbation(vp, k, xx, axis_name="data", pair_halves=True),
      mesh=mesh,
      in_specs=(P(), P("data")),
      out_specs=P("data"),
    )
  )(key, jw.shard_batch(x, mesh))
  np.testing.assert_array_equal(paired["t"][:8], paired["t"][8:])
  assert len(np.unique(np.asarray(paired["t"]))) == 8
  edm_draw = df.draw_perturbation(df.EDMDiffusion(), key, x)
  np.testing.assert_allclose(SDE.edm_sigma(edm_draw["t"]), edm_draw["sigma"], rtol=1e-3)


def test_perturb_batch_keeps_a_given_draw_and_rejects_partial():
  x = jnp.ones((4, 2))
  vp = df.VPDiffusion()
  full = df.perturb_batch(vp, {"x": x}, jax.random.PRNGKey(0))
  assert set(full) == {"x", "t", "sigma", "noise"}
  assert df.perturb_batch(vp, full, jax.random.PRNGKey(9)) is full
  with pytest.raises(ValueError, match="whole draw"):
    df.perturb_batch(vp, {"x": x, "t": full["t"]}, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="noise shape"):
    df.check_perturbed_batch({**full, "noise": jnp.ones((4, 3))})
  with pytest.raises(ValueError, match="lacks"):
    df.dsm_loss_fn(vp)(_Zero(), {"x": x})
  with pytest.raises(ValueError, match="score_correction"):
    df.check_perturbed_batch({**full, "score_correction": jnp.ones((4,))})


@pytest.mark.parametrize("net", ["mlp", "unet"])
def test_networks_are_per_sample(net):
  if net == "mlp":
    model = df.ScoreMLP(64, hidden=32, depth=2, rngs=nnx.Rngs(0))
  else:
    model = df.ScoreUNet((8, 8, 1), channels=8, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 64)), jnp.float32)
  c = jnp.array([-1.0, 0.0, 1.0])
  fwd = jax.jit(lambda z: model(z, c))
  out = fwd(x)
  assert out.shape == x.shape
  # Output row 0 does not depend on input rows 1, 2 (no batch mixing).
  other = fwd(x.at[1:].set(100.0))
  np.testing.assert_array_equal(other[0], out[0])
  assert not np.allclose(other[1], out[1])


def _exact_edm_denoiser(x, s):
  return x + jnp.square(s)[:, None] * GMM2.score(x, 1.0, s)


def test_heun_and_euler_maruyama_sample_the_mixture():
  heun = jax.jit(lambda k: df.heun_sampler(_exact_edm_denoiser, k, (3000, 2), num_steps=18))
  xs = heun(jax.random.PRNGKey(0))
  assert abs(float(jnp.mean(xs[:, 0] < 0)) - 0.7) < 0.03
  assert abs(float(jnp.std(xs[xs[:, 0] < 0][:, 1])) - 0.5) < 0.06  # 18 Heun steps: slight inflation
  score = df.vp_score_fn(_exact_edm_denoiser, SDE)
  x_t, t = jnp.array([[0.3, 0.1], [1.0, 2.0]]), jnp.array([0.1, 0.3])
  np.testing.assert_allclose(score(x_t, t), GMM2.score(x_t, SDE.alpha(t), SDE.sigma(t)), rtol=1e-4, atol=1e-4)
  em = jax.jit(lambda k: df.euler_maruyama_sampler(score, SDE, k, (3000, 2), num_steps=100))
  xs = em(jax.random.PRNGKey(1))
  assert abs(float(jnp.mean(xs[:, 0] < 0)) - 0.7) < 0.03
  assert abs(float(jnp.std(xs[xs[:, 0] < 0][:, 1])) - 0.5) < 0.05
  with pytest.raises(ValueError):
    df.karras_sigmas(0)


def test_dsm_step_trains_through_composition_layer():
  """dsm_weighting + dsm_loss_fn in make_train_step: the loss falls; same on 8 devices."""
  rng = np.random.default_rng(0)
  data, _ = GMM2.sample(rng, 512)
  edm = df.EDMDiffusion()
  model = df.ScoreMLP(2, hidden=32, depth=2, rngs=nnx.Rngs(0))
  tx = optax.adam(3e-3)
  weighting = df.dsm_weighting(edm)
  graphdef, state0 = jw.init_train_state(model, tx, weighting, seed=0)
  loss_fn = df.dsm_loss_fn(edm)
  batch = {"x": jnp.asarray(data[:64])}
  results = {}
  one = jax.devices()[:1]
  for name, mesh, mode in [("1dev", jw.data_mesh(one), "jit"), ("shmap8", jw.data_mesh(), "shard_map")]:
    step = jw.make_train_step(graphdef, loss_fn, tx, weighting, mesh=mesh, mode=mode)
    state = jw.replicate(state0, mesh)
    b = jw.shard_batch(batch, mesh)
    for _ in range(3):
      state, metrics = step(state, b)
    results[name] = (state, jw.host_metrics(metrics))
  for k, v in results["1dev"][1].items():
    np.testing.assert_allclose(results["shmap8"][1][k], v, rtol=1e-4, atol=1e-6, err_msg=k)
  step = jw.make_train_step(graphdef, loss_fn, tx, weighting)
  state, losses = state0, []
  for i in range(120):
    idx = batch_indices(len(data), 128, seed=0, step=i)
    state, metrics = step(state, {"x": jnp.asarray(data[idx])})
    losses.append(float(metrics["loss_mean"]))
  assert np.mean(losses[-30:]) < 0.8 * np.mean(losses[:10])
