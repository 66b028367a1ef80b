"""Transition matrices, importance weights, DWS and RENT (Bae et al.)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxweights as jw
from jaxweights import noisy_labels as nl


def test_weight_formula_by_hand():
  T = np.array([[0.8, 0.3], [0.2, 0.7]], np.float32)  # T[noisy, clean]
  probs = jnp.array([[0.9, 0.1], [0.4, 0.6]])
  labels = jnp.array([0, 1])
  # sample 0: f_0 = 0.9, P(noisy=0|x) = 0.8*0.9 + 0.3*0.1 = 0.75
  # sample 1: f_1 = 0.6, P(noisy=1|x) = 0.2*0.4 + 0.7*0.6 = 0.50
  np.testing.assert_allclose(nl.importance_weights(probs, labels, T), [0.9 / 0.75, 0.6 / 0.5], rtol=1e-5)


def test_asymmetric_T_is_not_silently_transposed():
  """Named after the authors' learned-T variants: rows = clean, sampler rows = noisy."""
  T = nl.asymmetric_transition(3, 0.4, {0: 1})
  assert T[1, 0] == pytest.approx(0.4) and T[0, 1] == 0  # clean 0 -> noisy 1
  nl.check_transition_matrix(T)
  with pytest.raises(ValueError, match=r"pass T\.T"):
    nl.check_transition_matrix(T.T)
  probs = jnp.array([[1.0, 0.0, 0.0]])  # surely clean class 0, labelled 1
  w = nl.importance_weights(probs, jnp.array([1]), T)
  w_transposed = nl.importance_weights(probs, jnp.array([1]), T.T)
  assert float(w[0]) == 0.0 and float(w_transposed[0]) == 0.0
  w = nl.importance_weights(jnp.array([[0.5, 0.5, 0.0]]), jnp.array([1]), T)
  np.testing.assert_allclose(w, [0.5 / (0.4 * 0.5 + 1.0 * 0.5)], rtol=1e-5)
  # The transposed matrix gives a different (wrong) weight: the test can fail.
  np.testing.assert_allclose(
    nl.importance_weights(jnp.array([[0.5, 0.5, 0.0]]), jnp.array([1]), T.T), [1.0], rtol=1e-5
  )


@pytest.mark.parametrize(
  "T, match",
  [
    (np.ones((2, 3)) / 2, "square"),
    (np.array([[1.2, 0.0], [-0.2, 1.0]]), "non-negative"),
    (np.array([[0.5, 0.5], [0.4, 0.4]]), "sum to 1"),
    (np.array([[np.nan, 0], [1, 1]]), "finite"),
  ],
)
def test_bad_T_raises(T, match):
  with pytest.raises(ValueError, match=match):
    nl.check_transition_matrix(T)


def test_bad_T_shape_for_classes():
  with pytest.raises(ValueError, match="classes"):
    nl.check_transition_matrix(np.eye(3), num_classes=4)


def test_noise_generators_hit_their_rates():
  labels = np.repeat(np.arange(10), 2000)
  T = nl.symmetric_transition(10, 0.5)
  noisy = nl.corrupt_labels(labels, T, seed=0)
  assert abs((noisy != labels).mean() - 0.5) < 0.01
  counts = np.array([[np.sum((noisy == j) & (labels == i)) for i in range(10)] for j in range(10)])
  np.testing.assert_allclose(counts / counts.sum(0), T, atol=0.02)
  Ta = nl.asymmetric_transition(10, 0.4)
  noisy = nl.corrupt_labels(labels, Ta, seed=1)
  flipped = noisy != labels
  assert abs(flipped.mean() - 0.4) < 0.01 and np.all(noisy[flipped] == (labels[flipped] + 1) % 10)
  x = np.random.default_rng(0).normal(size=(len(labels), 5))
  noisy = nl.instance_dependent_labels(x, labels, 10, 0.3, seed=0)
  assert abs((noisy != labels).mean() - 0.3) < 0.02
  with pytest.raises(ValueError, match="labels"):
    nl.corrupt_labels(np.array([0, 10]), T, seed=0)
  with pytest.raises(ValueError, match="rate"):
    nl.symmetric_transition(10, 1.0)


