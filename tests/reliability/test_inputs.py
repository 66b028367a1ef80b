"""Hostile inputs: hyper-parameters as numpy/jax/traced scalars, labels, masks,
values up to float32's max, shapes that would make a sampler loop forever."""

import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxweights as jw
from jaxweights import noisy_labels as nl
from jaxweights import normalize as nz
from jaxweights import q_probe as qp

LOSSES = jnp.array([0.5, 1.0, 2.0, 4.0])
SCALARS = [lambda v: v, np.float32, np.float64, lambda v: jnp.asarray(v, jnp.float32)]


@pytest.mark.parametrize("wrap", SCALARS)
def test_invalid_concrete_hyperparameters_raise_whatever_their_type(wrap):
  for bad in (-1.0, 0.0, float("nan")):
    with pytest.raises(ValueError, match="temperature"):
      jw.linupper_weights(LOSSES, r=wrap(bad))
  for bad in (-1.0, 0.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="delta"):
      jw.linupper_weights(LOSSES, delta=wrap(bad))
  for bad in (float("nan"), float("inf")):
    with pytest.raises(ValueError, match="tau"):
      jw.presence_weights(LOSSES, tau=wrap(bad))
  for bad in (-0.1, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="beta"):
      qp.qprobe_weights(LOSSES[None], wrap(bad))
  with pytest.raises(ValueError, match="alpha"):
    nl.dirichlet_weights(jax.random.key(0), LOSSES, alpha=wrap(float("inf")), num_draws=2)


def test_invalid_traced_hyperparameters_have_a_documented_safe_result():
  uniform = np.full(4, 0.25)
  for r in (-1.0, float("nan")):  # uniform, never inverted, never NaN
    np.testing.assert_allclose(jax.jit(lambda r: jw.linupper_weights(LOSSES, r=r))(r), uniform, rtol=1e-6)
  # an annealed r that reaches 0 is near argmax, not NaN
  np.testing.assert_allclose(
    jax.jit(lambda r: jw.linupper_weights(LOSSES, r=r))(0.0), np.eye(4)[3], atol=1e-6
  )
  for d in (-1.0, 0.0, float("nan")):  # uniform, never inverted
    np.testing.assert_allclose(
      jax.jit(lambda d: jw.quadratic_weights(LOSSES, delta=d))(d), uniform, rtol=1e-6
    )
  for t in (float("nan"), float("inf")):
    np.testing.assert_allclose(jax.jit(lambda t: jw.presence_weights(LOSSES, tau=t))(t), uniform, rtol=1e-6)
  best = np.eye(4)[3]
  for b in (-1.0, float("nan")):  # argmax (beta = 0), never the worst candidate
    np.testing.assert_allclose(jax.jit(lambda b: qp.qprobe_weights(LOSSES[None], b))(b)[0], best)
  np.testing.assert_allclose(
    jax.jit(lambda r: jw.linupper_weights(LOSSES, r=r))(1e-9), jw.linupper_weights(LOSSES, r=1e-6), rtol=1e-6
  )  # tiny: near argmax


def test_out_of_range_labels_raise_when_concrete():
  logits = jnp.zeros((3, 4))
  with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
    jw.cross_entropy(logits, jnp.array([0, -1, 2]))
  with pytest.raises(ValueError, match="noisy_labels"):
    nl.importance_weights(jnp.full((3, 4), 0.25), jnp.array([0, 4, 1]), np.eye(4))
  # padding ids are fine where the token mask says they do not count
  tok = jnp.zeros((2, 3, 4))
  targets = jnp.array([[1, 2, -100], [0, -100, -100]])
  losses, mask = jw.token_mean_cross_entropy(tok, targets, targets >= 0)
  assert np.isfinite(np.asarray(losses)).all()
  with pytest.raises(ValueError, match="targets"):
    jw.token_mean_cross_entropy(tok, targets)
  # traced: NaN for that sample only (the step drops and counts it)
  ce = jax.jit(jw.cross_entropy)(logits, jnp.array([0, -1, 2]))
  ce = np.asarray(ce)
  assert np.isnan(ce[1]) and np.isfinite(ce[[0, 2]]).all()


def test_float_masks_must_be_zero_or_one():
  for bad in (0.5, float("nan"), 2.0):
    with pytest.raises(ValueError, match="only 0 and 1"):
      jw.linupper_weights(LOSSES, mask=jnp.array([1.0, bad, 1.0, 0.0]))
  w = jw.linupper_weights(LOSSES, mask=jnp.array([1.0, 1.0, 0.0, 1.0]))
  assert w[2] == 0 and abs(float(w.sum()) - 1) < 1e-6
  traced = jax.jit(lambda m: jw.linupper_weights(LOSSES, mask=m))(jnp.array([1.0, 0.5, jnp.nan, 1.0]))
  assert traced[1] == 0 and traced[2] == 0 and abs(float(traced.sum()) - 1) < 1e-6


@pytest.mark.parametrize("scale", [1.0, 1e19, 1e30, 3e38])
def test_normalisers_hold_up_to_float32_max(scale):
  x = jnp.array([1.0, 2.0, 3.0]) * (scale / 3.0)
  np.testing.assert_allclose(nz.zscore(x), [-1.2247, 0.0, 1.2247], atol=1e-3)
  np.testing.assert_allclose(nz.minmax(x), [-1.0, 0.0, 1.0], atol=1e-6)
  np.testing.assert_allclose(nz.sum_to_one(x), [1 / 6, 2 / 6, 3 / 6], rtol=1e-5)
  assert float(jnp.max(jnp.abs(nz.minmax(x)))) <= 1.0


def test_denormal_weights_count_as_zero_a_stated_limit():
  # XLA flushes float32 denormals (< ~1.2e-38) to zero on CPU and GPU: documented.
  np.testing.assert_array_equal(nz.sum_to_one(jnp.array([1e-40, 1e-40])), [0.0, 0.0])
  np.testing.assert_allclose(nz.sum_to_one(jnp.array([1e-37, 3e-37])), [0.25, 0.75], rtol=1e-5)


def test_gamma_sampler_never_loops_forever():
  t0 = time.time()
  out = nl.log_gamma(jax.random.key(0), jnp.array([1.0, jnp.nan, jnp.inf, -1.0, 0.0, 1e-30]), (6,))
  assert time.time() - t0 < 60
  out = np.asarray(out)
  assert np.isfinite(out[[0, 5]]).all() and np.isnan(out[1:5]).all()


def test_unreachable_coordinator_fails_within_its_timeout_with_a_message():
  code = "from jaxweights import distributed as d; d.initialize('127.0.0.1:1', 2, 1, timeout_s=3)"
  t0 = time.time()
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  elapsed = time.time() - t0
  assert proc.returncode != 0 and elapsed < 60
  assert "could not reach the coordinator at 127.0.0.1:1 within 3 s" in proc.stderr
  bad = subprocess.run(
    [sys.executable, "-c", "from jaxweights import distributed as d; d.initialize('127.0.0.1:5', 2, 2)"],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert "process_id must be in [0, 2)" in bad.stderr
