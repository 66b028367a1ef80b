"""Loss-based weights (Sow et al.): formulas, invariants, sharding, bad inputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxweights as jw

STRATS = ["linupper", "quadratic", "extremes", "uniform"]
losses_st = hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(0.0, 50.0, width=32))


def reference_weights(losses, strategy, r, delta=1.0):
  """The paper's formulas in plain numpy (float64)."""
  l = np.asarray(losses, np.float64)
  h = delta * (2 * l - l.max() - l.min()) / max(l.max() - l.min(), 1e-6)
  f = {
    "linupper": np.minimum(h + delta, delta),
    "quadratic": 1 - h**2 / delta**2,
    "extremes": np.abs(h),
    "uniform": np.zeros_like(h),
  }[strategy]
  e = np.exp(f / r - (f / r).max())
  return e / e.sum()


def test_linupper_by_hand():
  # losses 1, 2, 3 -> h = -1, 0, 1 -> f = 0, 1, 1 -> softmax(f / 0.5)
  w = jw.linupper_weights(jnp.array([1.0, 2.0, 3.0]), r=0.5)
  e = np.exp([0.0, 2.0, 2.0])
  np.testing.assert_allclose(w, e / e.sum(), rtol=1e-6)


def test_quadratic_and_extremes_by_hand():
  l = jnp.array([1.0, 2.0, 3.0])  # h = -1, 0, 1
  e = np.exp([0.0, 1.0, 0.0])
  np.testing.assert_allclose(jw.quadratic_weights(l, r=1.0), e / e.sum(), rtol=1e-6)
  e = np.exp([1.0, 0.0, 1.0])
  np.testing.assert_allclose(jw.extremes_weights(l, r=1.0), e / e.sum(), rtol=1e-6)


def test_delta_scales_h():
  l = jnp.array([1.0, 2.0, 3.0])
  for s in STRATS:
    np.testing.assert_allclose(
      jw.loss_based.WEIGHTS[s](l, r=0.7, delta=2.0), reference_weights(l, s, 0.7, delta=2.0), rtol=1e-5
    )


@settings(max_examples=20)
@given(losses_st, st.sampled_from(STRATS), st.floats(0.1, 10.0))
def test_matches_reference_formula(losses, strategy, r):
  w = jw.loss_based.WEIGHTS[strategy](losses, r=r)
  np.testing.assert_allclose(w, reference_weights(losses, strategy, r), rtol=1e-4, atol=1e-7)


@given(losses_st, st.sampled_from(STRATS), st.floats(0.1, 10.0))
def test_invariants(losses, strategy, r):
  w = np.asarray(jw.loss_based.WEIGHTS[strategy](losses, r=r))
  assert np.all(w >= 0)
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
  # Permutation equivariance.
  perm = np.random.default_rng(len(losses)).permutation(len(losses))
  np.testing.assert_allclose(
    jw.loss_based.WEIGHTS[strategy](losses[perm], r=r), w[perm], rtol=1e-5, atol=1e-8
  )
  # Max/min ratio bound exp(delta / r) for every strategy with f in [0, 1].
  assert w.max() / w.min() <= np.exp(1.0 / r) * (1 + 1e-4)


@given(losses_st, st.sampled_from(STRATS), st.floats(0.1, 5.0), st.floats(-10.0, 10.0))
def test_unchanged_by_shift_and_scale(losses, strategy, scale, shift):
  if np.ptp(losses) < 1e-2:
    return  # below the eps floor the normalisation is deliberately not scale-free
  w1 = jw.loss_based.WEIGHTS[strategy](losses, r=0.5)
  w2 = jw.loss_based.WEIGHTS[strategy](losses * scale + shift, r=0.5)
  np.testing.assert_allclose(w1, w2, rtol=1e-3, atol=1e-6)


@given(losses_st, st.sampled_from(STRATS))
def test_uniform_as_r_grows(losses, strategy):
  n = len(losses)
  w = np.asarray(jw.loss_based.WEIGHTS[strategy](losses, r=1e4))
  np.testing.assert_allclose(w, np.full(n, 1 / n), rtol=1e-3)
  w = np.asarray(jw.loss_based.WEIGHTS[strategy](losses, r=float("inf")))
  np.testing.assert_allclose(w, np.full(n, 1 / n), rtol=1e-6)


def test_uniform_strategy_is_really_uniform():
  # Named after the reference README bug: its "uniform" returned h, not uniform.
  w = jw.loss_based.WEIGHTS["uniform"](jnp.array([0.1, 5.0, 2.0, 9.0]), r=0.1)
  np.testing.assert_array_equal(w, np.full(4, 0.25, np.float32))


def test_linupper_orders_by_loss_and_caps():
  w = np.asarray(jw.linupper_weights(jnp.array([0.0, 1.0, 2.0, 3.0, 4.0]), r=0.4))
  assert w[0] < w[1] < w[2]
  np.testing.assert_allclose(w[2:], w[2])  # capped: h >= 0 all get f = delta