def test_anchor_estimate_recovers_T_from_true_posteriors():
  rng = np.random.default_rng(0)
  T = nl.asymmetric_transition(4, 0.3)
  clean = rng.dirichlet(np.full(4, 0.1), size=4000)  # many near-one-hot posteriors
  noisy_post = clean @ T.T
  labels = np.array([rng.choice(4, p=p / p.sum()) for p in noisy_post])
  est = nl.estimate_transition_anchor(noisy_post, labels, percentile=100, among="all")
  np.testing.assert_allclose(est, T, atol=0.02)
  est97 = nl.estimate_transition_anchor(noisy_post, labels)
  nl.check_transition_matrix(est97)
  assert np.abs(est97 - T).max() < 0.1


@pytest.mark.parametrize("alpha", [1e-4, 1e-2, 1.0, 10.0])
def test_dirichlet_weights_finite_and_normalised(alpha):
  w = jnp.array([0.5, 2.0, 1.0, 0.1, 3.0])
  pi = nl.dirichlet_weights(
    jax.random.key(0), w, alpha=alpha, num_draws=64, mask=jnp.array([1, 1, 1, 0, 1], bool)
  )
  assert np.isfinite(pi).all() and float(pi[3]) == 0
  np.testing.assert_allclose(pi.sum(), 1.0, rtol=1e-5)


def test_dirichlet_limits():
  w = jnp.array([1.0, 2.0, 3.0, 4.0])
  wbar = np.asarray(w / w.sum())
  big = nl.dirichlet_weights(jax.random.key(1), w, alpha=1e6, num_draws=8)
  np.testing.assert_allclose(big, wbar, rtol=0.02)  # alpha -> inf: deterministic reweighting
  # alpha -> 0: each draw is ~one-hot with P(i) = wbar_i (resampling frequencies).
  draws = jax.vmap(lambda k: nl.dirichlet_weights(k, w, alpha=1e-3, num_draws=1))(
    jax.random.split(jax.random.key(2), 4000)
  )
  assert np.mean(np.max(np.asarray(draws), axis=1) > 0.99) > 0.95
  freq = np.mean(np.asarray(draws) > 0.5, axis=0)
  se = np.sqrt(wbar * (1 - wbar) / 4000)
  assert np.all(np.abs(freq - wbar) < 4.5 * se + 0.01), (freq, wbar)


@pytest.mark.parametrize("draw_chunk", [None, 7])
def test_dirichlet_mean_and_variance_match_theory(draw_chunk):
  # pi ~ Dir(alpha wbar): E[pi_i] = wbar_i, Var[pi_i] = wbar_i (1 - wbar_i) / (alpha + 1);
  # the mean of M draws has variance / M. draw_chunk=7 with M=20 runs a scan over
  # three chunks, the last one partial (its padding draws must not count).
  w = jnp.array([1.0, 2.0, 3.0, 4.0, 0.5])
  wbar = np.asarray(w / w.sum())
  alpha, m, reps = 3.0, 20, 3000
  f = jax.jit(jax.vmap(lambda k: nl.dirichlet_weights(k, w, alpha=alpha, num_draws=m, draw_chunk=draw_chunk)))
  pis = np.asarray(f(jax.random.split(jax.random.key(3), reps)), np.float64)
  np.testing.assert_allclose(pis.sum(axis=1), 1.0, rtol=1e-5)
  var = wbar * (1 - wbar) / (alpha + 1) / m
  assert np.all(np.abs(pis.mean(axis=0) - wbar) < 5 * np.sqrt(var / reps)), (pis.mean(0), wbar)
  # Counted padding draws would break the sum above. The sample variance over reps
  # has a relative standard error of ~sqrt(2 / reps) ~ 2.6%; chunks drawn with one
  # key (correlated draws) would multiply it by sum(chunk sizes^2) / M = 6.7 here.
  np.testing.assert_allclose(pis.var(axis=0) / var, 1.0, atol=0.15)


