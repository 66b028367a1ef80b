"""The composition layer: plain = uniform, 1 vs 8 devices, bad inputs, no NaN."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxweights as jw


def mlp_loss(model, batch):
  return jw.LossOutput(jw.cross_entropy(model(batch["x"]), batch["y"]))


def lm_loss(model, batch):
  logits = model(batch["tokens"][:, :-1])
  l, m = jw.token_mean_cross_entropy(logits, batch["tokens"][:, 1:], batch["mask"][:, 1:])
  return jw.LossOutput(l, m)


def mlp_batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "x": jnp.asarray(rng.normal(size=(n, 8)), jnp.float32),
    "y": jnp.asarray(rng.integers(0, 4, n), jnp.int32),
  }


def lm_batch(n=16, t=17, vocab=64, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.ones((n, t), bool)
  mask[1, 5:] = False  # a padded sequence
  mask[2, :] = False  # an empty sequence: weight 0, never NaN
  return {"tokens": jnp.asarray(rng.integers(0, vocab, (n, t)), jnp.int32), "mask": jnp.asarray(mask)}


def new_mlp(seed=0):
  return jw.MLP(8, [16], 4, rngs=nnx.Rngs(seed))


def new_lm(seed=0):
  return jw.TransformerLM(
    jw.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16),
    rngs=nnx.Rngs(seed),
  )


def max_diff(a, b):
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def test_plain_step_is_mean_loss_sgd():
  tx = optax.sgd(0.1)
  graphdef, state = jw.init_train_state(new_mlp(), tx)
  batch = mlp_batch()
  new, metrics = jw.make_train_step(graphdef, mlp_loss, tx)(state, batch)

  def mean_loss(params):
    return jnp.mean(mlp_loss(nnx.merge(graphdef, params, state.model_vars), batch).loss)

  loss, grads = jax.value_and_grad(mean_loss)(state.params)
  expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads)
  assert max_diff(new.params, expected) < 1e-6
  np.testing.assert_allclose(metrics["loss_mean"], loss, rtol=1e-6)
  np.testing.assert_allclose(metrics["loss_weighted"], loss, rtol=1e-6)
  np.testing.assert_allclose(metrics["ess"], 32.0, rtol=1e-5)
  assert int(new.step) == 1


def test_weighted_step_gradient_is_sum_w_grad():
  tx = optax.sgd(1.0)
  weighting = jw.linupper_weighting(r=0.3)
  graphdef, state = jw.init_train_state(new_mlp(), tx, weighting)
  batch = mlp_batch()
  new, metrics = jw.make_train_step(graphdef, mlp_loss, tx, weighting)(state, batch)

  def per_sample(params):
    return mlp_loss(nnx.merge(graphdef, params, state.model_vars), batch).loss

  losses = per_sample(state.params)
  w = jw.linupper_weights(losses, r=0.3)
  grads = jax.grad(lambda p: jnp.sum(w * per_sample(p)))(state.params)
  expected = jax.tree.map(lambda p, g: p - g, state.params, grads)
  assert max_diff(new.params, expected) < 1e-6
  np.testing.assert_allclose(metrics["weight_max"], w.max(), rtol=1e-6)
  np.testing.assert_allclose(metrics["ess"], 1 / np.sum(np.square(w)), rtol=1e-4)


@pytest.mark.parametrize("strategy", ["uniform", "linupper"])
def test_one_device_equals_eight_devices(strategy):
  """Same global batch on 1 device, jit over 8 and shard_map over 8: same step."""
  assert jax.device_count() == 8
  tx = optax.sgd(0.05)
  weighting = jw.loss_based.WEIGHTINGS[strategy](r=0.4)
  graphdef, state0 = jw.init_train_state(new_lm(), tx, weighting)
  batch = lm_batch()
  one = jax.devices()[:1]
  results = {}
  for name, mesh, mode in [
    ("1dev", jw.data_mesh(one), "jit"),
    ("jit8", jw.data_mesh(), "jit"),
    ("shmap8", jw.data_mesh(), "shard_map"),
  ]:
    step = jw.make_train_step(graphdef, lm_loss, tx, weighting, mesh=mesh, mode=mode)
    state = jw.replicate(state0, mesh)
    b = jw.shard_batch(batch, mesh)
    for _ in range(3):
      state, metrics = step(state, b)
    results[name] = (state, jw.host_metrics(metrics))
  ref_state, ref_metrics = results["1dev"]
  assert ref_metrics["n_valid"] == 15.0
  for name in ("jit8", "shmap8"):
    state, metrics = results[name]
    assert max_diff(state.params, ref_state.params) < 2e-5, name
    for k, v in ref_metrics.items():
      np.testing.assert_allclose(metrics[k], v, rtol=2e-4, atol=1e-6, err_msg=f"{name} {k}")
    assert len(state.params["head"]["kernel"].sharding.device_set) == 8


def test_shard_map_does_not_over_count_gradients():
  # check_vma already sums grads of replicated params; an extra psum would x8.
  tx = optax.sgd(1.0)
  graphdef, state = jw.init_train_state(new_mlp(), tx)
  batch = mlp_batch()
  _, m1 = jw.make_train_step(graphdef, mlp_loss, tx)(state, batch)
  mesh = jw.data_mesh()
  _, m8 = jw.make_train_step(graphdef, mlp_loss, tx, mesh=mesh, mode="shard_map")(
    jw.replicate(state, mesh), jw.shard_batch(batch, mesh)
  )
  np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-5)


def test_empty_and_padded_sequences_never_nan():
  tx = optax.adamw(1e-2)
  weighting = jw.quadratic_weighting(r=1.0)
  graphdef, state = jw.init_train_state(new_lm(), tx, weighting)
  step = jw.make_train_step(graphdef, lm_loss, tx, weighting)
  batch = lm_batch()
  state, metrics = step(state, batch)
  assert metrics["n_valid"] == 15 and metrics["update_skipped"] == 0
  all_pad = dict(batch, mask=jnp.zeros_like(batch["mask"]))
  before = state.params
  state, metrics = step(state, all_pad)
  assert metrics["n_valid"] == 0 and metrics["loss_weighted"] == 0
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  # No valid sample: zero gradient, and the update is skipped (AdamW's momentum and
  # weight decay must not move the parameters on an empty batch).
  assert metrics["grad_norm"] == 0 and metrics["update_skipped"] == 1
  chex.assert_trees_all_equal(before, state.params)


def test_nonfinite_loss_sample_is_dropped():
  tx = optax.sgd(0.1)
  graphdef, state = jw.init_train_state(new_mlp(), tx, jw.linupper_weighting())
  batch = mlp_batch()

  def loss_with_nan(model, b):
    l = jw.cross_entropy(model(b["x"]), b["y"])
    return jw.LossOutput(l.at[3].set(jnp.nan))

  new, metrics = jw.make_train_step(graphdef, loss_with_nan, tx, jw.linupper_weighting())(state, batch)
  assert metrics["n_nonfinite"] == 1 and metrics["n_valid"] == 31
  assert metrics["update_skipped"] == 0
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(new.params))


def test_nonfinite_gradient_skips_update():
  # An inf input makes the (finite-masked) loss's gradient NaN: the step must
  # keep the old state and say so, never write NaN into the parameters.
  tx = optax.adam(1e-2)
  graphdef, state = jw.init_train_state(new_mlp(), tx)
  batch = mlp_batch()
  batch["x"] = batch["x"].at[0, 0].set(jnp.inf)
  new, metrics = jw.make_train_step(graphdef, mlp_loss, tx)(state, batch)
  assert metrics["update_skipped"] == 1
  assert max_diff(new.params, state.params) == 0
  assert max_diff(new.opt_state, state.opt_state) == 0
  assert int(new.step) == 1  # the step counter still advances (batches move on)


def test_batch_of_one():
  tx = optax.sgd(0.1)
  weighting = jw.extremes_weighting(r=0.4)
  graphdef, state = jw.init_train_state(new_mlp(), tx, weighting)
  new, metrics = jw.make_train_step(graphdef, mlp_loss, tx, weighting)(state, mlp_batch(1))
  assert metrics["weight_max"] == 1.0 and metrics["ess"] == 1.0


def test_no_retrace_across_steps():
  tx = optax.sgd(0.1)
  traces = []

  def counting_loss(model, batch):
    traces.append(1)
    return mlp_loss(model, batch)

  weighting = jw.linupper_weighting(r=jw.warmup_temperature(0.4, 2))
  graphdef, state = jw.init_train_state(new_mlp(), tx, weighting)
  step = jw.make_train_step(graphdef, counting_loss, tx, weighting)
  for i in range(4):
    state, _ = step(state, mlp_batch(seed=i))
  assert len(traces) == 1


def test_warmup_schedule_gives_uniform_first():
  tx = optax.sgd(0.1)
  weighting = jw.linupper_weighting(r=jw.warmup_temperature(0.2, 1))
  graphdef, state = jw.init_train_state(new_mlp(), tx, weighting)
  step = jw.make_train_step(graphdef, mlp_loss, tx, weighting)
  state, m0 = step(state, mlp_batch())
  state, m1 = step(state, mlp_batch())
  np.testing.assert_allclose(m0["ess"], 32.0, rtol=1e-6)
  assert m1["ess"] < 31.0


def test_bad_loss_fn_outputs_raise_at_trace_time():
  tx = optax.sgd(0.1)
  graphdef, state = jw.init_train_state(new_mlp(), tx)
  batch = mlp_batch()
  wrong_rank = lambda m, b: jw.LossOutput(jnp.stack([mlp_loss(m, b).loss] * 2, 1))
  with pytest.raises(ValueError, match="rank-1"):
    jw.make_train_step(graphdef, wrong_rank, tx)(state, batch)
  not_output = lambda m, b: mlp_loss(m, b).loss
  with pytest.raises(TypeError, match="LossOutput"):
    jw.make_train_step(graphdef, not_output, tx)(state, batch)
  bad_weights = jw.Weighting(init=tuple, update=lambda inp, s: (jnp.ones(3), s))
  with pytest.raises(ValueError, match="one weight per sample"):
    jw.make_train_step(graphdef, mlp_loss, tx, bad_weights)(state, batch)


def test_bad_mesh_arguments_raise():
  mesh = jw.data_mesh()
  with pytest.raises(ValueError, match="multiple"):
    jw.shard_batch(mlp_batch(12), mesh)
  graphdef, _ = jw.init_train_state(new_mlp(), optax.sgd(0.1))
  with pytest.raises(ValueError, match="needs a mesh"):
    jw.make_train_step(graphdef, mlp_loss, optax.sgd(0.1), mode="shard_map")
  with pytest.raises(ValueError, match="mode"):
    jw.make_train_step(graphdef, mlp_loss, optax.sgd(0.1), mode="pmap")
  with pytest.raises(ValueError, match="not in the mesh"):
    jw.make_train_step(graphdef, mlp_loss, optax.sgd(0.1), mesh=mesh, axis_name="batch")


def test_prepare_prepass_feeds_the_weighting():
  # A weighting whose pre-pass adds a per-sample signal the update reads: the
  # hook later families use (gradient norms, density ratios).
  def prepare(ctx):
    scores = jnp.sum(ctx.model(ctx.batch["x"]) ** 2, axis=1)
    return dict(ctx.batch, score=scores)

  def update(inputs, state):
    return jw.normalize.softmax(inputs.batch["score"], inputs.mask), state + 1

  weighting = jw.Weighting(init=lambda: jnp.zeros((), jnp.int32), update=update, prepare=prepare)
  tx = optax.sgd(0.1)
  graphdef, state = jw.init_train_state(new_mlp(), tx, weighting)
  new, metrics = jw.make_train_step(graphdef, mlp_loss, tx, weighting)(state, mlp_batch())
  assert int(new.weighting_state) == 1
  model = nnx.merge(graphdef, state.params, state.model_vars)
  expected = jax.nn.softmax(jnp.sum(model(mlp_batch()["x"]) ** 2, axis=1))
  np.testing.assert_allclose(metrics["weight_max"], expected.max(), rtol=1e-5)


@pytest.mark.parametrize("strategy", ["uniform", "linupper"])
@pytest.mark.parametrize("mode", ["jit", "shard_map"])
def test_accumulated_update_equals_single_batch_update(strategy, mode):
  tx = optax.sgd(0.1)
  weighting = jw.loss_based.WEIGHTINGS[strategy](r=0.3)
  graphdef, state = jw.init_train_state(new_mlp(), tx, weighting)
  batch = mlp_batch(32)
  mesh = jw.data_mesh() if mode == "shard_map" else None
  if mesh is not None:
    state, batch = jw.replicate(state, mesh), jw.shard_batch(batch, mesh)
  one, m1 = jw.make_train_step(graphdef, mlp_loss, tx, weighting, mesh=mesh, mode=mode)(state, batch)
  acc, m4 = jw.make_train_step(graphdef, mlp_loss, tx, weighting, mesh=mesh, mode=mode, accumulate=2)(
    state, batch
  )
  assert max_diff(one.params, acc.params) < 1e-6
  for k in ("loss_mean", "loss_weighted", "weight_max", "ess"):
    np.testing.assert_allclose(m4[k], m1[k], rtol=1e-5, err_msg=k)


def test_microbatch_weights_average_microbatch_gradients():
  tx = optax.sgd(1.0)
  weighting = jw.extremes_weighting(r=0.5)
  graphdef, state = jw.init_train_state(new_mlp(), tx, weighting)
  batch = mlp_batch(12)
  new, metrics = jw.make_train_step(
    graphdef, mlp_loss, tx, weighting, accumulate=3, weights_over="microbatch"
  )(state, batch)

  def per_sample(params, b):
    return mlp_loss(nnx.merge(graphdef, params, state.model_vars), b).loss

  total = None
  for a in range(3):
    b = jax.tree.map(lambda x: x[a::3], batch)  # microbatches interleave rows
    w = jw.extremes_weights(per_sample(state.params, b), r=0.5)
    g = jax.grad(lambda p: jnp.sum(w * per_sample(p, b)))(state.params)
    total = g if total is None else jax.tree.map(jnp.add, total, g)
  expected = jax.tree.map(lambda p, g: p - g / 3, state.params, total)
  assert max_diff(new.params, expected) < 1e-6
  np.testing.assert_allclose(metrics["weight_sum"], 1.0, rtol=1e-6)


def test_accumulation_bad_arguments():
  tx = optax.sgd(0.1)
  graphdef, state = jw.init_train_state(new_mlp(), tx)
  with pytest.raises(ValueError, match="accumulate"):
    jw.make_train_step(graphdef, mlp_loss, tx, accumulate=0)
  with pytest.raises(ValueError, match="weights_over"):
    jw.make_train_step(graphdef, mlp_loss, tx, accumulate=2, weights_over="local")
  with pytest.raises(ValueError, match="microbatches"):
    jw.make_train_step(graphdef, mlp_loss, tx, accumulate=5)(state, mlp_batch(32))
  presence = jw.presence_weighting(tau=1.0)
  graphdef, state = jw.init_train_state(new_mlp(), tx, presence)
  with pytest.raises(ValueError, match="weights_over='microbatch'"):
    jw.make_train_step(graphdef, mlp_loss, tx, presence, accumulate=2)(state, mlp_batch(32))
  jw.make_train_step(graphdef, mlp_loss, tx, presence, accumulate=2, weights_over="microbatch")(
    state, mlp_batch(32)
  )
