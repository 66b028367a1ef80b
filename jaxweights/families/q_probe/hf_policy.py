"""The Q-probe :class:`~jaxweights.families.q_probe.policies.Policy` of a Hugging
Face ``transformers`` causal LM (the optional ``hf`` extra): a Flax model
(``FlaxAutoModelForCausalLM`` and friends; transformers 4.x, the last line with
Flax models) or a PyTorch one (needs ``torch``). Embeddings come back as numpy, so
the probe side stays JAX either way. One backend class per framework does the
two framework calls (``generate`` and a forward pass with hidden states); the
policy itself is framework-free.

Q-probe (Li et al., ICML 2024) reweights ``k`` completions of this base model by
``softmax(Q(phi) / beta)`` of a probe on these embeddings ``phi``; see
:mod:`jaxweights.families.q_probe.probe`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxweights.families.q_probe.policies import (
  Tokens,
  TokensLike,
  as_completions,
  as_prompts,
  check_k,
  completion_lengths,
  joined,
  pad_rows,
  row_chunks,
)


class _FlaxBackend:
  """A transformers Flax model (``FlaxPreTrainedModel``)."""

  name = "flax"

  def __init__(self, model, layer: int):
    self.model, self.layer = model, layer

  @staticmethod
  def accepts(model) -> bool:
    try:
      from transformers import FlaxPreTrainedModel  # pylint: disable=import-outside-toplevel
    except ImportError:  # transformers >= 5 has no Flax models
      return False
    return isinstance(model, FlaxPreTrainedModel)

  @staticmethod
  def _numpy_rules():
    """transformers' Flax models rely on implicit rank promotion (``x[None] + b``)."""
    return jax.numpy_rank_promotion("allow")

  def generate(self, key: jax.Array, ids: np.ndarray, mask: np.ndarray, **kwargs) -> np.ndarray:
    with self._numpy_rules():
      seq = self.model.generate(
        jnp.asarray(ids), attention_mask=jnp.asarray(mask), prng_key=key, **kwargs
      ).sequences
    return np.asarray(seq)

  @functools.cached_property
  def _hidden(self):
    model, layer = self.model, self.layer

    @jax.jit
    def hidden(params, ids, mask, last):
      out = model(ids, attention_mask=mask, params=params, output_hidden_states=True)
      h = out.hidden_states[layer]
      return h[jnp.arange(ids.shape[0]), last].astype(jnp.float32)

    return hidden

  def hidden(self, ids: np.ndarray, mask: np.ndarray, last: np.ndarray) -> np.ndarray:
    with self._numpy_rules():
      h = self._hidden(self.model.params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(last))
    return np.asarray(h)


class _TorchBackend:
  """A transformers PyTorch model (``torch.nn.Module``), run in eval mode."""

  name = "torch"

  def __init__(self, model, layer: int):
    self.model, self.layer = model, layer
    model.eval()

  @staticmethod
  def accepts(model) -> bool:
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      return False
    return isinstance(model, torch.nn.Module)

  def generate(self, key: jax.Array, ids: np.ndarray, mask: np.ndarray, **kwargs) -> np.ndarray:
    import torch  # pylint: disable=import-outside-toplevel

    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
      torch.manual_seed(seed)
      seq = self.model.generate(
        torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(), **kwargs
      )
    return seq.cpu().numpy()

  def hidden(self, ids: np.ndarray, mask: np.ndarray, last: np.ndarray) -> np.ndarray:
    import torch  # pylint: disable=import-outside-toplevel

    with torch.no_grad():
      out = self.model(
        torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(), output_hidden_states=True
      )
      h = out.hidden_states[self.layer]
      h = h[torch.arange(ids.shape[0]), torch.from_numpy(last).long()]
    return h.float().cpu().numpy()


_BACKENDS = (_FlaxBackend, _TorchBackend)