def test_dirichlet_chunked_draws_stay_within_budget():
  w = jnp.ones(64)
  hlo = (
    jax.jit(lambda k: nl.dirichlet_weights(k, w, alpha=10.0, num_draws=64, draw_chunk=8))
    .lower(jax.random.key(0))
    .as_text()
  )
  assert "while" in hlo or "scan" in hlo  # chunks run as a loop, not unrolled
  with pytest.raises(ValueError, match="draw_chunk"):
    nl.dirichlet_weights(jax.random.key(0), w, alpha=10.0, num_draws=4, draw_chunk=0)


def test_resampling_frequencies_match_wbar():
  w = jnp.array([1.0, 0.0, 3.0, 6.0])
  counts = nl.resampling_weights(jax.random.key(0), w, num_draws=200_000)
  np.testing.assert_allclose(counts, [0.1, 0.0, 0.3, 0.6], atol=0.005)
  np.testing.assert_allclose(float(counts.sum()), 1.0, rtol=1e-6)
  small = nl.resampling_weights(jax.random.key(1), w, num_draws=4)
  assert set(np.round(np.asarray(small) * 4).tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}


def test_forward_correction_by_hand():
  T = np.array([[0.8, 0.3], [0.2, 0.7]], np.float32)
  logits = jnp.log(jnp.array([[0.9, 0.1]]))
  np.testing.assert_allclose(nl.forward_corrected_ce(logits, jnp.array([0]), T), [-np.log(0.75)], rtol=1e-5)


WEIGHTINGS = {
  "reweight": nl.importance_weighting,
  "rent": nl.rent_weighting,
  "dws": lambda T: nl.dws_weighting(T, alpha=5.0),
}


def _mlp_step(kind, mesh=None, mode="jit"):
  T = nl.symmetric_transition(4, 0.3)
  weighting = WEIGHTINGS[kind](T)
  loss_fn = nl.classification_loss()
  model = jw.MLP(6, [8], 4, rngs=nnx.Rngs(0))
  tx = optax.sgd(0.1)
  graphdef, state = jw.init_train_state(model, tx, weighting, seed=1)
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.normal(size=(16, 6)), jnp.float32), "y": jnp.asarray(rng.integers(0, 4, 16))}
  step = jw.make_train_step(graphdef, loss_fn, tx, weighting, mesh=mesh, mode=mode)
  if mesh is not None:
    state, batch = jw.replicate(state, mesh), jw.shard_batch(batch, mesh)
  return step(state, batch)


@pytest.mark.parametrize("kind", ["reweight", "rent"])
def test_one_device_equals_eight_devices(kind):
  ref, mref = _mlp_step(kind, jw.data_mesh(jax.devices()[:1]))
  for mode in ("jit", "shard_map"):
    got, m = _mlp_step(kind, jw.data_mesh(), mode)
    for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(got.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, err_msg=mode)
    np.testing.assert_allclose(m["weight_max"], mref["weight_max"], rtol=1e-5)


def test_dws_step_runs_sharded():
  for mode in ("jit", "shard_map"):
    state, m = _mlp_step("dws", jw.data_mesh(), mode)
    assert m["update_skipped"] == 0
    np.testing.assert_allclose(m["weight_sum"], 1.0, rtol=1e-5)


def test_bad_weighting_arguments():
  T = nl.symmetric_transition(3, 0.2)
  with pytest.raises(ValueError, match="alpha"):
    nl.dws_weighting(T, alpha=-1.0)
  with pytest.raises(ValueError, match="resample_factor"):
    nl.rent_weighting(T, resample_factor=0)
  with pytest.raises(ValueError, match="alpha"):
    nl.dws_weighting(T, alpha=0.0)
  with pytest.raises(ValueError, match="sum to 1"):
    nl.rent_weighting(np.ones((3, 3)))
  with pytest.raises(ValueError, match="num_draws"):
    nl.resampling_weights(jax.random.key(0), jnp.ones(3), num_draws=0)


