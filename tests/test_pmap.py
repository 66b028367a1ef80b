"""Legacy jax.pmap loops: every weight function's axis_name path equals the global result."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxweights as jw
from jaxweights import noisy_labels as nl
from jaxweights import normalize

N_DEV = 8


def case(seed=0, n=32):
  rng = np.random.default_rng(seed)
  x = rng.gamma(2.0, 1.0, n).astype(np.float32)
  mask = rng.random(n) > 0.2
  return x, mask


FNS = {
  "minmax": lambda x, m, a: normalize.minmax(x, m, axis_name=a),
  "zscore": lambda x, m, a: normalize.zscore(x, m, axis_name=a),
  "softmax": lambda x, m, a: normalize.softmax(x, m, temperature=0.7, axis_name=a),
  "mean_one": lambda x, m, a: normalize.mean_one(x, m, axis_name=a),
  "linupper": lambda x, m, a: jw.linupper_weights(x, r=0.4, mask=m, axis_name=a),
  "quadratic": lambda x, m, a: jw.quadratic_weights(x, r=1.0, mask=m, axis_name=a),
  "extremes": lambda x, m, a: jw.extremes_weights(x, r=0.4, mask=m, axis_name=a),
  "presence": lambda x, m, a: jw.presence_weights(x, tau=-1.0, mask=m, axis_name=a),
  "reweight": lambda x, m, a: nl.reweight(x, m, axis_name=a),
  "rent": lambda x, m, a: nl.resampling_weights(jax.random.key(3), x, num_draws=64, mask=m, axis_name=a),
}


@pytest.mark.parametrize("name", sorted(FNS))
def test_pmap_axis_name_matches_global(name):
  assert jax.device_count() == N_DEV
  fn = FNS[name]
  x, mask = case()
  want = np.asarray(fn(jnp.asarray(x), jnp.asarray(mask), None))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    mapped = jax.pmap(functools.partial(fn, a="batch"), axis_name="batch")
    got = mapped(x.reshape(N_DEV, -1), mask.reshape(N_DEV, -1))
  np.testing.assert_allclose(np.asarray(got).reshape(-1), want, rtol=1e-5, atol=1e-7)
