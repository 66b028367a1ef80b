"""PRESENCE weights, its train step (book-keeping = two passes), TracIn."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxweights as jw
from jaxweights import self_influence as si
from jaxweights.families.self_influence.grad_norms import per_sample_grad_norms


def lm_loss(model, batch):
  logits = model(batch["tokens"][:, :-1])
  l, m = jw.token_mean_cross_entropy(logits, batch["tokens"][:, 1:], batch["mask"][:, 1:])
  return jw.LossOutput(l, m)


def setup(b=16, t=10):
  cfg = jw.TransformerConfig(vocab_size=17, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=t)
  rng = np.random.default_rng(0)
  mask = np.ones((b, t + 1), bool)
  mask[3] = False
  mask[5, 4:] = False
  batch = {"tokens": jnp.asarray(rng.integers(0, 17, (b, t + 1))), "mask": jnp.asarray(mask)}
  return jw.TransformerLM(cfg, rngs=nnx.Rngs(0)), batch


def test_presence_weights_by_hand():
  s = jnp.array([1.0, 2.0, 3.0])
  z = (np.array([1.0, 2.0, 3.0]) - 2.0) / np.sqrt(2 / 3)
  for tau in (1.0, -1.0, 2.0):
    e = np.exp(tau * z)
    np.testing.assert_allclose(si.presence_weights(s, tau=tau), e / e.sum(), rtol=1e-5)
  np.testing.assert_allclose(si.presence_weights(s, tau=0.0), np.full(3, 1 / 3), rtol=1e-6)
  w = si.presence_weights(jnp.array([1.0, jnp.nan, 3.0]), tau=1.0)
  assert w[1] == 0 and np.isclose(float(w.sum()), 1.0)
  with pytest.raises(ValueError, match="tau"):
    si.presence_weights(s, tau=float("inf"))


def test_two_stage_schedule():
  sched = si.two_stage_tau(5)
  assert [float(sched(s)) for s in (0, 4, 5, 100)] == [1.0, 1.0, -1.0, -1.0]
  with pytest.raises(ValueError):
    si.two_stage_tau(-1)


def run_step(weighting, mesh=None, mode="jit"):
  model, batch = setup()
  tx = optax.sgd(0.5)
  graphdef, state = jw.init_train_state(model, tx, weighting)
  step = jw.make_train_step(graphdef, lm_loss, tx, weighting, mesh=mesh, mode=mode)
  if mesh is not None:
    state, batch = jw.replicate(state, mesh), jw.shard_batch(batch, mesh)
  new, metrics = step(state, batch)
  return new, jw.host_metrics(metrics), model, batch


def max_diff(a, b):
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


# Per-sample book-keeping is also checked against the two-pass step on every model of
# the zoo (tests/test_model_zoo.py); the microbatch case runs here in the fast suite.
@pytest.mark.parametrize("microbatches, tau", [pytest.param(None, 1.0, marks=pytest.mark.slow), (4, -1.0)])
def test_bookkeeping_step_equals_two_pass_step_and_hand_update(microbatches, tau):
  one, m1, model, batch = run_step(si.presence_weighting(tau=tau, microbatches=microbatches))
  two, m2, _, _ = run_step(si.presence_weighting(tau=tau, microbatches=microbatches, bookkeeping="never"))
  assert max_diff(one.params, two.params) < 1e-5
  for k in ("loss_mean", "loss_weighted", "weight_max", "ess"):
    np.testing.assert_allclose(m1[k], m2[k], rtol=1e-4, err_msg=k)
  # By hand: norms -> weights -> SGD on sum w l.
  norms = per_sample_grad_norms(lm_loss, model, batch, method="vmap", microbatches=microbatches).total
  valid = np.asarray(batch["mask"][:, 1:].any(1))
  if microbatches is None:
    w = si.presence_weights(norms, tau=tau, mask=valid)
  else:
    gm = valid.reshape(microbatches, -1)
    gw = np.asarray(si.presence_weights(norms, tau=tau, mask=gm.any(1)))
    w = (gw[:, None] * gm / gm.sum(1, keepdims=True)).reshape(-1)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  g = jax.grad(lambda p: jnp.sum(w * lm_loss(nnx.merge(graphdef, p, rest), batch).loss))(params)
  expected = jax.tree.map(lambda p, gg: p - 0.5 * gg, params, g)
  assert max_diff(one.params, expected) < 1e-5
  assert m1["weight_max"] == pytest.approx(float(np.max(w)), rel=1e-4)


def test_direct_favours_and_inverse_suppresses_high_influence():
  _, batch_model_m, model, batch = run_step(si.presence_weighting(tau=1.0))
  norms = np.asarray(per_sample_grad_norms(lm_loss, model, batch).total)
  for tau in (1.0, -1.0):
    valid = np.asarray(batch["mask"][:, 1:].any(1))
    w = np.asarray(si.presence_weights(norms, tau=tau, mask=valid))
    hi, lo = np.argmax(np.where(valid, norms, -1)), np.argmin(np.where(valid, norms, np.inf))
    assert (w[hi] > w[lo]) == (tau > 0)


@pytest.mark.parametrize("method", ["vmap", "jvp"])
def test_other_methods_run_through_prepare(method):
  new, metrics, _, _ = run_step(si.presence_weighting(tau=-1.0, method=method, num_probes=4))
  assert metrics["update_skipped"] == 0 and np.isfinite(metrics["loss_weighted"])
  assert metrics["ess"] < metrics["n_valid"]


@pytest.mark.parametrize("microbatches", [None, 2])
def test_one_device_equals_eight_devices(microbatches):
  weighting = si.presence_weighting(tau=-1.0, microbatches=microbatches)
  ref, mref, _, _ = run_step(weighting, mesh=jw.data_mesh(jax.devices()[:1]))
  if microbatches is not None:
    # Microbatches are per device: 2 per device on 8 devices is 16 groups of 1,
    # so compare against the same grouping on one device.
    ref, mref, _, _ = run_step(
      si.presence_weighting(tau=-1.0, microbatches=16), mesh=jw.data_mesh(jax.devices()[:1])
    )
  for mode in ("jit", "shard_map"):
    if mode == "jit" and microbatches is not None:
      continue  # under jit the batch is global: microbatches are global groups
    got, m, _, _ = run_step(weighting, mesh=jw.data_mesh(), mode=mode)
    assert max_diff(got.params, ref.params) < 1e-5, mode
    np.testing.assert_allclose(m["weight_max"], mref["weight_max"], rtol=1e-4)


def test_tracin_sums_checkpoints():
  model, batch = setup()
  other = jw.TransformerLM(model.cfg, rngs=nnx.Rngs(1))
  s0 = si.self_influence_scores(lm_loss, model, [batch])
  s1 = si.self_influence_scores(lm_loss, other, [batch])
  t = si.tracin_self_influence(lm_loss, [model, other], [0.1, 0.3], [batch, batch])
  np.testing.assert_allclose(t, 0.1 * np.concatenate([s0, s0]) + 0.3 * np.concatenate([s1, s1]), rtol=1e-5)
  with pytest.raises(ValueError, match="one learning rate per checkpoint"):
    si.tracin_self_influence(lm_loss, [model], [0.1, 0.2], [batch])


def test_bad_arguments():
  with pytest.raises(ValueError, match="microbatches"):
    si.presence_weighting(microbatches=0)
  with pytest.raises(ValueError, match="bookkeeping"):
    si.presence_weighting(bookkeeping="sometimes")
  with pytest.raises(ValueError, match="tau"):
    si.presence_weighting(tau=float("nan"))