def test_mask_excludes_padding_from_statistics():
  l = jnp.array([1.0, 2.0, 3.0, 1000.0])
  w = jw.linupper_weights(l, r=0.5, mask=jnp.array([True, True, True, False]))
  np.testing.assert_allclose(w[:3], reference_weights([1.0, 2.0, 3.0], "linupper", 0.5), rtol=1e-6)
  assert w[3] == 0


def test_nonfinite_losses_get_zero_weight():
  l = jnp.array([1.0, jnp.nan, 3.0, jnp.inf, 2.0])
  for s in STRATS:
    w = np.asarray(jw.loss_based.WEIGHTS[s](l, r=1.0))
    assert np.isfinite(w).all() and w[1] == 0 and w[3] == 0
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[[0, 2, 4]], reference_weights([1.0, 3.0, 2.0], s, 1.0), rtol=1e-5)


def test_degenerate_batches():
  for s in STRATS:
    np.testing.assert_allclose(jw.loss_based.WEIGHTS[s](jnp.array([3.0])), [1.0])
    np.testing.assert_allclose(jw.loss_based.WEIGHTS[s](jnp.full(4, 2.0)), np.full(4, 0.25))
    np.testing.assert_array_equal(jw.loss_based.WEIGHTS[s](jnp.ones(3), mask=jnp.zeros(3, bool)), np.zeros(3))


def test_weights_carry_no_gradient():
  g = jax.grad(lambda l: jnp.sum(jw.linupper_weights(l, r=0.3) * l))(jnp.array([1.0, 2.0, 4.0]))
  np.testing.assert_allclose(g, jw.linupper_weights(jnp.array([1.0, 2.0, 4.0]), r=0.3), rtol=1e-6)


@pytest.mark.parametrize(
  "kwargs, match",
  [(dict(r=0.0), "temperature"), (dict(r=-1.0), "temperature"), (dict(delta=0.0), "delta")],
)
@pytest.mark.parametrize("strategy", STRATS)
def test_bad_hyperparameters_raise(kwargs, match, strategy):
  with pytest.raises(ValueError, match=match):
    jw.loss_based.WEIGHTS[strategy](jnp.ones(3), **kwargs)
  with pytest.raises(ValueError, match=match):
    jw.loss_based.WEIGHTINGS[strategy](**kwargs)


@pytest.mark.parametrize("bad", [jnp.ones((2, 3)), jnp.ones(()), jnp.ones((0,)), jnp.ones(3, jnp.int32)])
def test_bad_loss_arrays_raise(bad):
  with pytest.raises((ValueError, TypeError), match="losses"):
    jw.linupper_weights(bad)


def test_warmup_temperature():
  sched = jw.warmup_temperature(0.4, 10)
  assert float(sched(0)) == np.inf and float(sched(9)) == np.inf
  assert float(sched(10)) == pytest.approx(0.4)
  sched = jw.warmup_temperature(lambda s: 1.0 + s, 5)
  assert float(sched(7)) == pytest.approx(3.0)
  with pytest.raises(ValueError):
    jw.warmup_temperature(0.4, -1)
  with pytest.raises(ValueError):
    jw.warmup_temperature(0.0, 3)


def test_jit_without_retracing():
  traces = []

  @jax.jit
  def f(l, r):
    traces.append(1)
    return jw.linupper_weights(l, r=r)

  for r in (0.3, 0.5, 1.0):
    f(jnp.arange(8.0), r)
  assert len(traces) == 1


# --- global batch: 1 device vs 8 devices ---------------------------------------


def _global_case(seed=0, n=32):
  rng = np.random.default_rng(seed)
  losses = rng.gamma(2.0, 1.0, n).astype(np.float32)
  mask = rng.random(n) > 0.2
  return jnp.asarray(losses), jnp.asarray(mask)


@pytest.mark.parametrize("strategy", STRATS)
def test_weights_not_sliced_by_local_rank(strategy):
  """Named after the reference bug: gathered weights sliced by LOCAL rank.

  The same global batch must get the same weights on 1 device, sharded over 8
  devices under jit, and under shard_map with an axis name.
  """
  assert jax.device_count() == 8
  losses, mask = _global_case()
  fn = functools.partial(jw.loss_based.WEIGHTS[strategy], r=0.4)
  ref = jax.jit(fn)(losses, mask=mask)
  mesh = jw.data_mesh()
  sharding = NamedSharding(mesh, P("data"))
  sharded = jax.jit(fn)(jax.device_put(losses, sharding), mask=jax.device_put(mask, sharding))
  np.testing.assert_allclose(sharded, ref, rtol=1e-6)
  mapped = jax.jit(
    jax.shard_map(
      lambda l, m: fn(l, mask=m, axis_name="data"),
      mesh=mesh,
      in_specs=(P("data"), P("data")),
      out_specs=P("data"),
    )
  )(losses, mask)
  np.testing.assert_allclose(mapped, ref, rtol=1e-6)
  # The naive per-device computation differs: the test can fail.
  local = jax.jit(
    jax.shard_map(lambda l, m: fn(l, mask=m), mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P("data"))
  )(losses, mask)
  if strategy != "uniform":
    assert not np.allclose(local, ref, rtol=1e-3)
