"""Normalisers: hand computations, invariants, masks and degenerate batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxweights import normalize

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
batches = hnp.arrays(np.float32, st.integers(1, 33), elements=finite)


def test_minmax_by_hand():
  x = jnp.array([1.0, 2.0, 5.0])
  np.testing.assert_allclose(normalize.minmax(x), [-1.0, -0.5, 1.0], rtol=1e-6)


def test_zscore_by_hand():
  x = jnp.array([1.0, 2.0, 3.0])
  std = np.sqrt(2.0 / 3.0)
  np.testing.assert_allclose(normalize.zscore(x, eps=0.0), [-1 / std, 0.0, 1 / std], rtol=1e-6)


def test_softmax_by_hand_with_temperature_and_mask():
  x = jnp.array([0.0, 1.0, 100.0])
  w = normalize.softmax(x, jnp.array([True, True, False]), temperature=0.5)
  e = np.exp([0.0, 2.0])
  np.testing.assert_allclose(w, [e[0] / e.sum(), e[1] / e.sum(), 0.0], rtol=1e-6)


@given(batches)
def test_minmax_range_and_affine_invariance(x):
  h = np.asarray(normalize.minmax(x))
  assert np.all(h >= -1 - 1e-6) and np.all(h <= 1 + 1e-6)
  if np.ptp(x) > 1e-2:
    h2 = np.asarray(normalize.minmax(3.0 * x + 7.0))
    np.testing.assert_allclose(h, h2, atol=1e-4)


@given(batches, st.floats(0.05, 50.0))
def test_softmax_is_a_distribution_and_permutation_equivariant(x, temperature):
  w = np.asarray(normalize.softmax(x, temperature=temperature))
  assert np.all(w >= 0) and np.isfinite(w).all()
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
  perm = np.random.default_rng(0).permutation(len(x))
  wp = np.asarray(normalize.softmax(x[perm], temperature=temperature))
  np.testing.assert_allclose(wp, w[perm], rtol=1e-5, atol=1e-7)


@given(batches)
def test_sum_and_mean_scaling(x):
  w = np.abs(x) + 0.1
  mask = np.arange(len(x)) % 3 != 1
  s = np.asarray(normalize.sum_to_one(w, mask))
  m = np.asarray(normalize.mean_one(w, mask))
  np.testing.assert_allclose(s.sum(), 1.0, rtol=1e-5)
  np.testing.assert_allclose(m.sum(), mask.sum(), rtol=1e-5)
  assert np.all(s[~mask] == 0) and np.all(m[~mask] == 0)


def test_infinite_temperature_is_exactly_uniform():
  w = normalize.softmax(jnp.array([3.0, -2.0, 9.0, 0.5]), temperature=float("inf"))
  np.testing.assert_array_equal(w, np.full(4, 0.25, np.float32))


@pytest.mark.parametrize(
  "fn", [normalize.minmax, normalize.zscore, normalize.softmax, normalize.sum_to_one, normalize.mean_one]
)
def test_all_masked_gives_zeros_not_nan(fn):
  out = np.asarray(fn(jnp.array([1.0, 2.0, 3.0]), jnp.zeros(3, bool)))
  np.testing.assert_array_equal(out, np.zeros(3))


@pytest.mark.parametrize("fn", [normalize.minmax, normalize.zscore])
def test_all_equal_and_single_sample_give_zero(fn):
  np.testing.assert_array_equal(fn(jnp.full(5, 2.5)), np.zeros(5))
  np.testing.assert_array_equal(fn(jnp.array([4.0])), np.zeros(1))


def test_effective_sample_size():
  np.testing.assert_allclose(normalize.effective_sample_size(jnp.full(8, 1 / 8)), 8.0)
  np.testing.assert_allclose(normalize.effective_sample_size(jnp.array([1.0, 0.0, 0.0])), 1.0)


@pytest.mark.parametrize("t", [0.0, -1.0, float("nan")])
def test_bad_temperature_raises(t):
  with pytest.raises(ValueError, match="temperature"):
    normalize.softmax(jnp.ones(3), temperature=t)


def test_traced_zero_temperature_is_clamped_not_nan():
  w = jax.jit(lambda t: normalize.softmax(jnp.array([0.0, 1.0]), temperature=t))(0.0)
  np.testing.assert_allclose(w, [0.0, 1.0])


def test_mask_shape_mismatch_raises():
  with pytest.raises(ValueError, match="mask"):
    normalize.minmax(jnp.ones(4), jnp.ones(3, bool))
