"""Per-sample loss helpers and the NNX models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxweights as jw


def test_token_mean_cross_entropy_by_hand():
  logits = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1]], [[0.2, 0.8], [0.5, 0.5]]]))
  targets = jnp.array([[0, 0], [1, 0]])
  mask = jnp.array([[True, True], [True, False]])
  losses, valid = jw.token_mean_cross_entropy(logits, targets, mask)
  np.testing.assert_allclose(losses, [(-np.log(0.5) - np.log(0.9)) / 2, -np.log(0.8)], rtol=1e-6)
  assert valid.tolist() == [True, True]


def test_empty_sequence_no_division_by_zero():
  # Named after the reference code's empty-sequence 0/0.
  logits = jnp.zeros((2, 3, 5))
  losses, valid = jw.token_mean_cross_entropy(
    logits, jnp.zeros((2, 3), jnp.int32), jnp.array([[1, 1, 0], [0, 0, 0]])
  )
  assert np.isfinite(losses).all() and losses[1] == 0
  assert valid.tolist() == [True, False]
  g = jax.grad(
    lambda z: jw.token_mean_cross_entropy(z, jnp.zeros((2, 3), jnp.int32), jnp.array([[1, 1, 0], [0, 0, 0]]))[
      0
    ].sum()
  )(logits)
  assert np.isfinite(g).all() and np.all(g[1] == 0)


def test_cross_entropy_and_squared_error_by_hand():
  ce = jw.cross_entropy(jnp.log(jnp.array([[0.25, 0.75]])), jnp.array([1]))
  np.testing.assert_allclose(ce, [-np.log(0.75)], rtol=1e-6)
  se = jw.squared_error(jnp.array([[1.0, 2.0], [0.0, 0.0]]), jnp.array([[0.0, 0.0], [1.0, 1.0]]))
  np.testing.assert_allclose(se, [2.5, 1.0])


@pytest.mark.parametrize(
  "call",
  [
    lambda: jw.token_mean_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32)),
    lambda: jw.token_mean_cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros((2, 2), jnp.int32)),
    lambda: jw.token_mean_cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 2))),
    lambda: jw.cross_entropy(jnp.zeros((2, 3)), jnp.zeros((3,), jnp.int32)),
    lambda: jw.squared_error(jnp.zeros((2, 3)), jnp.zeros((2, 2))),
  ],
)
def test_loss_shape_errors(call):
  with pytest.raises(ValueError):
    call()


def test_transformer_is_causal_and_shapes():
  cfg = jw.TransformerConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=12)
  model = jw.TransformerLM(cfg, rngs=nnx.Rngs(0))
  toks = jnp.asarray(np.random.default_rng(0).integers(0, 50, (3, 12)))
  logits = model(toks)
  assert logits.shape == (3, 12, 50)
  changed = model(toks.at[:, 8].set((toks[:, 8] + 1) % 50))
  np.testing.assert_allclose(changed[:, :8], logits[:, :8], atol=1e-5)
  assert not np.allclose(changed[:, 8:], logits[:, 8:])
  with pytest.raises(ValueError, match="max_len"):
    model(jnp.zeros((1, 13), jnp.int32))
  with pytest.raises(ValueError, match="divisible"):
    jw.TransformerConfig(d_model=30, n_heads=4)


def test_mlp_and_param_count():
  model = jw.MLP(4, [8], 3, rngs=nnx.Rngs(0))
  assert model(jnp.ones((5, 4))).shape == (5, 3)
  assert jw.count_params(model) == 4 * 8 + 8 + 8 * 3 + 3
  small = jw.TransformerLM(jw.TransformerConfig.small(), rngs=nnx.Rngs(0))
  assert 5e6 < jw.count_params(small) < 8e6


@pytest.mark.slow  # the fast LM smoke run checks a bf16 rerun against float32 as well
def test_bf16_compute_tracks_float32_training():
  import optax

  rng = np.random.default_rng(0)
  data = rng.integers(0, 40, (64, 17))
  data[:, 1::2] = (data[:, ::2][:, :8] + 1) % 40  # learnable structure

  def lm_loss(model, batch):
    logits = model(batch["tokens"][:, :-1])
    l, m = jw.token_mean_cross_entropy(logits, batch["tokens"][:, 1:])
    return jw.LossOutput(l, m)

  curves = {}
  for dtype in ("float32", "bfloat16"):
    cfg = jw.TransformerConfig(
      vocab_size=40, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=16, dtype=dtype
    )
    model = jw.TransformerLM(cfg, rngs=nnx.Rngs(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    tx = optax.adam(3e-3)
    weighting = jw.linupper_weighting(r=0.5)
    graphdef, state = jw.init_train_state(model, tx, weighting)
    step = jw.make_train_step(graphdef, lm_loss, tx, weighting)
    losses = []
    for i in range(40):
      start = (i * 16) % 64
      batch = {"tokens": jnp.asarray(data[start : start + 16])}
      state, m = step(state, batch)
      losses.append(float(m["loss_mean"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    curves[dtype] = np.array(losses)
  assert curves["float32"][-5:].mean() < curves["float32"][:5].mean() - 0.5  # it learns
  np.testing.assert_allclose(curves["bfloat16"], curves["float32"], rtol=0.03)
  logits = jw.TransformerLM(
    jw.TransformerConfig(
      vocab_size=40, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=16, dtype="bfloat16"
    ),
    rngs=nnx.Rngs(0),
  )(jnp.zeros((1, 4), jnp.int32))
  assert logits.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="dtype"):
    jw.TransformerConfig(dtype="int8")
