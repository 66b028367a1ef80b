"""TIW-DSM: ratios, the score correction's sign and size, the unbiased optimum, wiring.

Closed forms: for Gaussian mixtures sharing their components, every perturbed
density, score and ratio is exact, so an *oracle* ratio model (the true
``log p_data^t / p_bias^t`` as its logits) isolates the TIW-DSM objective from
discriminator error.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxweights as jw
from jaxweights import density_ratio as dr
from jaxweights import diffusion as df
from jaxweights.core.contract import PrepareContext, WeightInputs

SDE = df.VPSDE()
PI = 0.05  # reference share of the score model's training mixture
DATA = df.GaussianMixture((0.5, 0.5), ((-2.0,), (2.0,)), (0.5, 0.5))
BIAS = DATA.with_weights((0.9, 0.1))
OBS = BIAS.mix(DATA, PI)  # what D_obs = D_bias ∪ D_ref is drawn from


def oracle(data=DATA, bias=BIAS) -> dr.RatioModel:
  """True log r_t = log p_data^t - log p_bias^t on VP samples (params unused)."""

  def apply(params, x_t, t):
    del params
    a, b = SDE.alpha(t), SDE.sigma(t)
    return data.log_prob(x_t, a, b) - bias.log_prob(x_t, a, b)

  return dr.RatioModel(apply, jnp.zeros((2,)))


# ----------------------------------------------------------------------------
# Ratio formulas and bad inputs.


def test_mixture_fraction_formula():
  d = jnp.array([0.01, 0.2, 0.5, 0.7, 0.99])
  r = d / (1 - d)
  for pi in (0.0, 0.05, 0.5, 0.9, 1.0):
    np.testing.assert_allclose(dr.ratio_from_prob(d, ref_fraction=pi), r / (pi * r + 1 - pi), rtol=1e-5)
  # The authors' w = 2d is the pi = 1/2 case.
  np.testing.assert_allclose(dr.ratio_from_prob(d, ref_fraction=0.5), 2 * d, rtol=1e-5)
  # Logits and probabilities agree; the mixture ratio is p_data / (pi p_data + (1-pi) p_bias).
  logits = jnp.log(d) - jnp.log1p(-d)
  np.testing.assert_allclose(
    jnp.exp(dr.log_ratio_from_logits(logits, ref_fraction=0.3)),
    dr.ratio_from_prob(d, ref_fraction=0.3),
    rtol=1e-5,
  )
  x = jnp.linspace(-3, 3, 13)[:, None]
  true = jnp.exp(DATA.log_prob(x) - OBS.log_prob(x))
  est = jnp.exp(dr.log_ratio_from_logits(DATA.log_prob(x) - BIAS.log_prob(x), ref_fraction=PI))
  np.testing.assert_allclose(est, true, rtol=1e-4)


def test_discriminator_at_exactly_0_or_1_is_finite():
  w = dr.ratio_from_prob(jnp.array([0.0, 1.0]))
  # float32: 1 - 1e-5 rounds to within 0.2% of itself.
  np.testing.assert_allclose(w, [1e-5 / (1 - 1e-5), (1 - 1e-5) / 1e-5], rtol=2e-3)
  lw = dr.log_ratio_from_logits(jnp.array([-jnp.inf, jnp.inf, 0.0]), ref_fraction=0.2)
  assert np.all(np.isfinite(lw))
  # Saturated logits: finite ratio, zero correction (the clip's gradient is 0).
  saturated = dr.RatioModel(lambda p, x, t: 1e4 * x[:, 0], ())
  x = jnp.array([[-1.0], [0.0], [1.0]])
  w, g = dr.ratio_and_correction(saturated, (), x, jnp.full((3,), 0.1))
  assert np.all(np.isfinite(w)) and np.all(np.isfinite(g))
  np.testing.assert_array_equal(g[np.array([0, 2])], 0.0)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: dr.ratio_from_prob(jnp.array([1.5])), r"\[0, 1\]"),
    (lambda: dr.ratio_from_prob(jnp.array([jnp.nan])), r"\[0, 1\]"),
    (lambda: dr.ratio_from_prob(jnp.array([0.5]), ref_fraction=1.5), "ref_fraction"),
    (lambda: dr.ratio_from_prob(jnp.array([0.5]), eps=0.0), "eps"),
    (lambda: dr.ratio_and_correction(oracle(), (), jnp.ones((4, 1)), jnp.full((4,), 2.0)), "t must be in"),
    (lambda: dr.ratio_and_correction(oracle(), (), jnp.ones((4, 1)), jnp.full((4,), 0.0)), "t must be in"),
    (lambda: dr.ratio_and_correction(oracle(), (), jnp.ones((4, 1)), jnp.full((3,), 0.1)), r"t \[B\]"),
    (lambda: dr.ratio_and_correction(oracle(), (), jnp.ones((4,)), jnp.full((4,), 0.1)), r"x \[B, ...\]"),
    (
      lambda: dr.ratio_and_correction(
        dr.RatioModel(lambda p, x, t: x, ()), (), jnp.ones((4, 2)), jnp.full((4,), 0.1)
      ),
      "logits of shape",
    ),
    (
      lambda: dr.ratio_and_correction(
        oracle(), (), jnp.ones((4, 1)), jnp.full((4,), 0.1), t_range=(0.5, 0.2)
      ),
      "t_range",
    ),
    (
      lambda: dr.ratio_and_correction(oracle(), (), jnp.ones((4, 1)), jnp.full((4,), 0.1), coordinate="ve"),
      "coordinate",
    ),
    (lambda: dr.tiw_dsm_weighting(oracle(), weight=False, correction=False), "plain DSM"),
    (lambda: dr.tiw_dsm_weighting(oracle(), t_range=(0.0, 0.5)), "t_range"),
  ],
)
def test_bad_inputs_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_traced_out_of_range_t_is_clipped():
  x = jnp.ones((2, 1))
  w, g = jax.jit(lambda t: dr.ratio_and_correction(oracle(), (), x, t))(jnp.array([0.0, 3.0]))
  w_ref, g_ref = dr.ratio_and_correction(oracle(), (), x, jnp.array([SDE.t_min, 1.0]))
  np.testing.assert_allclose(w, w_ref, rtol=1e-5)
  np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------
# The correction: sign, size, and the optimum of the objective.


@pytest.mark.parametrize("coordinate", ["edm", "vp"])
def test_correction_sign_not_negative_grad_d(coordinate):
  """grad_x log w_t = grad log p_data^t - grad log p_obs^t exactly; the authors'
  ``-grad_x d`` points the other way (and has the wrong size)."""
  x = jnp.linspace(-3.0, 3.0, 25)[:, None]

  @jax.jit
  def quantities(t):
    a, s, b = SDE.alpha(t), SDE.edm_sigma(t), SDE.sigma(t)
    w, corr = dr.ratio_and_correction(oracle(), (), x, t, ref_fraction=PI, coordinate=coordinate)
    # EDM coordinate x = x0 + s z: densities with (a, b) = (1, s); VP: (alpha, sigma).
    pa, pb = (1.0, s) if coordinate == "edm" else (a, b)
    true_w = jnp.exp(DATA.log_prob(x, pa, pb) - OBS.log_prob(x, pa, pb))
    data_score, obs_score = DATA.score(x, pa, pb), OBS.score(x, pa, pb)
    # The authors' correction direction: -grad_x d with d = r / (1 + r).
    scale = a[:, None] if coordinate == "edm" else 1.0
    d_fn = lambda z: jnp.sum(jax.nn.sigmoid(oracle().apply((), scale * z, t)))
    return w, corr, true_w, data_score, obs_score, -jax.grad(d_fn)(x)

  for t_val in (0.01, 0.2, 0.6):
    w, corr, true_w, data_score, obs_score, authors = quantities(jnp.full((25,), t_val))
    true = data_score - obs_score
    np.testing.assert_allclose(w, true_w, rtol=2e-4)
    np.testing.assert_allclose(corr, true, rtol=2e-3, atol=2e-4)
    # Adding it moves the biased score onto the unbiased one.
    np.testing.assert_allclose(obs_score + corr, data_score, rtol=2e-3, atol=2e-4)
    # The authors' -grad_x d has the opposite sign wherever the correction matters.
    big = np.abs(np.asarray(true[:, 0])) > 1e-2
    assert big.sum() >= 3
    assert np.all(np.asarray(corr[:, 0])[big] * np.asarray(true[:, 0])[big] > 0)
    assert np.all(np.asarray(authors[:, 0])[big] * np.asarray(true[:, 0])[big] < 0)


class Basis(nnx.Module):
  """A linear model on fixed Gaussian bumps: ``F(u, c) = phi(u) @ theta``.

  At a fixed noise level the DSM objective is quadratic in ``theta``, so one
  Newton step finds its exact minimiser (a projection of the per-x minimiser).
  """

  def __init__(self, lo, hi, k=40):
    self.centers = jnp.linspace(lo, hi, k)
    self.width = (hi - lo) / (k - 1)
    self.theta = nnx.Param(jnp.zeros((k,)))

  def __call__(self, u, c):
    del c
    phi = jnp.exp(-0.5 * jnp.square((u - self.centers[None, :]) / self.width))
    return (phi @ self.theta[...])[:, None]


def _fit(model, objective):
  """The exact minimiser of a quadratic ``objective(model)`` over ``model.theta``."""
  graphdef, theta, rest = nnx.split(model, nnx.Param, ...)
  obj = lambda th: objective(nnx.merge(graphdef, th, rest))
  g = jax.jit(jax.grad(obj))(theta)["theta"][...]
  h = jax.jit(jax.hessian(obj))(theta)["theta"]["theta"][...]
  opt = -jnp.linalg.solve(h + 1e-7 * jnp.eye(h.shape[0]), g)
  return nnx.merge(graphdef, jax.tree.map(lambda _: opt, theta), rest)


def _minimise(weighting, diffusion, model_range, n=40000, sigma=1.0, seed=0):
  """Exact minimiser of sum_i w_i l_i over the Basis model at one noise level.

  Runs the weighting's own prepare (which adds ratio and correction for the
  batch's noisy samples) and update (the self-normalised weights), then the DSM
  loss of :func:`dsm_loss_fn`. Returns the implied score on a grid.
  """
  rng = np.random.default_rng(seed)
  x0, _ = OBS.sample(rng, n)
  t = float(SDE.t_from_edm_sigma(sigma))
  batch = {
    "x": jnp.asarray(x0),
    "t": jnp.full((n,), t),
    "sigma": jnp.full((n,), sigma),
    "noise": jnp.asarray(rng.standard_normal((n, 1)), jnp.float32),
  }
  model = Basis(*model_range)
  loss_fn = df.dsm_loss_fn(diffusion)
  key = jax.random.PRNGKey(0)
  state = weighting.init()

  @jax.jit
  def prepare_and_weigh(batch):
    prepared = weighting.prepare(PrepareContext(loss_fn, model, batch, state, 0, key))
    weights, _ = weighting.update(
      WeightInputs(jnp.zeros((n,)), jnp.ones((n,), bool), None, prepared, 0, key), state
    )
    return prepared, weights

  prepared, weights = prepare_and_weigh(batch)
  fitted = _fit(model, lambda m: jnp.sum(weights * loss_fn(m, prepared).loss))
  grid = jnp.concatenate([jnp.linspace(-3.0, -0.5, 11), jnp.linspace(0.5, 3.0, 11)])[:, None]
  s = jnp.full((grid.shape[0],), sigma)
  implied = (diffusion.denoise(fitted, grid, s) - grid) / sigma**2
  return grid, implied, weights, prepared


@pytest.mark.parametrize("param", ["edm", "vp"])
def test_tiw_dsm_optimum_is_the_unbiased_score(param):
  """Theorem 1: the minimiser of the TIW-DSM objective is grad log p_data^t,
  through the real prepare/update/loss; the flipped-sign correction and the
  weight-only ablation are not."""
  sigma = 1.0
  if param == "edm":
    diffusion = df.EDMDiffusion()
    norm = np.sqrt(sigma**2 + 0.25)
    model_range = (-6.0 / norm, 6.0 / norm)  # EDM's c_in x
  else:
    diffusion = df.VPDiffusion()
    a = float(SDE.alpha(SDE.t_from_edm_sigma(sigma)))
    model_range = (-6.0 * a, 6.0 * a)  # the VP sample alpha x
  truth_of = lambda g, mix: mix.score(g, 1.0, jnp.full((g.shape[0],), sigma))
  tiw = dr.tiw_dsm_weighting(oracle(), diffusion, ref_fraction=PI)
  grid, implied, weights, prepared = _minimise(tiw, diffusion, model_range)
  data_score, obs_score = truth_of(grid, DATA), truth_of(grid, OBS)
  scale = float(jnp.max(jnp.abs(data_score - obs_score)))
  assert scale > 0.5  # the bias is large at this noise level
  err = float(jnp.max(jnp.abs(implied - data_score)))
  assert err < 0.1 * scale, err
  assert float(jnp.sum(weights)) == pytest.approx(1.0, rel=1e-5)

  # The authors' sign: subtracting the correction lands on the wrong side.
  neg = dict(prepared, score_correction=-prepared["score_correction"])
  loss_fn = df.dsm_loss_fn(diffusion)
  fitted = _fit(Basis(*model_range), lambda m: jnp.sum(weights * loss_fn(m, neg).loss))
  s = jnp.full((grid.shape[0],), sigma)
  wrong = (diffusion.denoise(fitted, grid, s) - grid) / sigma**2
  assert float(jnp.max(jnp.abs(wrong - data_score))) > 1.5 * scale

  # Weight-only: w_t depends on x_t only, so it cancels in the per-x minimiser:
  # the optimum stays the biased grad log p_obs^t.
  weight_only = dr.tiw_dsm_weighting(oracle(), diffusion, ref_fraction=PI, correction=False)
  _, implied_w, _, _ = _minimise(weight_only, diffusion, model_range)
  assert float(jnp.max(jnp.abs(implied_w - obs_score))) < 0.1 * scale
  assert float(jnp.max(jnp.abs(implied_w - data_score))) > 0.5 * scale


# ----------------------------------------------------------------------------
# Wiring through the composition layer.


def _edm_batch(n, seed=0, with_draw=True):
  rng = np.random.default_rng(seed)
  x0, _ = OBS.sample(rng, n)
  batch = {"x": jnp.asarray(x0)}
  if with_draw:
    t = jnp.asarray(rng.uniform(0.05, 0.8, n), jnp.float32)
    batch.update(t=t, sigma=SDE.edm_sigma(t), noise=jnp.asarray(rng.standard_normal((n, 1)), jnp.float32))
  return batch


def test_per_sample_weights_not_collapsed_to_batch_mean():
  """The authors' broadcasting bug turned w_i into mean(w) for every sample.

  Here the step's update is exactly SGD on sum_i (w_i / sum w) l_i with the
  per-sample w_i, and differs from the batch-mean (= uniform) version.
  """
  edm = df.EDMDiffusion()
  weighting = dr.tiw_dsm_weighting(oracle(), edm, ref_fraction=PI)
  model = df.ScoreMLP(1, hidden=16, depth=1, rngs=nnx.Rngs(0))
  tx = optax.sgd(0.1)
  graphdef, state = jw.init_train_state(model, tx, weighting)
  loss_fn = df.dsm_loss_fn(edm)
  batch = _edm_batch(32)
  new, metrics = jw.make_train_step(graphdef, loss_fn, tx, weighting)(state, batch)

  prepared = jax.jit(
    lambda b: weighting.prepare(
      PrepareContext(loss_fn, None, b, state.weighting_state, 0, jax.random.PRNGKey(0))
    )
  )(batch)
  w = prepared["ratio"] / jnp.sum(prepared["ratio"])
  assert w.shape == (32,)
  assert float(jnp.max(w) / jnp.min(w)) > 2.0  # genuinely different weights
  per_sample = lambda p: loss_fn(nnx.merge(graphdef, p), prepared).loss
  assert per_sample(state.params).shape == (32,)  # a [B] loss, never [B, B]
  grads = jax.jit(jax.grad(lambda p: jnp.sum(w * per_sample(p))))(state.params)
  expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads)
  diff = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), new.params, expected)
  assert max(jax.tree.leaves(diff)) < 1e-6
  collapsed_grads = jax.jit(jax.grad(lambda p: jnp.mean(per_sample(p))))(state.params)
  collapsed = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, collapsed_grads)
  gap = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), new.params, collapsed)
  assert max(jax.tree.leaves(gap)) > 1e-4
  np.testing.assert_allclose(metrics["weight_max"], jnp.max(w), rtol=1e-5)
  np.testing.assert_allclose(metrics["weight_sum"], 1.0, rtol=1e-5)
  assert float(metrics["ess"]) < 32


def test_one_device_equals_eight_devices():
  """A trained-from-scratch discriminator in the state, noise drawn in prepare:
  1 device, jit over 8 and shard_map over 8 take the same steps."""
  assert jax.device_count() == 8
  edm = df.EDMDiffusion()
  disc = dr.TimeDiscriminator(1, hidden=16, depth=1, rngs=nnx.Rngs(1))
  ratio_model = dr.RatioModel.from_module(disc)
  weighting = dr.tiw_dsm_weighting(ratio_model, edm, ref_fraction=PI, t_range=(1e-3, 1.0))
  tx = optax.adam(1e-2)
  graphdef, state0 = jw.init_train_state(
    df.ScoreMLP(1, hidden=16, depth=1, rngs=nnx.Rngs(0)), tx, weighting, seed=3
  )
  loss_fn = df.dsm_loss_fn(edm)
  batch = _edm_batch(32, with_draw=False)
  results = {}
  for name, mesh, mode in [
    ("1dev", jw.data_mesh(jax.devices()[:1]), "jit"),
    ("jit8", jw.data_mesh(), "jit"),
    ("shmap8", jw.data_mesh(), "shard_map"),
  ]:
    step = jw.make_train_step(graphdef, loss_fn, tx, weighting, mesh=mesh, mode=mode)
    state = jw.replicate(state0, mesh)
    b = jw.shard_batch(batch, mesh)
    for _ in range(2):
      state, metrics = step(state, b)
    results[name] = (state, jw.host_metrics(metrics))
  ref_state, ref_metrics = results["1dev"]
  assert ref_metrics["weight_max"] > ref_metrics["weight_min"]
  for name in ("jit8", "shmap8"):
    state, metrics = results[name]
    diff = jax.tree.map(
      lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), state.params, ref_state.params
    )
    assert max(jax.tree.leaves(diff)) < 2e-5, name
    for k, v in ref_metrics.items():
      np.testing.assert_allclose(metrics[k], v, rtol=2e-4, atol=1e-6, err_msg=f"{name} {k}")
  # The frozen discriminator is the weighting state: unchanged, and saved with the run.
  chex.assert_trees_all_equal(results["shmap8"][0].weighting_state, ratio_model.params)


def test_discriminator_params_checkpoint_with_the_run(tmp_path):
  disc = dr.TimeDiscriminator(1, hidden=8, depth=1, rngs=nnx.Rngs(1))
  ratio_model = dr.RatioModel.from_module(disc)
  weighting = dr.tiw_dsm_weighting(ratio_model, df.EDMDiffusion())
  tx = optax.sgd(0.1)
  _, state = jw.init_train_state(df.ScoreMLP(1, hidden=8, depth=1, rngs=nnx.Rngs(0)), tx, weighting)
  with jw.Checkpointer(tmp_path / "ckpt") as ckpt:
    ckpt.save(0, state, force=True)
    blank = state._replace(weighting_state=jax.tree.map(jnp.zeros_like, state.weighting_state))
    restored = ckpt.restore(blank)
  chex.assert_trees_all_equal(restored.weighting_state, ratio_model.params)


def test_t_range_zeroes_the_correction_only():
  edm = df.EDMDiffusion()
  batch = _edm_batch(64)
  ctx = lambda w: PrepareContext(df.dsm_loss_fn(edm), None, batch, w.init(), 0, jax.random.PRNGKey(0))
  full = dr.tiw_dsm_weighting(oracle(), edm, ref_fraction=PI)
  cut = dr.tiw_dsm_weighting(oracle(), edm, ref_fraction=PI, t_range=(0.3, 1.0))
  a, b = jax.jit(lambda: (full.prepare(ctx(full)), cut.prepare(ctx(cut))))()
  inside = np.asarray(batch["t"] >= 0.3)
  np.testing.assert_array_equal(b["ratio"], a["ratio"])
  np.testing.assert_array_equal(b["score_correction"][inside], a["score_correction"][inside])
  np.testing.assert_array_equal(b["score_correction"][~inside], 0.0)
  assert float(jnp.max(jnp.abs(a["score_correction"][~inside]))) > 0
  # Ablations: weight-only adds no correction; correction-only weighs uniformly.
  wo = dr.tiw_dsm_weighting(oracle(), edm, ref_fraction=PI, correction=False)
  assert "score_correction" not in jax.eval_shape(lambda: wo.prepare(ctx(wo)))
  co = dr.tiw_dsm_weighting(oracle(), edm, ref_fraction=PI, weight=False)
  prepared = jax.jit(lambda: co.prepare(ctx(co)))()
  w, _ = co.update(
    WeightInputs(jnp.zeros(64), jnp.ones(64, bool), None, prepared, 0, jax.random.PRNGKey(0)), co.init()
  )
  np.testing.assert_allclose(w, 1 / 64, rtol=1e-6)


def test_iw_dsm_uses_the_clean_sample_ratio():
  edm = df.EDMDiffusion()
  batch = _edm_batch(16)
  iw = dr.iw_dsm_weighting(oracle(), edm, ref_fraction=PI)
  prepared = jax.jit(
    lambda b: iw.prepare(PrepareContext(None, None, b, iw.init(), 0, jax.random.PRNGKey(0)))
  )(batch)
  true = jnp.exp(DATA.log_prob(batch["x"]) - OBS.log_prob(batch["x"]))
  np.testing.assert_allclose(prepared["ratio"], true, rtol=1e-3)
  assert "score_correction" not in prepared
  w, _ = iw.update(
    WeightInputs(jnp.zeros(16), jnp.ones(16, bool), None, prepared, 0, jax.random.PRNGKey(0)), iw.init()
  )
  np.testing.assert_allclose(w, true / jnp.sum(true), rtol=1e-3)


def test_trained_discriminator_learns_the_time_dependent_ratio():
  """A short BCE run on balanced, same-t batches recovers log r_t far better than 0."""
  rng = np.random.default_rng(0)
  x_ref, _ = DATA.sample(rng, 400)
  x_bias, _ = BIAS.sample(rng, 4000)
  disc = dr.TimeDiscriminator(1, hidden=32, depth=2, rngs=nnx.Rngs(0))
  ratio_model, history = dr.train_discriminator(
    disc, x_ref, x_bias, num_steps=400, batch_size=256, learning_rate=3e-3, log_every=100
  )
  assert history[-1]["bce"] < history[0]["bce"]
  t = jnp.asarray(SDE.sample_t(jax.random.PRNGKey(5), (2000,)))
  x0, _ = BIAS.sample(rng, 2000)
  x_t = SDE.alpha(t)[:, None] * x0 + SDE.sigma(t)[:, None] * rng.standard_normal((2000, 1))
  est = ratio_model.apply(ratio_model.params, x_t, t)
  true = oracle().apply((), x_t, t)
  err = float(jnp.mean(jnp.abs(est - true)))
  assert err < 0.4 * float(jnp.mean(jnp.abs(true))), err

  # The discriminator's batches: reference and biased halves share t; the
  # time-independent variant trains at t_min only.
  x = jnp.zeros((8, 1))
  ctx = PrepareContext(None, None, {"x": x, "label": jnp.zeros(8)}, (), 0, jax.random.PRNGKey(1))
  draw = dr.discriminator_weighting().prepare(ctx)
  np.testing.assert_array_equal(draw["t"][:4], draw["t"][4:])
  ti = dr.discriminator_weighting(time_independent=True).prepare(ctx)
  np.testing.assert_allclose(ti["t"], SDE.t_min)
  b = dr.discriminator_batch(x_ref, x_bias, seed=0, step=0, batch_size=8)
  np.testing.assert_array_equal(b["label"], [1, 1, 1, 1, 0, 0, 0, 0])
  with pytest.raises(ValueError, match="even"):
    dr.discriminator_batch(x_ref, x_bias, seed=0, step=0, batch_size=7)


def test_frozen_discriminator_keeps_non_parameter_variables():
  """A discriminator with a fixed (non-Param) input projection survives freezing."""

  class Projected(nnx.Module):
    def __init__(self):
      self.proj = nnx.Variable(jnp.array([[1.0], [0.0]]))  # fixed, not trained
      self.disc = dr.TimeDiscriminator(1, hidden=8, depth=1, rngs=nnx.Rngs(0))

    def __call__(self, x, c):
      return self.disc(x @ self.proj[...], c)

  x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
  ratio_model, _ = dr.train_discriminator(Projected(), x[:16], x[16:], num_steps=2, batch_size=8)
  w, g = dr.ratio_and_correction(ratio_model, ratio_model.params, jnp.asarray(x[:4]), jnp.full((4,), 0.1))
  assert w.shape == (4,) and g.shape == (4, 2)
  np.testing.assert_array_equal(g[:, 1], 0.0)  # the projection ignores the 2nd coordinate
