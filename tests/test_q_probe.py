"""Q-probe: selection, objectives, groups, training, the KL limit, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxweights import q_probe as qp

qs = hnp.arrays(
  np.float32, st.tuples(st.integers(1, 5), st.integers(2, 9)), elements=st.floats(-5, 5, width=32)
)


@given(qs, st.floats(0.01, 10.0))
def test_selection_invariants(q, beta):
  w = np.asarray(qp.qprobe_weights(q, beta))
  assert np.all(w >= 0)
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
  perm = np.random.default_rng(0).permutation(q.shape[1])
  np.testing.assert_allclose(qp.qprobe_weights(q[:, perm], beta), w[:, perm], rtol=1e-5, atol=1e-7)
  # Higher Q never gets less weight.
  for row_q, row_w in zip(q, w):
    order = np.argsort(row_q, kind="stable")
    assert np.all(np.diff(row_w[order]) >= -1e-6)


def test_beta_to_zero_is_argmax():
  q = jnp.array([[0.1, 0.5, 0.3], [2.0, -1.0, 1.9]])
  np.testing.assert_array_equal(qp.qprobe_weights(q, 0.0), [[0, 1, 0], [1, 0, 0]])
  np.testing.assert_allclose(qp.qprobe_weights(q, 1e-4), [[0, 1, 0], [1, 0, 0]], atol=1e-6)
  np.testing.assert_array_equal(
    qp.qprobe_weights(q, 0.0, mask=jnp.array([[1, 0, 1], [0, 1, 1]], bool)), [[0, 0, 1], [0, 0, 1]]
  )


def test_selection_by_hand_and_mask():
  q = jnp.array([[0.0, np.log(3.0), 5.0]])
  w = qp.qprobe_weights(q, 1.0, mask=jnp.array([[True, True, False]]))
  np.testing.assert_allclose(w, [[0.25, 0.75, 0.0]], rtol=1e-6)


def test_expected_reward_equals_monte_carlo():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
  r = jnp.asarray(rng.integers(0, 2, (4, 8)), jnp.float32)
  exact = np.asarray(qp.expected_reward(q, r, 0.5))
  draws = jax.vmap(lambda k: qp.select(k, q, 0.5))(jax.random.split(jax.random.key(0), 20000))
  mc = np.asarray(r)[np.arange(4)[None], np.asarray(draws)].mean(0)
  np.testing.assert_allclose(mc, exact, atol=0.02)


def test_pg_gradient_does_not_depend_on_baseline():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(3, 10)), jnp.float32)
  r = jnp.asarray(rng.integers(0, 2, (3, 10)), jnp.float32)
  g0 = jax.grad(lambda q: qp.pg_loss(q, r).sum())(q)
  g1 = jax.grad(lambda q: qp.pg_loss(q, r, baseline=0.7).sum())(q)
  np.testing.assert_allclose(g0, g1, atol=1e-6)
  assert not np.allclose(qp.pg_loss(q, r), qp.pg_loss(q, r, baseline=0.7))


def test_objectives_by_hand():
  np.testing.assert_allclose(qp.mse_loss(jnp.array(0.5), 1.0), 0.25)
  np.testing.assert_allclose(qp.bce_loss(jnp.array(0.0), 1.0), np.log(2), rtol=1e-6)
  np.testing.assert_allclose(qp.bradley_terry_loss(jnp.array(1.0), jnp.array(1.0)), np.log(2), rtol=1e-6)
  np.testing.assert_allclose(qp.hinge_loss(jnp.array(0.3), jnp.array(0.0)), 0.7, rtol=1e-6)
  np.testing.assert_allclose(qp.pg_loss(jnp.array([[0.0, 0.0]]), jnp.array([[1.0, 0.0]])), [-0.5])


def test_groups_never_mix_prompts_and_reshuffle():
  ids = np.repeat(np.arange(5), 23)
  g0 = qp.pg_groups(ids, 10, seed=0, epoch=0)
  g1 = qp.pg_groups(ids, 10, seed=0, epoch=1)
  assert g0.shape == (10, 10)
  assert all(len(set(ids[row])) == 1 for row in g0)
  assert len(set(g0.ravel())) == g0.size  # disjoint
  assert not np.array_equal(np.sort(g0, axis=None), np.sort(g1, axis=None)) or not np.array_equal(g0, g1)
  np.testing.assert_array_equal(g0, qp.pg_groups(ids, 10, seed=0, epoch=0))


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: qp.qprobe_weights(jnp.ones((3, 1))), "k >= 2"),
    (lambda: qp.qprobe_weights(jnp.ones((3, 4)), -0.1), "beta"),
    (lambda: qp.qprobe_weights(jnp.ones(4)), r"\[prompts, k\]"),
    (lambda: qp.expected_reward(jnp.ones((2, 3)), jnp.ones((2, 4))), "rewards shape"),
    (lambda: qp.pg_groups(np.array([0, 0, 1]), 2, seed=0, epoch=0), "fewer than group_size"),
    (lambda: qp.train_probe(np.full((4, 2), np.nan), np.ones(4), np.zeros(4), epochs=1), "NaN"),
    (lambda: qp.train_probe(np.ones((4, 2)), np.ones(3), epochs=1), "rewards"),
    (lambda: qp.train_probe(np.ones((4, 2)), np.ones(4), objective="pg", epochs=1), "prompt_ids"),
    (lambda: qp.PrecomputedEmbeddings(np.ones((2, 3, 4)), np.ones((2, 4))), "features must be"),
  ],
)
def test_bad_inputs(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_nan_q_treated_as_masked():
  w = qp.qprobe_weights(jnp.array([[0.0, jnp.nan, 1.0]]), 1.0)
  assert np.isfinite(w).all() and float(w[0, 1]) == 0.0


def test_selection_approaches_tilted_policy_as_k_grows():
  """The KL claim: P_k -> pi_base exp(Q / beta) / Z."""
  pi = np.array([0.5, 0.3, 0.15, 0.05])
  q = np.array([0.0, 0.2, 0.6, 1.0])
  beta = 0.3
  target = np.asarray(qp.tilted_distribution(jnp.log(pi), q, beta))

  def tv(k, n=20000, seed=0):
    key_a, key_s = jax.random.split(jax.random.key(seed))
    actions = jax.random.categorical(key_a, jnp.log(pi), shape=(n, k))
    picked = qp.select(key_s, jnp.asarray(q)[actions], beta)
    chosen = np.asarray(actions)[np.arange(n), np.asarray(picked)]
    freq = np.bincount(chosen, minlength=4) / n
    return 0.5 * np.abs(freq - target).sum()

  tvs = [tv(k) for k in (2, 8, 64, 512)]
  assert tvs[0] > tvs[1] > tvs[2] > tvs[3]
  # The finite-k bias shrinks like 1/k; 20000 draws add ~0.005 of sampling noise.
  assert tvs[0] > 0.1 and tvs[3] < 0.015


def _toy(seed=0, prompts=60, k=20, d=8):
  theta = np.random.default_rng(123).normal(size=d)  # the same task for every split
  rng = np.random.default_rng(seed)
  phi = rng.normal(size=(prompts, k, d)).astype(np.float32)
  r = (phi @ theta + rng.normal(0, 0.5, (prompts, k)) > 0.8).astype(np.float32)
  return phi, r


@pytest.mark.parametrize("objective", ["mse", "ce", "pg"])
def test_trained_probe_beats_random_selection(objective):
  phi, r = _toy()
  emb = qp.PrecomputedEmbeddings(phi, r)
  x, y, ids = emb.flat()
  res = qp.train_probe(x, y, ids, objective=objective, epochs=40, learning_rate=3e-2, batch_size=200)
  assert res.history[-1] < res.history[0]
  phi_t, r_t = _toy(seed=1)
  q = res.probe(jnp.asarray(phi_t))
  gain = float(qp.expected_reward(q, r_t, 0.1).mean()) - float(r_t.mean())
  assert gain > 0.15, gain


def test_preference_objectives_learn_the_ranking(tmp_path):
  phi, r = _toy()
  x = phi.reshape(-1, phi.shape[-1])
  score = x @ np.linalg.lstsq(x, r.reshape(-1), rcond=None)[0]
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, len(x), (2, 2000))
  pairs = np.where((score[a] > score[b])[:, None], np.c_[a, b], np.c_[b, a])
  for objective in ("bt", "hinge"):
    res = qp.train_probe(
      x, r.reshape(-1), objective=objective, pairs=pairs, epochs=30, learning_rate=3e-2, batch_size=500
    )
    qv = np.asarray(res.probe(jnp.asarray(x)))
    agree = np.mean(qv[pairs[:, 0]] > qv[pairs[:, 1]])
    assert agree > 0.9, (objective, agree)
  path = tmp_path / "emb.npz"
  qp.PrecomputedEmbeddings.save(path, phi, r)
  loaded = qp.PrecomputedEmbeddings.load(path)
  np.testing.assert_array_equal(loaded.features, phi)
