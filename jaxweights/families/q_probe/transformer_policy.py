"""The Q-probe :class:`~jaxweights.families.q_probe.policies.Policy` of the
library's own NNX :class:`~jaxweights.TransformerLM`: batched sampling under
``jax.jit`` (:func:`jaxweights.substrates.decoding.sample`) and the hidden state
of a chosen block at the last completion token
(:func:`jaxweights.substrates.decoding.last_token_embedding`).

Q-probe (Li et al., ICML 2024) reweights ``k`` completions of this base model by
``softmax(Q(phi) / beta)`` of a probe on these embeddings ``phi``; see
:mod:`jaxweights.families.q_probe.probe`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxweights.families.q_probe.policies import (
  Tokens,
  TokensLike,
  as_completions,
  as_prompts,
  check_k,
  joined,
  pad_rows,
  row_chunks,
)
from jaxweights.substrates import decoding
from jaxweights.substrates.models import TransformerLM


class TransformerPolicy:
  """:class:`~jaxweights.families.q_probe.policies.Policy` for a :class:`~jaxweights.TransformerLM`.

  Args:
    model: the base model (frozen: never updated here).
    layer: the block whose output is the embedding (``None``: the last block,
      before the final LayerNorm; 0: the token + position embeddings).
    max_new_tokens: completion budget ``T``.
    temperature: sampling temperature (0 = greedy).
    top_p: nucleus mass.
    eos_id: optional end token (kept in the completion; sampling of a row stops
      there).
    batch_size: rows (prompt x sample pairs) per compiled call; the last chunk
      is padded to it, so every call has one shape and compiles once.

  Raises:
    ValueError: ``max_new_tokens < 1``, ``temperature < 0``, ``top_p`` outside
      ``(0, 1]``, ``batch_size < 1``, ``layer`` outside ``[0, n_layers]``, or
      ``eos_id`` outside the vocabulary.
  """

  def __init__(
    self,
    model: TransformerLM,
    layer: int | None = None,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    *,
    batch_size: int = 1024,
  ):
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {temperature}.")
    if not 0 < top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    n_layers = model.cfg.n_layers
    if layer is not None and not 0 <= layer <= n_layers:
      raise ValueError(f"layer must be None or in [0, {n_layers}], got {layer}.")
    if eos_id is not None and not 0 <= eos_id < model.cfg.vocab_size:
      raise ValueError(f"eos_id {eos_id} is outside the vocabulary [0, {model.cfg.vocab_size}).")
    self.model = model
    self.layer = layer
    self.max_new_tokens = max_new_tokens
    self.temperature = temperature
    self.top_p = top_p
    self.eos_id = eos_id
    self.batch_size = batch_size

  @property
  def features(self) -> int:
    """The embedding size ``d``."""
    return self.model.cfg.d_model

  def _check_width(self, width: int) -> None:
    if width > self.model.cfg.max_len:
      raise ValueError(
        f"prompt length + max_new_tokens = {width} exceeds the model's max_len {self.model.cfg.max_len}."
      )

  def sample(self, key: jax.Array, prompts: TokensLike, k: int) -> Tokens:
    """Draws ``k`` completions per prompt.

    Args:
      key: PRNG key; chunk ``c`` of ``batch_size`` rows uses ``fold_in(key, c)``,
        so a result depends on ``batch_size`` as well as on the key.
      prompts: ``(tokens [P, L], lengths [P])`` right-padded.
      k: completions per prompt.

    Returns:
      ``Tokens(tokens [P, k, max_new_tokens], lengths [P, k])`` (completions
      only, padded with 0).

    Raises:
      ValueError: bad prompts or ``k``, or prompt length + ``max_new_tokens``
        beyond the model's ``max_len``.
    """
    prompts = as_prompts(prompts)
    check_k(k)
    p, plen_max = prompts.tokens.shape
    t = self.max_new_tokens
    self._check_width(plen_max + t)
    tokens = np.repeat(prompts.tokens, k, axis=0)
    lengths = np.repeat(prompts.lengths, k)
    n = p * k
    size = min(self.batch_size, max(n, 1))
    out = np.zeros((n, t), np.int32)
    out_len = np.zeros(n, np.int32)
    for c, (a, b) in enumerate(row_chunks(n, size)):
      buf, lens = decoding.sample(
        self.model,
        jax.random.fold_in(key, c),
        jnp.asarray(pad_rows(tokens[a:b], size)),
        jnp.asarray(pad_rows(lengths[a:b], size)),
        max_new_tokens=t,
        temperature=self.temperature,
        top_p=self.top_p,
        eos_id=self.eos_id,
      )
      buf, lens = np.asarray(buf)[: b - a], np.asarray(lens)[: b - a]
      start = lengths[a:b]
      comp = np.take_along_axis(buf, start[:, None] + np.arange(t)[None, :], axis=1)
      clen = lens - start
      out[a:b] = np.where(np.arange(t)[None, :] < clen[:, None], comp, 0)
      out_len[a:b] = clen
    return Tokens(out.reshape(p, k, t), out_len.reshape(p, k))

  def embed(self, prompts: TokensLike, completions: TokensLike) -> np.ndarray:
    """Block ``layer``'s hidden state at the last token of prompt + completion.

    Args:
      prompts: ``(tokens [P, L], lengths [P])``.
      completions: ``(tokens [P, k, T], lengths [P, k])`` as :meth:`sample`
        returns them; a completion of length 0 gives the prompt's last token.

    Returns:
      float32 ``[P, k, d_model]``.

    Raises:
      ValueError: bad prompts or completions, or rows longer than the model's
        ``max_len``.
    """
    prompts = as_prompts(prompts)
    completions = as_completions(completions, prompts.tokens.shape[0])
    p, k, t = completions.tokens.shape
    self._check_width(prompts.tokens.shape[1] + t)
    rows, lengths = joined(prompts, completions, pad_id=0)
    n = p * k
    size = min(self.batch_size, max(n, 1))
    out = np.zeros((n, self.features), np.float32)
    for a, b in row_chunks(n, size):
      emb = decoding.last_token_embedding(
        self.model,
        jnp.asarray(pad_rows(rows[a:b], size)),
        jnp.asarray(pad_rows(lengths[a:b], size)),
        layer=self.layer,
      )
      out[a:b] = np.asarray(emb)[: b - a]
    return out.reshape(p, k, self.features)