def _log_gamma_cdf(a, log_x):
  """P(log G <= log_x) for G ~ Gamma(a), also where exp(log_x) underflows float64."""
  from scipy.special import gammainc, gammaln

  a, log_x = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(log_x, np.float64))
  tiny = log_x < -700  # gammainc(a, y) = y^a / Gamma(a + 1) (1 + O(y)) for small y
  return np.where(
    tiny, np.exp(a * np.minimum(log_x, 0) - gammaln(a + 1)), gammainc(a, np.exp(np.maximum(log_x, -700)))
  )


@pytest.mark.parametrize("a", [1e-4, 0.04, 0.5, 0.999, 1.0, 3.0])
def test_log_gamma_passes_a_kolmogorov_smirnov_test(a):
  # Both samplers (GS below 1, Marsaglia-Tsang from 1) and the boundary between them.
  from scipy.stats import kstest

  x = np.asarray(nl.log_gamma(jax.random.key(1), a, (100_000,)))
  assert np.isfinite(x).all()
  assert kstest(_log_gamma_cdf(a, x), "uniform").pvalue > 1e-3


def test_log_gamma_with_mixed_shapes_and_a_broadcast_a():
  # DWS's case: a [1, B] row broadcast over M draws, shapes spanning both samplers,
  # so the rejected elements' fallback (compaction, gather through a's shape,
  # scatter back) is exercised; the probability integral transform must be uniform.
  from scipy.stats import kstest

  a = np.exp(np.random.default_rng(0).uniform(np.log(1e-3), np.log(20.0), (1, 500)))
  a = a.astype(np.float32)
  x = np.asarray(jax.jit(lambda k, a: nl.log_gamma(k, a, (400, 500)))(jax.random.key(2), a))
  assert x.shape == (400, 500) and np.isfinite(x).all()
  u = _log_gamma_cdf(np.broadcast_to(a, x.shape), x)
  assert kstest(u.ravel(), "uniform").pvalue > 1e-3
  # Per column (one shape each): no column is far off either.
  worst = min(kstest(u[:, j], "uniform").pvalue for j in range(0, 500, 50))
  assert worst > 1e-4


@pytest.mark.parametrize("a", [1e-3, 0.05, 0.5, 3.0])
def test_log_gamma_matches_the_gamma_distribution(a):
  from scipy.special import digamma, polygamma

  n = 200_000
  x = np.asarray(nl.log_gamma(jax.random.key(0), a, (n,)), np.float64)
  assert np.isfinite(x).all()
  # E[log G] = digamma(a), Var[log G] = trigamma(a): exact moments of log Gamma(a).
  mean, var = digamma(a), polygamma(1, a)
  assert abs(x.mean() - mean) < 5 * np.sqrt(var / n), (x.mean(), mean)
  assert abs(x.var() / var - 1) < 0.03, (x.var(), var)
  if a >= 0.5:
    g = np.exp(x)
    assert abs(g.mean() / a - 1) < 0.02 and abs(g.var() / a - 1) < 0.05


