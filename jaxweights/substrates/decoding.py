"""Batched autoregressive sampling and last-token embeddings for TransformerLM.

Used by the Q-probe policy adapter. Sampling is one ``jax.lax.fori_loop`` over
new tokens on a fixed ``[batch, prompt_len + max_new_tokens]`` buffer (one
compilation per shape); each step reruns the causal forward pass (no KV cache:
the project's models are small, and causality makes the unfilled tail inert).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

if TYPE_CHECKING:
  from jaxweights.substrates.models import TransformerLM


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
  """Sets logits outside the smallest set with cumulative probability >= top_p to -inf.

  Nucleus sampling's filter (Holtzman et al., 2020): the most likely tokens are
  kept, in order, up to and including the first whose cumulative probability
  reaches ``top_p``.

  Args:
    logits: ``[..., vocab]`` float logits.
    top_p: the probability mass to keep, in ``(0, 1]``; 1 keeps every token.

  Returns:
    ``[..., vocab]`` logits, ``-inf`` outside the kept set.

  Raises:
    ValueError: ``top_p`` is outside ``(0, 1]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxweights.substrates import decoding
    >>> logits = jnp.log(jnp.array([0.5, 0.3, 0.2]))
    >>> jnp.isfinite(decoding.top_p_filter(logits, 0.7)).tolist()
    [True, True, False]
  """
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
  if top_p == 1:
    return logits
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
  # Keep every token up to and including the first that reaches top_p.
  keep_sorted = cum - jax.nn.softmax(sorted_logits, axis=-1) < top_p
  cutoff = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits >= cutoff, logits, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_p", "eos_id"))
def _sample(graphdef, state, key, tokens, lengths, *, max_new_tokens, temperature, top_p, eos_id):
  model = nnx.merge(graphdef, state)
  b = tokens.shape[0]
  buf = jnp.concatenate([tokens, jnp.zeros((b, max_new_tokens), tokens.dtype)], axis=1)
  rows = jnp.arange(b)

  def body(i, carry):
    buf, lens, done, key = carry
    key, sub = jax.random.split(key)
    logits = model(buf)[rows, lens - 1].astype(jnp.float32)
    if temperature == 0:
      nxt = jnp.argmax(logits, axis=-1)
    else:
      nxt = jax.random.categorical(sub, top_p_filter(logits / temperature, top_p), axis=-1)
    nxt = jnp.where(done, 0, nxt).astype(buf.dtype)
    buf = buf.at[rows, lens].set(jnp.where(done, buf[rows, lens], nxt))
    lens = jnp.where(done, lens, lens + 1)
    if eos_id is not None:
      done = done | (nxt == eos_id)
    return buf, lens, done, key

  init = (buf, lengths, jnp.zeros(b, bool), key)
  buf, lens, _, _ = jax.lax.fori_loop(0, max_new_tokens, body, init)
  return buf, lens


def sample(
  model: TransformerLM,
  key: jax.Array,
  tokens: jax.Array,
  lengths: jax.Array,
  *,
  max_new_tokens: int,
  temperature: float = 1.0,
  top_p: float = 1.0,
  eos_id: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Samples continuations of right-padded prompts.

  Args:
    model: a :class:`~jaxweights.TransformerLM`.
    key: PRNG key.
    tokens: ``[batch, prompt_len]`` int prompts (padding after each prompt).
    lengths: ``[batch]`` prompt lengths (>= 1).
    max_new_tokens: tokens to generate (a sequence stops early at ``eos_id``,
      which is kept).
    temperature: 0 = greedy.
    top_p: nucleus sampling mass.
    eos_id: optional end token.

  Returns:
    ``(buffer [batch, prompt_len + max_new_tokens], lengths [batch])``: each
    row holds its prompt then its completion up to ``lengths``.

  Raises:
    ValueError: ``temperature < 0``, ``top_p`` outside ``(0, 1]``,
      ``max_new_tokens < 1``, or ``prompt_len + max_new_tokens`` exceeds the
      model's ``max_len``.
  """
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}.")
  top_p_filter(jnp.zeros(2), top_p)  # validates top_p
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
  if tokens.shape[1] + max_new_tokens > model.cfg.max_len:
    raise ValueError(
      f"prompt_len + max_new_tokens = {tokens.shape[1] + max_new_tokens} exceeds the "
      f"model's max_len {model.cfg.max_len}."
    )
  graphdef, state = nnx.split(model)
  return _sample(
    graphdef,
    state,
    key,
    jnp.asarray(tokens),
    jnp.asarray(lengths, jnp.int32),
    max_new_tokens=max_new_tokens,
    temperature=float(temperature),
    top_p=float(top_p),
    eos_id=eos_id,
  )


@functools.partial(jax.jit, static_argnames=("graphdef", "layer"))
def _last_hidden(graphdef, state, tokens, lengths, *, layer):
  model = nnx.merge(graphdef, state)
  h = model.hidden_states(tokens, layer)
  return h[jnp.arange(tokens.shape[0]), lengths - 1].astype(jnp.float32)


def last_token_embedding(
  model: TransformerLM, tokens: jax.Array, lengths: jax.Array, *, layer: int | None = None
) -> jax.Array:
  """Hidden state of block ``layer`` at each sequence's last token -> ``[batch, d]``.

  Args:
    model: a :class:`~jaxweights.TransformerLM` (any model whose
      ``hidden_states(tokens, layer)`` returns ``[batch, seq, d]``).
    tokens: ``[batch, seq]`` int right-padded sequences.
    lengths: ``[batch]`` sequence lengths (>= 1); the state is read at
      position ``lengths - 1``.
    layer: the number of blocks run (see ``TransformerLM.hidden_states``); None
      means after the last block.

  Returns:
    ``[batch, d_model]`` float32 hidden states.
  """
  graphdef, state = nnx.split(model)
  return _last_hidden(graphdef, state, jnp.asarray(tokens), jnp.asarray(lengths, jnp.int32), layer=layer)
