"""Per-sample gradient norms: every exact method equals vmap(grad)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import jaxweights as jw
from jaxweights.families.self_influence.grad_norms import per_sample_grad_norms

RTOL = 1e-4


def assert_norms_equal(got, want):
  np.testing.assert_allclose(got.total, want.total, rtol=RTOL, atol=1e-6)
  assert set(got.by_layer) == set(want.by_layer)
  for k in want.by_layer:
    np.testing.assert_allclose(got.by_layer[k], want.by_layer[k], rtol=RTOL, atol=1e-6, err_msg=k)


class Layers(nnx.Module):
  """One of each supported layer, on inputs with a sequence axis."""

  def __init__(self, use_bias=True, ln_scale=True, ln_bias=True):
    rngs = nnx.Rngs(0)
    self.embed = nnx.Embed(5, 6, rngs=rngs)  # tiny vocab: token-id collisions
    self.ln = nnx.LayerNorm(6, use_scale=ln_scale, use_bias=ln_bias, rngs=rngs)
    self.dense = nnx.Linear(6, 7, use_bias=use_bias, rngs=rngs)
    self.out = nnx.Linear(7, 3, rngs=rngs)

  def __call__(self, ids):
    return self.out(jnp.tanh(self.dense(self.ln(self.embed(ids)))))


def seq_loss(model, batch):
  logits = model(batch["ids"])
  l, m = jw.token_mean_cross_entropy(logits, batch["y"], batch["mask"])
  return jw.LossOutput(l, m)


def seq_batch(b=6, t=9, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.ones((b, t), bool)
  mask[1, 3:] = False
  mask[4] = False  # empty sequence: norm 0
  return {
    "ids": jnp.asarray(rng.integers(0, 5, (b, t))),
    "y": jnp.asarray(rng.integers(0, 3, (b, t))),
    "mask": jnp.asarray(mask),
  }


@pytest.mark.parametrize("kwargs", [{}, {"use_bias": False}, {"ln_scale": False}, {"ln_bias": False}])
@pytest.mark.parametrize("t, rule", [(1, "auto"), (9, "ghost"), (9, "direct")])
def test_each_layer_type_matches_vmap(kwargs, t, rule):
  model, batch = Layers(**kwargs), seq_batch(t=t)
  if t == 1:
    batch["mask"] = batch["mask"].at[1].set(False)
  want = per_sample_grad_norms(seq_loss, model, batch, method="vmap")
  got = per_sample_grad_norms(seq_loss, model, batch, method="ghost", linear_rule=rule)
  assert_norms_equal(got, want)
  assert float(got.total[4]) == 0.0 and float(want.total[4]) == 0.0
  assert np.all(np.asarray(want.total)[[0, 2, 3, 5]] > 0)


def test_vmap_oracle_against_explicit_per_sample_grads():
  model, batch = Layers(), seq_batch()
  want = []
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  for i in range(6):
    one = jax.tree.map(lambda x: x[i : i + 1], batch)
    g = jax.grad(lambda p: jnp.sum(seq_loss(nnx.merge(graphdef, p, rest), one).loss))(params)
    want.append(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(g)))
  got = per_sample_grad_norms(seq_loss, model, batch, method="vmap", chunk_size=4)
  np.testing.assert_allclose(got.total, want, rtol=1e-5)


def lm_loss(model, batch):
  logits = model(batch["tokens"][:, :-1])
  l, m = jw.token_mean_cross_entropy(logits, batch["tokens"][:, 1:], batch["mask"][:, 1:])
  return jw.LossOutput(l, m)


def lm_setup(b=8, t=12):
  cfg = jw.TransformerConfig(vocab_size=13, d_model=16, n_layers=2, n_heads=2, d_ff=24, max_len=t)
  rng = np.random.default_rng(1)
  mask = np.ones((b, t + 1), bool)
  mask[2, 6:] = False
  return jw.TransformerLM(cfg, rngs=nnx.Rngs(0)), {
    "tokens": jnp.asarray(rng.integers(0, 13, (b, t + 1))),
    "mask": jnp.asarray(mask),
  }


def mlp_loss(model, batch):
  return jw.LossOutput(jw.cross_entropy(model(batch["x"]), batch["y"]))


def mlp_setup(b=16):
  rng = np.random.default_rng(2)
  return jw.MLP(10, [12, 8], 4, rngs=nnx.Rngs(0)), {
    "x": jnp.asarray(rng.normal(size=(b, 10)), jnp.float32),
    "y": jnp.asarray(rng.integers(0, 4, b)),
  }


@pytest.mark.parametrize("setup, loss", [(lm_setup, lm_loss), (mlp_setup, mlp_loss)])
def test_whole_models_match_vmap(setup, loss):
  model, batch = setup()
  want = per_sample_grad_norms(loss, model, batch, method="vmap")
  got = jax.jit(lambda b: per_sample_grad_norms(loss, model, b, method="ghost"))(batch)
  assert_norms_equal(got, want)
  # Every parameter of the model is covered.
  n_layers = len({"/".join(map(str, p[:-1])) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))})
  assert len(got.by_layer) == n_layers


def test_layer_subset():
  model, batch = lm_setup()
  sub = per_sample_grad_norms(lm_loss, model, batch, layers=["blocks/0"])
  assert sub.by_layer and all(k.startswith("blocks/0/") for k in sub.by_layer)
  full = per_sample_grad_norms(lm_loss, model, batch, method="vmap")
  np.testing.assert_allclose(
    sub.total, sum(v for k, v in full.by_layer.items() if k.startswith("blocks/0/")), rtol=RTOL
  )
  pred = per_sample_grad_norms(lm_loss, model, batch, layers=lambda p: p == "head")
  np.testing.assert_allclose(pred.total, full.by_layer["head"], rtol=RTOL)
  with pytest.raises(ValueError, match="selects no parameters"):
    per_sample_grad_norms(lm_loss, model, batch, layers=["decoder"])
  with pytest.raises(ValueError, match="selects no parameters"):
    per_sample_grad_norms(lm_loss, model, batch, layers=[])


def test_jvp_estimate_is_unbiased_within_its_variance():
  model, batch = mlp_setup()
  exact = np.asarray(per_sample_grad_norms(mlp_loss, model, batch, method="vmap").total)
  k = 512
  est = np.asarray(
    per_sample_grad_norms(mlp_loss, model, batch, method="jvp", num_probes=k, key=jax.random.key(0)).total
  )
  # (g.v)^2 = |g|^2 chi2_1: the k-probe mean has relative std sqrt(2 / k).
  z = (est - exact) / (exact * np.sqrt(2 / k))
  assert np.all(np.abs(z) < 4.5), z
  assert abs(z.mean()) < 4.5 / np.sqrt(len(z))  # no shared bias across samples
  # And it is really noisy at few probes (the test can fail).
  few = np.asarray(
    per_sample_grad_norms(mlp_loss, model, batch, method="jvp", num_probes=2, key=jax.random.key(1)).total
  )
  assert np.max(np.abs(few / exact - 1)) > 0.05


class WithConv(nnx.Module):
  def __init__(self):
    self.conv = nnx.Conv(1, 2, (3,), rngs=nnx.Rngs(0))
    self.head = nnx.Linear(2 * 5, 3, rngs=nnx.Rngs(1))

  def __call__(self, x):
    return self.head(self.conv(x).reshape(x.shape[0], -1))


def test_conv_is_exact_and_untapped_use_is_named_or_falls_back():
  model = WithConv()
  rng = np.random.default_rng(3)
  batch = {"x": jnp.asarray(rng.normal(size=(4, 5, 1)), jnp.float32), "y": jnp.asarray([0, 1, 2, 0])}
  want = per_sample_grad_norms(mlp_loss, model, batch, method="vmap")
  assert_norms_equal(per_sample_grad_norms(mlp_loss, model, batch), want)

  def reused(model, b):  # the head's kernel also read by plain code: an untapped use
    logits = model(b["x"]) + 0.1 * jnp.sum(model.head.kernel[...])
    return jw.LossOutput(jw.cross_entropy(logits, b["y"]))

  with pytest.raises(ValueError, match=r"'head/kernel': it is read outside its layer"):
    per_sample_grad_norms(reused, model, batch, fallback="error")
  assert_norms_equal(
    per_sample_grad_norms(reused, model, batch), per_sample_grad_norms(reused, model, batch, method="vmap")
  )


class Shared(nnx.Module):
  def __init__(self):
    self.dense = nnx.Linear(4, 4, rngs=nnx.Rngs(0))

  def __call__(self, x):
    return self.dense(jnp.tanh(self.dense(x)))


@pytest.mark.parametrize("rule", ["auto", "ghost", "direct"])
def test_layer_called_twice_is_exact(rule):
  rng = np.random.default_rng(0)
  batch = {
    "x": jnp.asarray(rng.normal(size=(5, 3, 4)), jnp.float32),
    "y": jnp.asarray(rng.integers(0, 4, (5, 3))),
  }

  def loss(model, b):
    return jw.LossOutput(jw.token_mean_cross_entropy(model(b["x"]), b["y"])[0])

  got = per_sample_grad_norms(loss, Shared(), batch, linear_rule=rule, fallback="error")
  assert_norms_equal(got, per_sample_grad_norms(loss, Shared(), batch, method="vmap"))


def test_nonfinite_sample_gets_zero_norm_and_bad_arguments():
  model, batch = mlp_setup(4)

  bad = dict(batch, x=batch["x"].at[1, 0].set(jnp.nan))  # sample 1's loss is NaN
  for method in ("ghost", "vmap"):
    n = np.asarray(per_sample_grad_norms(mlp_loss, model, bad, method=method).total)
    assert np.isfinite(n).all() and n[1] == 0 and np.all(n[[0, 2, 3]] > 0)
  with pytest.raises(ValueError, match="method"):
    per_sample_grad_norms(mlp_loss, model, batch, method="hooks")
  with pytest.raises(ValueError, match="PRNG key"):
    per_sample_grad_norms(mlp_loss, model, batch, method="jvp")
  with pytest.raises(ValueError, match="chunk_size"):
    per_sample_grad_norms(mlp_loss, model, batch, method="vmap", chunk_size=0)


@pytest.mark.parametrize("method", ["ghost", "vmap"])
def test_one_device_equals_eight_devices(method):
  model, batch = lm_setup(b=16)
  want = per_sample_grad_norms(lm_loss, model, batch, method=method)
  mesh = jw.data_mesh()
  graphdef, state = nnx.split(model)

  def local(state, b):
    m = nnx.merge(graphdef, state)
    return per_sample_grad_norms(lm_loss, m, b, method=method, axis_name="data").total

  mapped = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data")))
  np.testing.assert_allclose(mapped(state, batch), want.total, rtol=RTOL)
  sharded = jax.jit(lambda b: per_sample_grad_norms(lm_loss, model, b, method=method).total)
  np.testing.assert_allclose(sharded(jw.shard_batch(batch, mesh)), want.total, rtol=RTOL)


@pytest.mark.parametrize(
  "setup, loss", [pytest.param(lm_setup, lm_loss, marks=pytest.mark.slow), (mlp_setup, mlp_loss)]
)
def test_microbatch_norms_match_explicit_group_gradients(setup, loss):
  model, batch = setup()
  m = 4
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  n = jax.tree.leaves(batch)[0].shape[0] // m
  want = []
  for k in range(m):
    part = jax.tree.map(lambda x: x[k * n : (k + 1) * n], batch)
    g = jax.grad(lambda p: jnp.sum(loss(nnx.merge(graphdef, p, rest), part).loss))(params)
    want.append(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(g)))
  for method in ("ghost", "vmap"):
    got = per_sample_grad_norms(loss, model, batch, method=method, microbatches=m)
    np.testing.assert_allclose(got.total, want, rtol=RTOL, err_msg=method)
  est = per_sample_grad_norms(
    loss, model, batch, method="jvp", microbatches=m, num_probes=256, key=jax.random.key(0)
  )
  assert est.total.shape == (m,)
  np.testing.assert_allclose(est.total, want, rtol=4.5 * np.sqrt(2 / 256))
  with pytest.raises(ValueError, match="divisible"):
    per_sample_grad_norms(loss, model, batch, microbatches=3)


def test_bookkeeping_gradient_equals_autodiff():
  from jaxweights.families.self_influence.grad_norms import bookkeeping_grads, ghost_capture

  model, batch = lm_setup()
  capture = ghost_capture(lm_loss, model, batch)
  assert not capture.fallback
  w = jnp.linspace(0.1, 1.0, 8)
  got = bookkeeping_grads(model, capture, w)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  want = jax.grad(lambda p: jnp.sum(w * lm_loss(nnx.merge(graphdef, p, rest), batch).loss))(params)
  for (pa, a), (pb, b) in zip(nnx.to_flat_state(got), nnx.to_flat_state(want)):
    assert pa == pb
    np.testing.assert_allclose(a.get_value(), b.get_value(), rtol=1e-4, atol=1e-6, err_msg=str(pa))
