"""Sampling and last-token embeddings for TransformerLM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxweights as jw
from jaxweights import decoding as sampling


def small():
  cfg = jw.TransformerConfig(vocab_size=12, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=16)
  return jw.TransformerLM(cfg, rngs=nnx.Rngs(0))


def test_greedy_matches_stepwise_argmax_and_keeps_prompts():
  model = small()
  prompts = jnp.array([[3, 4, 5, 0], [7, 0, 0, 0]])
  lengths = jnp.array([3, 1])
  buf, lens = sampling.sample(model, jax.random.key(0), prompts, lengths, max_new_tokens=4, temperature=0)
  np.testing.assert_array_equal(lens, [7, 5])
  np.testing.assert_array_equal(buf[0, :3], [3, 4, 5])
  seq = [7]
  for _ in range(4):
    seq.append(int(jnp.argmax(model(jnp.array([seq]))[0, -1])))
  np.testing.assert_array_equal(buf[1, :5], seq)


def test_eos_stops_and_sampling_respects_top_p():
  model = small()
  prompts = jnp.zeros((64, 2), jnp.int32).at[:, 0].set(1)
  buf, lens = sampling.sample(
    model, jax.random.key(1), prompts, jnp.full(64, 1), max_new_tokens=6, temperature=1.0, eos_id=2
  )
  for row, n in zip(np.asarray(buf), np.asarray(lens)):
    gen = row[1:n]
    assert 2 not in gen[:-1]  # stops at the first eos
  logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
  kept = np.isfinite(np.asarray(sampling.top_p_filter(logits, 0.7)))
  np.testing.assert_array_equal(kept, [True, True, False, False])
  with pytest.raises(ValueError, match="top_p"):
    sampling.top_p_filter(logits, 0.0)
  with pytest.raises(ValueError, match="max_len"):
    sampling.sample(model, jax.random.key(0), prompts, jnp.full(64, 1), max_new_tokens=15)


def test_last_token_embedding():
  model = small()
  toks = jnp.array([[1, 2, 3, 4], [5, 6, 0, 0]])
  emb = sampling.last_token_embedding(model, toks, jnp.array([4, 2]), layer=1)
  np.testing.assert_allclose(emb[1], model.hidden_states(toks[1:, :2], 1)[0, -1], atol=1e-5)
  np.testing.assert_allclose(model.hidden_states(toks, 2), model.hidden_states(toks), atol=0)
  with pytest.raises(ValueError, match="layer"):
    model.hidden_states(toks, 3)
