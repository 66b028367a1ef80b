"""The step never writes a wrong value into the state: it skips and says so."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxweights as jw


def loss_fn(model, batch):
  return jw.LossOutput(jw.cross_entropy(model(batch["x"]), batch["y"]), batch.get("mask"))


def batch(n=8, mask=None):
  rng = np.random.default_rng(0)
  b = {
    "x": jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
    "y": jnp.asarray(rng.integers(0, 3, n), jnp.int32),
  }
  if mask is not None:
    b["mask"] = jnp.asarray(mask)
  return b


def run(tx, weighting=None, b=None):
  graphdef, state = jw.init_train_state(jw.MLP(4, [8], 3, rngs=nnx.Rngs(0)), tx, weighting)
  step = jw.make_train_step(graphdef, loss_fn, tx, weighting)
  new, metrics = step(state, batch() if b is None else b)
  return state, new, jw.host_metrics(metrics)


def same(a, b):
  return all(
    np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def test_optimiser_that_makes_nan_from_finite_gradients_is_skipped():
  nan_tx = optax.chain(optax.sgd(0.1), optax.scale_by_schedule(lambda count: jnp.nan))
  old, new, m = run(nan_tx)
  assert np.isfinite(m["grad_norm"]) and m["update_skipped"] == 1.0
  assert same(old.params, new.params) and same(old.opt_state, new.opt_state)


def test_batch_with_no_valid_sample_does_not_move_adamw():
  old, new, m = run(optax.adamw(1e-2, weight_decay=0.1), b=batch(mask=np.zeros(8, bool)))
  assert m["n_valid"] == 0 and m["update_skipped"] == 1.0
  assert same(old.params, new.params) and same(old.opt_state, new.opt_state)


@pytest.mark.parametrize("bad", ["huge", "negative", "nan"])
def test_weights_that_break_the_contract_are_skipped(bad):
  def update(inputs, state):
    w = jw.normalize.uniform(inputs.mask)
    w = {"huge": w * 1e6, "negative": w.at[0].set(-0.5), "nan": w.at[0].set(jnp.nan)}[bad]
    return w, state

  old, new, m = run(optax.sgd(0.1), jw.Weighting(init=tuple, update=update))
  assert m["update_skipped"] == 1.0 and same(old.params, new.params)


def test_a_loss_for_part_of_the_batch_is_an_error_at_trace_time():
  def half(model, b):
    return jw.LossOutput(jw.cross_entropy(model(b["x"]), b["y"])[:4])

  tx = optax.sgd(0.1)
  graphdef, state = jw.init_train_state(jw.MLP(4, [8], 3, rngs=nnx.Rngs(0)), tx)
  with pytest.raises(ValueError, match="4 per-sample losses for a batch of 8"):
    jw.make_train_step(graphdef, half, tx)(state, batch())


def test_out_of_range_label_under_jit_is_dropped_and_counted():
  b = batch()
  b["y"] = b["y"].at[2].set(-1)
  _, _, m = run(optax.sgd(0.1), b=b)
  assert m["n_nonfinite"] == 1 and m["n_valid"] == 7 and m["update_skipped"] == 0