class HFCausalLMPolicy:
  """:class:`~jaxweights.families.q_probe.policies.Policy` for a Hugging Face causal LM.

  Works with a Flax model (e.g. ``FlaxGPT2LMHeadModel``; transformers 4.x) or a
  PyTorch one (e.g. ``GPT2LMHeadModel``; needs torch). Token ids in, numpy out:
  tokenising text is the caller's business (any ``PreTrainedTokenizer``).

  Sampling left-pads the prompts internally (``generate`` continues from the
  last column) with an attention mask, draws ``k`` completions per prompt with
  ``temperature`` / ``top_p`` (``top_k`` disabled, unlike transformers'
  default of 50), and stops a row at ``eos_id``. Embeddings run the model on
  right-padded prompt + completion rows (positions start at 0, as for an
  unpadded sequence) with ``output_hidden_states=True``.

  Args:
    model: a transformers causal LM, Flax or PyTorch (put in eval mode here).
    layer: index into the model's ``hidden_states`` tuple: 0 = embeddings, i =
      after block i, -1 = the last entry (for GPT-2 that one has the final
      LayerNorm applied).
    max_new_tokens: completion budget ``T``.
    temperature: 0 = greedy decoding.
    top_p: nucleus mass.
    eos_id: optional end token (default: the model config's ``eos_token_id``;
      pass -1 for none).
    pad_id: the id written after a completion's end (default: the config's
      ``pad_token_id``, else 0).
    batch_size: rows per model call.

  Raises:
    TypeError: ``model`` is neither a transformers Flax model nor a
      ``torch.nn.Module``.
    ValueError: ``max_new_tokens < 1``, ``temperature < 0``, ``top_p`` outside
      ``(0, 1]``, ``batch_size < 1``, or ``layer`` outside the hidden states.
  """

  def __init__(
    self,
    model: Any,
    layer: int = -1,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    *,
    pad_id: int | None = None,
    batch_size: int = 256,
  ):
    backend = next((b for b in _BACKENDS if b.accepts(model)), None)
    if backend is None:
      raise TypeError(f"expected a transformers Flax or PyTorch causal LM, got {type(model).__name__}.")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {temperature}.")
    if not 0 < top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    cfg = model.config
    n_hidden = cfg.num_hidden_layers + 1
    if not -n_hidden <= layer < n_hidden:
      raise ValueError(f"layer must be in [{-n_hidden}, {n_hidden}), got {layer}.")
    if eos_id is None:
      eos_id = getattr(cfg, "eos_token_id", None)
    self.eos_id = None if eos_id is None or eos_id < 0 else int(eos_id)
    if pad_id is None:
      pad_id = getattr(cfg, "pad_token_id", None)
    self.pad_id = 0 if pad_id is None else int(pad_id)
    self.model = model
    self.backend = backend(model, layer)
    self.layer = layer
    self.max_new_tokens = max_new_tokens
    self.temperature = temperature
    self.top_p = top_p
    self.batch_size = batch_size
    self.max_len = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)

  def _check_width(self, width: int) -> None:
    if self.max_len is not None and width > self.max_len:
      raise ValueError(
        f"prompt length + max_new_tokens = {width} exceeds the model's {self.max_len} positions."
      )

  def _generate_kwargs(self) -> dict[str, Any]:
    kw = dict(max_new_tokens=self.max_new_tokens, pad_token_id=self.pad_id, eos_token_id=self.eos_id)
    if self.temperature == 0:
      kw.update(do_sample=False)
    else:
      kw.update(do_sample=True, temperature=float(self.temperature), top_p=float(self.top_p), top_k=0)
    return kw

  def sample(self, key: jax.Array, prompts: TokensLike, k: int) -> Tokens:
    """Draws ``k`` completions per prompt.

    Args:
      key: PRNG key (the Flax model's ``prng_key``; for PyTorch it seeds a
        forked torch RNG, leaving the global one untouched). Chunk ``c`` of
        ``batch_size`` rows uses ``fold_in(key, c)``.
      prompts: ``(tokens [P, L], lengths [P])`` right-padded.
      k: completions per prompt.

    Returns:
      ``Tokens(tokens [P, k, max_new_tokens], lengths [P, k])``, padded with
      ``pad_id``.

    Raises:
      ValueError: bad prompts or ``k``, or prompt length + ``max_new_tokens``
        beyond the model's positions.
    """
    prompts = as_prompts(prompts)
    check_k(k)
    p, width = prompts.tokens.shape
    t = self.max_new_tokens
    self._check_width(width + t)
    left, mask = self._left_padded(prompts)
    left, mask = np.repeat(left, k, axis=0), np.repeat(mask, k, axis=0)
    n = p * k
    size = min(self.batch_size, max(n, 1))
    out = np.full((n, t), self.pad_id, np.int32)
    for c, (a, b) in enumerate(row_chunks(n, size)):
      seq = self.backend.generate(
        jax.random.fold_in(key, c),
        pad_rows(left[a:b], size),
        pad_rows(mask[a:b], size),
        **self._generate_kwargs(),
      )
      comp = seq[: b - a, width : width + t]
      out[a:b, : comp.shape[1]] = comp
    lengths = completion_lengths(out, self.eos_id)
    # A row that stopped early is padded by generate (and by us) after its eos.
    out = np.where(np.arange(t)[None, :] < lengths[:, None], out, self.pad_id)
    return Tokens(out.reshape(p, k, t), lengths.reshape(p, k))

  def _left_padded(self, prompts: Tokens) -> tuple[np.ndarray, np.ndarray]:
    """Prompts moved to the right edge (``generate`` appends after the last
    column) and their attention mask, ``[P, L]`` each."""
    width = prompts.tokens.shape[1]
    shift = width - prompts.lengths
    cols = (np.arange(width)[None, :] - shift[:, None]) % width
    left = np.take_along_axis(prompts.tokens, cols, axis=1)
    mask = (np.arange(width)[None, :] >= shift[:, None]).astype(np.int32)
    return np.where(mask > 0, left, self.pad_id).astype(np.int32), mask

  def embed(self, prompts: TokensLike, completions: TokensLike) -> np.ndarray:
    """``hidden_states[layer]`` at the last token of prompt + completion.

    Args:
      prompts: ``(tokens [P, L], lengths [P])``.
      completions: ``(tokens [P, k, T], lengths [P, k])``.

    Returns:
      float32 numpy ``[P, k, hidden_size]``.

    Raises:
      ValueError: bad prompts or completions, or rows longer than the model's
        positions.
    """
    prompts = as_prompts(prompts)
    completions = as_completions(completions, prompts.tokens.shape[0])
    p, k, t = completions.tokens.shape
    self._check_width(prompts.tokens.shape[1] + t)
    rows, lengths = joined(prompts, completions, self.pad_id)
    mask = (np.arange(rows.shape[1])[None, :] < lengths[:, None]).astype(np.int32)
    last = lengths - 1
    size = min(self.batch_size, max(p * k, 1))
    # Fixed chunk shapes: one compilation for the Flax backend.
    parts = [
      self.backend.hidden(pad_rows(rows[a:b], size), pad_rows(mask[a:b], size), pad_rows(last[a:b], size))[
        : b - a
      ]
      for a, b in row_chunks(p * k, size)
    ]
    d = parts[0].shape[-1] if parts else self.model.config.hidden_size
    out = np.concatenate(parts) if parts else np.zeros((0, d), np.float32)
    return out.astype(np.float32).reshape(p, k, d)