@pytest.mark.parametrize("n", [1, 7, 256, 1024])
def test_first_true_equals_nonzero(n):
  for p in (0.0, 0.05, 0.5, 1.0):
    mask = jax.random.uniform(jax.random.key(n), (n,)) < p
    for size in {1, max(1, n // 16), n}:
      want = jnp.nonzero(mask, size=size, fill_value=n)[0]
      np.testing.assert_array_equal(nl._first_true(mask, size), want)


def test_learned_transition_is_column_stochastic_and_starts_near_identity():
  for c, d in ((2, 0.6), (5, 0.9), (10, 0.5)):
    T = np.asarray(nl.LearnedTransition(c, init_diag=d)())
    nl.check_transition_matrix(T, c)  # columns (clean classes) sum to 1
    np.testing.assert_allclose(T, nl.symmetric_transition(c, 1 - d), atol=1e-6)
  with pytest.raises(ValueError, match="num_classes"):
    nl.LearnedTransition(1)
  with pytest.raises(ValueError, match="init_diag"):
    nl.LearnedTransition(4, init_diag=0.2)
  with pytest.raises(ValueError, match="lam"):
    nl.volmin_loss(-1.0)


def test_volmin_loss_by_hand():
  T = jnp.array([[0.8, 0.3], [0.2, 0.7]])
  logits = jnp.log(jnp.array([[0.9, 0.1]]))
  got = nl.volmin_losses(logits, jnp.array([0]), T, lam=0.5)
  np.testing.assert_allclose(got, [-np.log(0.75) + 0.5 * np.log(0.8 * 0.7 - 0.3 * 0.2)], rtol=1e-5)
  with pytest.raises(ValueError, match="lam"):
    nl.volmin_losses(logits, jnp.array([0]), T, lam=-0.1)
  with pytest.raises(ValueError, match="T has shape"):
    nl.volmin_losses(logits, jnp.array([0]), jnp.eye(3), lam=0.1)


def test_learned_T_is_not_transposed():
  # The authors' learned-T variants (VolMinNet-style) produce row = clean matrices
  # that their sampler indexes by the noisy label. Here T is learned jointly with
  # the classifier on pair-flip noise (clean c -> noisy c+1 w.p. 0.3) and must come
  # out as T[noisy, clean]: T[1, 0] ~ 0.3 and T[0, 1] ~ 0. A transposed estimate
  # would be off by 0.15 on average; the learned one is within 0.03.
  C, N = 4, 3000
  rng = np.random.default_rng(0)
  y = rng.integers(0, C, N)
  x = (rng.normal(size=(C, 8))[y] * 3 + rng.normal(size=(N, 8))).astype(np.float32)
  T_true = nl.asymmetric_transition(C, 0.3)
  assert T_true[1, 0] == pytest.approx(0.3) and T_true[0, 1] == 0
  y_noisy = nl.corrupt_labels(y, T_true, seed=1)
  realised = np.zeros((C, C))
  np.add.at(realised, (y_noisy, y), 1.0)
  realised /= realised.sum(axis=0, keepdims=True)  # the flips that actually happened
  # A symmetric 25%-noise start: where the 0.3 flip mass goes (T[1, 0], not T[0, 1])
  # is learned from the data. (From a 10% start the classifier absorbs the noise
  # and T stays near the identity at this lam and length: VolMinNet needs its
  # initialisation near the noise level, see the noisy-digits table.)
  model = nl.VolMinNet(jw.MLP(8, [32], C, rngs=nnx.Rngs(0)), C, init_diag=0.75)
  tx = optax.adam(1e-2)
  graphdef, state = jw.init_train_state(model, tx)
  step = jw.make_train_step(graphdef, nl.volmin_loss(1e-4), tx)
  for _ in range(600):
    idx = rng.integers(0, N, 256)
    state, _ = step(state, {"x": jnp.asarray(x[idx]), "y": jnp.asarray(y_noisy[idx])})
  T_hat = np.asarray(nnx.merge(graphdef, state.params, state.model_vars).transition())
  nl.check_transition_matrix(T_hat, C)
  assert np.abs(T_hat - realised).mean() < 0.03, np.round(T_hat, 3)
  assert np.abs(T_hat.T - realised).mean() > 0.1
  assert abs(T_hat[1, 0] - realised[1, 0]) < 0.08 and T_hat[0, 1] < 0.05, np.round(T_hat, 3)
  # The estimate plugs straight into the weightings.
  nl.rent_weighting(T_hat)


def test_volmin_optimizer_routes_T_to_its_own_transform():
  model = nl.VolMinNet(jw.MLP(3, [4], 3, rngs=nnx.Rngs(0)), 3)
  tx = nl.volmin_optimizer(optax.sgd(0.0), optax.sgd(1.0))  # only T may move
  graphdef, state = jw.init_train_state(model, tx)
  step = jw.make_train_step(graphdef, nl.volmin_loss(0.1), tx)
  batch = {"x": jnp.ones((4, 3)), "y": jnp.array([0, 1, 2, 0])}
  new, _ = step(state, batch)
  before, after = (
    nnx.merge(graphdef, state.params, state.model_vars),
    nnx.merge(graphdef, new.params, new.model_vars),
  )
  np.testing.assert_array_equal(
    after.classifier.layers[0].kernel[...], before.classifier.layers[0].kernel[...]
  )
  assert not np.allclose(after.transition.w[...], before.transition.w[...])
