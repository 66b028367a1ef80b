"""Q-probe policy adapters: the NNX TransformerLM one and the Hugging Face one."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxweights as jw
from jaxweights import decoding as sampling
from jaxweights.families.q_probe import probe as q_probe
from jaxweights.families.q_probe.hf_policy import HFCausalLMPolicy
from jaxweights.families.q_probe.policies import Tokens, pad_sequences
from jaxweights.families.q_probe.transformer_policy import TransformerPolicy

EOS = 2


def small(max_len=16):
  cfg = jw.TransformerConfig(vocab_size=12, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=max_len)
  return jw.TransformerLM(cfg, rngs=nnx.Rngs(0))


PROMPTS = pad_sequences([[3, 4, 5], [7], [1, 1, 1, 1]])


def test_pad_sequences():
  toks, lens = pad_sequences([[1, 2], [3]], pad_id=9, width=4)
  np.testing.assert_array_equal(toks, [[1, 2, 9, 9], [3, 9, 9, 9]])
  np.testing.assert_array_equal(lens, [2, 1])
  with pytest.raises(ValueError, match="width"):
    pad_sequences([[1, 2, 3]], width=2)


def test_sampling_shapes_eos_and_keys():
  policy = TransformerPolicy(
    small(), layer=1, max_new_tokens=5, temperature=1.0, eos_id=EOS, batch_size=5
  )  # 12 rows: chunks of 5, 5 and a padded 2
  comps = policy.sample(jax.random.key(0), PROMPTS, 4)
  assert comps.tokens.shape == (3, 4, 5) and comps.lengths.shape == (3, 4)
  assert comps.tokens.dtype == np.int32
  assert (comps.lengths >= 1).all() and (comps.lengths <= 5).all()
  for row, n in zip(comps.tokens.reshape(-1, 5), comps.lengths.ravel()):
    assert EOS not in row[: n - 1]  # stops at the first eos ...
    assert n == 5 or row[n - 1] == EOS  # ... which it keeps
    assert (row[n:] == 0).all()  # padding after the end
  again = policy.sample(jax.random.key(0), PROMPTS, 4)
  np.testing.assert_array_equal(again.tokens, comps.tokens)
  other = policy.sample(jax.random.key(1), PROMPTS, 4)
  assert not np.array_equal(other.tokens, comps.tokens)


def test_greedy_samples_repeat_and_match_sampling_module():
  model = small()
  policy = TransformerPolicy(model, max_new_tokens=4, temperature=0.0)
  comps = policy.sample(jax.random.key(0), PROMPTS, 3)
  assert (comps.tokens == comps.tokens[:, :1]).all()  # greedy: k identical completions
  buf, _ = sampling.sample(
    model,
    jax.random.key(0),
    jnp.asarray(PROMPTS.tokens),
    jnp.asarray(PROMPTS.lengths),
    max_new_tokens=4,
    temperature=0,
  )
  for i, n in enumerate(PROMPTS.lengths):
    np.testing.assert_array_equal(comps.tokens[i, 0], np.asarray(buf)[i, n : n + 4])
  np.testing.assert_array_equal(comps.lengths, 4)


@pytest.mark.parametrize("layer", [None, 0, 1])
def test_embeddings_equal_direct_hidden_states(layer):
  model = small()
  policy = TransformerPolicy(model, layer=layer, max_new_tokens=5, eos_id=EOS, batch_size=7)
  comps = policy.sample(jax.random.key(3), PROMPTS, 4)
  emb = policy.embed(PROMPTS, comps)
  assert emb.shape == (3, 4, 16) and emb.dtype == np.float32
  for i in range(3):
    for j in range(4):
      seq = [*PROMPTS.tokens[i, : PROMPTS.lengths[i]], *comps.tokens[i, j, : comps.lengths[i, j]]]
      direct = model.hidden_states(jnp.asarray([seq]), layer)[0, -1]
      np.testing.assert_allclose(emb[i, j], direct, atol=1e-5)


def test_embed_accepts_given_completions_and_feeds_a_probe():
  model = small()
  policy = TransformerPolicy(model, max_new_tokens=3)
  comps = Tokens(np.array([[[5, 6, 0], [9, 0, 0]]] * 3), np.array([[2, 1]] * 3))
  emb = policy.embed(PROMPTS, comps)
  # A completion of length 0 embeds the prompt's last token.
  empty = policy.embed(PROMPTS, Tokens(np.zeros((3, 1, 3), int), np.zeros((3, 1), int)))
  np.testing.assert_allclose(empty[1, 0], model.hidden_states(jnp.asarray([[7]]))[0, -1], atol=1e-5)
  probe = q_probe.Probe(16, rngs=nnx.Rngs(0))
  q = probe(jnp.asarray(emb))
  assert q.shape == (3, 2)
  assert q_probe.qprobe_weights(q).shape == (3, 2)


def test_errors():
  model = small()
  with pytest.raises(ValueError, match="layer"):
    TransformerPolicy(model, layer=3)
  with pytest.raises(ValueError, match="top_p"):
    TransformerPolicy(model, top_p=0.0)
  with pytest.raises(ValueError, match="eos_id"):
    TransformerPolicy(model, eos_id=12)
  policy = TransformerPolicy(model, max_new_tokens=14)
  with pytest.raises(ValueError, match="max_len"):
    policy.sample(jax.random.key(0), PROMPTS, 2)  # 4 + 14 > 16
  policy = TransformerPolicy(model, max_new_tokens=3)
  with pytest.raises(ValueError, match="k must"):
    policy.sample(jax.random.key(0), PROMPTS, 0)
  with pytest.raises(ValueError, match="prompt lengths"):
    policy.sample(jax.random.key(0), (PROMPTS.tokens, np.array([3, 0, 4])), 2)
  with pytest.raises(ValueError, match="completions must be"):
    policy.embed(PROMPTS, Tokens(np.zeros((2, 1, 3), int), np.ones((2, 1), int)))
  with pytest.raises(ValueError, match="completion lengths"):
    policy.embed(PROMPTS, Tokens(np.zeros((3, 1, 3), int), np.full((3, 1), 4)))


# --- Hugging Face adapter (optional `hf` extra) ---------------------------------------------


def _hf_backends():
  if importlib.util.find_spec("transformers") is None:
    return []
  backends = []
  import transformers  # pylint: disable=import-outside-toplevel

  if hasattr(transformers, "FlaxGPT2LMHeadModel"):
    backends.append("flax")
  if importlib.util.find_spec("torch") is not None:
    backends.append("torch")
  return backends


def _tiny_gpt2(backend):
  """A randomly initialised 2-layer GPT-2 (no hub download)."""
  transformers = pytest.importorskip("transformers")
  cfg = transformers.GPT2Config(
    n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=32, bos_token_id=49, eos_token_id=49
  )
  if backend == "flax":
    with jax.numpy_rank_promotion("allow"):  # transformers' Flax code broadcasts implicitly
      return transformers.FlaxGPT2LMHeadModel(cfg, seed=0)
  import torch  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  return transformers.GPT2LMHeadModel(cfg)


def _hf_direct(backend, model, seq, layer):
  if backend == "flax":
    with jax.numpy_rank_promotion("allow"):
      out = model(np.asarray([seq]), output_hidden_states=True)
    return np.asarray(out.hidden_states[layer][0, -1])
  import torch  # pylint: disable=import-outside-toplevel

  with torch.no_grad():
    out = model(torch.tensor([seq]), output_hidden_states=True)
  return out.hidden_states[layer][0, -1].numpy()


# The flax backend compiles HF's whole sampling loop (~1 min on 2 cores): slow.
@pytest.mark.parametrize("backend", [pytest.param("flax", marks=pytest.mark.slow), "torch"])
def test_hf_adapter_tiny_random_gpt2(backend):
  pytest.importorskip("transformers")
  if backend not in _hf_backends():
    pytest.skip(f"the {backend} backend of transformers is not available here")
  model = _tiny_gpt2(backend)
  policy = HFCausalLMPolicy(model, layer=1, max_new_tokens=6, temperature=1.0, top_p=0.95)
  assert policy.backend.name == backend and policy.eos_id == 49
  prompts = pad_sequences([[3, 4, 5], [7], [1, 1, 1, 1]])
  comps = policy.sample(jax.random.key(0), prompts, 4)
  assert comps.tokens.shape == (3, 4, 6) and comps.lengths.shape == (3, 4)
  again = policy.sample(jax.random.key(0), prompts, 4)
  np.testing.assert_array_equal(again.tokens, comps.tokens)  # the key fixes the draw
  for row, n in zip(comps.tokens.reshape(-1, 6), comps.lengths.ravel()):
    assert 49 not in row[: n - 1] and (row[n:] == policy.pad_id).all()
  emb = policy.embed(prompts, comps)
  assert emb.shape == (3, 4, 32) and emb.dtype == np.float32
  for i in range(3):
    for j in range(4):
      seq = [*prompts.tokens[i, : prompts.lengths[i]], *comps.tokens[i, j, : comps.lengths[i, j]]]
      np.testing.assert_allclose(emb[i, j], _hf_direct(backend, model, seq, 1), atol=1e-4)
  # Greedy decoding of left-padded prompts continues each prompt as if unpadded.
  greedy = HFCausalLMPolicy(model, max_new_tokens=3, temperature=0, eos_id=-1)
  comps = greedy.sample(jax.random.key(0), prompts, 1)
  np.testing.assert_array_equal(comps.lengths, 3)
  seq = [7]
  for _ in range(3):
    if backend == "flax":
      with jax.numpy_rank_promotion("allow"):
        logits = np.asarray(model(np.asarray([seq])).logits[0, -1])
    else:
      import torch  # pylint: disable=import-outside-toplevel

      with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0, -1].numpy()
    seq.append(int(np.argmax(logits)))
  np.testing.assert_array_equal(comps.tokens[1, 0], seq[1:])


def test_hf_adapter_rejects_other_models():
  pytest.importorskip("transformers")
  with pytest.raises(TypeError, match="transformers"):
    HFCausalLMPolicy(small())
