"""Policy adapters for Q-probing: sampling and embeddings of a base model.

Two implementations of :class:`jaxweights.q_probe.Policy`:

* :class:`TransformerPolicy` for the project's own NNX
  :class:`~jaxweights.TransformerLM`: batched sampling under ``jax.jit``
  (:func:`jaxweights.sampling.sample`) and the hidden state of a chosen block at
  the last completion token (:func:`jaxweights.sampling.last_token_embedding`).
* :class:`HFCausalLMPolicy` for a Hugging Face ``transformers`` causal LM (the
  optional ``hf`` extra), either a Flax model (``FlaxAutoModelForCausalLM``
  and friends; transformers 4.x, the last line with Flax models) or a PyTorch
  one (needs ``torch``). Embeddings come back as numpy, so the probe side stays
  JAX either way.

Token conventions (both adapters): prompts are right-padded int arrays with
their lengths, a :class:`Tokens` ``(tokens [P, L], lengths [P])`` (a plain
``(tokens, lengths)`` tuple is accepted). ``sample(key, prompts, k)`` returns
the completions alone as ``Tokens(tokens [P, k, T], lengths [P, k])`` with ``T
= max_new_tokens``; a completion that ends at ``eos_id`` keeps it (its length
counts it), and positions past a completion's length hold ``pad_id`` (0 for
:class:`TransformerPolicy`). ``embed(prompts, completions)`` returns float32
``[P, k, d]``: the hidden state at the last token of prompt + completion.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxweights import sampling


class Tokens(NamedTuple):
  """Right-padded token ids ``[..., T]`` and their lengths ``[...]``."""

  tokens: np.ndarray
  lengths: np.ndarray


def pad_sequences(seqs, pad_id: int = 0, width: int | None = None) -> Tokens:
  """Right-pads a list of token-id lists into ``Tokens([n, width], [n])``.

  Args:
    seqs: sequences of ints.
    pad_id: the padding id.
    width: the padded length (default: the longest sequence).

  Raises:
    ValueError: a sequence is longer than ``width``.
  """
  seqs = [list(s) for s in seqs]
  lengths = np.asarray([len(s) for s in seqs], np.int32)
  width = int(lengths.max(initial=0)) if width is None else width
  if len(seqs) and lengths.max() > width:
    raise ValueError(f"a sequence of length {lengths.max()} does not fit width {width}.")
  tokens = np.full((len(seqs), width), pad_id, np.int32)
  for i, s in enumerate(seqs):
    tokens[i, :len(s)] = s
  return Tokens(tokens, lengths)


def _as_prompts(prompts) -> Tokens:
  tokens, lengths = prompts
  tokens = np.asarray(tokens)
  lengths = np.asarray(lengths)
  if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
    raise ValueError(
        f"prompts must be (tokens [P, L], lengths [P]); got shapes {tokens.shape} and "
        f"{lengths.shape}.")
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"prompt tokens must be integers, got {tokens.dtype}.")
  if len(lengths) and (lengths.min() < 1 or lengths.max() > tokens.shape[1]):
    raise ValueError(
        f"prompt lengths must be in [1, {tokens.shape[1]}], got range "
        f"[{lengths.min()}, {lengths.max()}].")
  return Tokens(tokens.astype(np.int32), lengths.astype(np.int32))


def _as_completions(completions, n_prompts: int) -> Tokens:
  tokens, lengths = completions
  tokens = np.asarray(tokens)
  lengths = np.asarray(lengths)
  if tokens.ndim != 3 or lengths.shape != tokens.shape[:2] or tokens.shape[0] != n_prompts:
    raise ValueError(
        f"completions must be (tokens [P, k, T], lengths [P, k]) with P = {n_prompts} "
        f"prompts; got shapes {tokens.shape} and {lengths.shape}.")
  if lengths.size and (lengths.min() < 0 or lengths.max() > tokens.shape[2]):
    raise ValueError(
        f"completion lengths must be in [0, {tokens.shape[2]}], got range "
        f"[{lengths.min()}, {lengths.max()}].")
  return Tokens(tokens.astype(np.int32), lengths.astype(np.int32))


def _check_k(k: int) -> None:
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive int, got {k!r}.")


def _completion_lengths(comp: np.ndarray, eos_id: int | None) -> np.ndarray:
  """Length of each ``[n, T]`` completion: up to and including the first eos."""
  n, t = comp.shape
  if eos_id is None:
    return np.full(n, t, np.int32)
  is_eos = comp == eos_id
  return np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, t).astype(np.int32)


def _joined(prompts: Tokens, completions: Tokens, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded prompt + completion rows ``[P * k, L + T]`` and their lengths."""
  p, k, t = completions.tokens.shape
  width = prompts.tokens.shape[1] + t
  plen = np.repeat(prompts.lengths, k)
  clen = completions.lengths.reshape(-1)
  rows = np.full((p * k, width), pad_id, np.int32)
  rows[:, :prompts.tokens.shape[1]] = np.repeat(prompts.tokens, k, axis=0)
  # Write each completion right after its prompt (over the prompt's padding);
  # its own padding lands after the last real token, where it is inert.
  np.put_along_axis(rows, plen[:, None] + np.arange(t)[None, :],
                    completions.tokens.reshape(p * k, t), axis=1)
  pos = np.arange(width)[None, :]
  rows = np.where(pos < (plen + clen)[:, None], rows, pad_id)
  return rows, plen + clen


def _chunks(n: int, size: int):
  for start in range(0, n, size):
    yield start, min(start + size, n)


def _pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """Pads the leading axis to ``size`` by repeating the first row (fixed shapes)."""
  if len(x) == size:
    return x
  return np.concatenate([x, np.repeat(x[:1], size - len(x), axis=0)])


class TransformerPolicy:
  """:class:`~jaxweights.q_probe.Policy` for a :class:`~jaxweights.TransformerLM`.

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
  """

  def __init__(self, model, layer: int | None = None, max_new_tokens: int = 16,
               temperature: float = 1.0, top_p: float = 1.0, eos_id: int | None = None,
               *, batch_size: int = 1024):
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
          f"prompt length + max_new_tokens = {width} exceeds the model's max_len "
          f"{self.model.cfg.max_len}.")

  def sample(self, key: jax.Array, prompts, k: int) -> Tokens:
    """Draws ``k`` completions per prompt.

    Args:
      key: PRNG key; chunk ``c`` of ``batch_size`` rows uses ``fold_in(key, c)``,
        so a result depends on ``batch_size`` as well as on the key.
      prompts: ``(tokens [P, L], lengths [P])`` right-padded.
      k: completions per prompt.

    Returns:
      ``Tokens(tokens [P, k, max_new_tokens], lengths [P, k])`` (completions
      only, padded with 0).
    """
    prompts = _as_prompts(prompts)
    _check_k(k)
    p, plen_max = prompts.tokens.shape
    t = self.max_new_tokens
    self._check_width(plen_max + t)
    tokens = np.repeat(prompts.tokens, k, axis=0)
    lengths = np.repeat(prompts.lengths, k)
    n = p * k
    size = min(self.batch_size, max(n, 1))
    out = np.zeros((n, t), np.int32)
    out_len = np.zeros(n, np.int32)
    for c, (a, b) in enumerate(_chunks(n, size)):
      buf, lens = sampling.sample(
          self.model, jax.random.fold_in(key, c), jnp.asarray(_pad_rows(tokens[a:b], size)),
          jnp.asarray(_pad_rows(lengths[a:b], size)), max_new_tokens=t,
          temperature=self.temperature, top_p=self.top_p, eos_id=self.eos_id)
      buf, lens = np.asarray(buf)[:b - a], np.asarray(lens)[:b - a]
      start = lengths[a:b]
      comp = np.take_along_axis(buf, start[:, None] + np.arange(t)[None, :], axis=1)
      clen = lens - start
      out[a:b] = np.where(np.arange(t)[None, :] < clen[:, None], comp, 0)
      out_len[a:b] = clen
    return Tokens(out.reshape(p, k, t), out_len.reshape(p, k))

  def embed(self, prompts, completions) -> np.ndarray:
    """Block ``layer``'s hidden state at the last token of prompt + completion.

    Args:
      prompts: ``(tokens [P, L], lengths [P])``.
      completions: ``(tokens [P, k, T], lengths [P, k])`` as :meth:`sample`
        returns them; a completion of length 0 gives the prompt's last token.

    Returns:
      float32 ``[P, k, d_model]``.
    """
    prompts = _as_prompts(prompts)
    completions = _as_completions(completions, prompts.tokens.shape[0])
    p, k, t = completions.tokens.shape
    self._check_width(prompts.tokens.shape[1] + t)
    rows, lengths = _joined(prompts, completions, pad_id=0)
    n = p * k
    size = min(self.batch_size, max(n, 1))
    out = np.zeros((n, self.features), np.float32)
    for a, b in _chunks(n, size):
      emb = sampling.last_token_embedding(
          self.model, jnp.asarray(_pad_rows(rows[a:b], size)),
          jnp.asarray(_pad_rows(lengths[a:b], size)), layer=self.layer)
      out[a:b] = np.asarray(emb)[:b - a]
    return out.reshape(p, k, self.features)


# --- Hugging Face transformers -------------------------------------------------------------


def _flax_numpy_rules():
  """transformers' Flax models rely on implicit rank promotion (``x[None] + b``)."""
  return jax.numpy_rank_promotion("allow")


def _is_flax_model(model) -> bool:
  try:
    from transformers import FlaxPreTrainedModel  # pylint: disable=import-outside-toplevel
  except ImportError:  # transformers >= 5 has no Flax models
    return False
  return isinstance(model, FlaxPreTrainedModel)


def _is_torch_model(model) -> bool:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  return isinstance(model, torch.nn.Module)


class HFCausalLMPolicy:
  """:class:`~jaxweights.q_probe.Policy` for a Hugging Face causal LM.

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
  """

  def __init__(self, model, layer: int = -1, max_new_tokens: int = 16,
               temperature: float = 1.0, top_p: float = 1.0, eos_id: int | None = None,
               *, pad_id: int | None = None, batch_size: int = 256):
    if _is_flax_model(model):
      self.backend = "flax"
    elif _is_torch_model(model):
      self.backend = "torch"
      model.eval()
    else:
      raise TypeError(
          f"expected a transformers Flax or PyTorch causal LM, got {type(model).__name__}.")
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
    self.layer = layer
    self.max_new_tokens = max_new_tokens
    self.temperature = temperature
    self.top_p = top_p
    self.batch_size = batch_size
    self.max_len = getattr(cfg, "max_position_embeddings", None) or getattr(
        cfg, "n_positions", None)

  def _check_width(self, width: int) -> None:
    if self.max_len is not None and width > self.max_len:
      raise ValueError(
          f"prompt length + max_new_tokens = {width} exceeds the model's "
          f"{self.max_len} positions.")

  def _generate_kwargs(self) -> dict[str, Any]:
    kw = dict(max_new_tokens=self.max_new_tokens, pad_token_id=self.pad_id,
              eos_token_id=self.eos_id)
    if self.temperature == 0:
      kw.update(do_sample=False)
    else:
      kw.update(do_sample=True, temperature=float(self.temperature), top_p=float(self.top_p),
                top_k=0)
    return kw

  def sample(self, key: jax.Array, prompts, k: int) -> Tokens:
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
    """
    prompts = _as_prompts(prompts)
    _check_k(k)
    p, width = prompts.tokens.shape
    t = self.max_new_tokens
    self._check_width(width + t)
    # Left padding: generate() appends after the last column.
    shift = width - prompts.lengths
    cols = (np.arange(width)[None, :] - shift[:, None]) % width
    left = np.take_along_axis(prompts.tokens, cols, axis=1)
    mask = (np.arange(width)[None, :] >= shift[:, None]).astype(np.int32)
    left = np.where(mask > 0, left, self.pad_id).astype(np.int32)
    left, mask = np.repeat(left, k, axis=0), np.repeat(mask, k, axis=0)
    n = p * k
    size = min(self.batch_size, max(n, 1))
    out = np.full((n, t), self.pad_id, np.int32)
    for c, (a, b) in enumerate(_chunks(n, size)):
      sub = jax.random.fold_in(key, c)
      ids, att = _pad_rows(left[a:b], size), _pad_rows(mask[a:b], size)
      if self.backend == "flax":
        with _flax_numpy_rules():
          seq = self.model.generate(jnp.asarray(ids), attention_mask=jnp.asarray(att),
                                    prng_key=sub, **self._generate_kwargs()).sequences
        seq = np.asarray(seq)
      else:
        seq = self._torch_generate(sub, ids, att)
      comp = seq[:b - a, width:width + t]
      out[a:b, :comp.shape[1]] = comp
    lengths = _completion_lengths(out, self.eos_id)
    # A row that stopped early is padded by generate (and by us) after its eos.
    out = np.where(np.arange(t)[None, :] < lengths[:, None], out, self.pad_id)
    return Tokens(out.reshape(p, k, t), lengths.reshape(p, k))

  def _torch_generate(self, key, ids, mask) -> np.ndarray:
    import torch  # pylint: disable=import-outside-toplevel

    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
      torch.manual_seed(seed)
      seq = self.model.generate(torch.from_numpy(ids).long(),
                                attention_mask=torch.from_numpy(mask).long(),
                                **self._generate_kwargs())
    return seq.cpu().numpy()

  @functools.cached_property
  def _flax_hidden(self):
    model, layer = self.model, self.layer

    @jax.jit
    def hidden(params, ids, mask, last):
      out = model(ids, attention_mask=mask, params=params, output_hidden_states=True)
      h = out.hidden_states[layer]
      return h[jnp.arange(ids.shape[0]), last].astype(jnp.float32)

    return hidden

  def embed(self, prompts, completions) -> np.ndarray:
    """``hidden_states[layer]`` at the last token of prompt + completion.

    Args:
      prompts: ``(tokens [P, L], lengths [P])``.
      completions: ``(tokens [P, k, T], lengths [P, k])``.

    Returns:
      float32 numpy ``[P, k, hidden_size]``.
    """
    prompts = _as_prompts(prompts)
    completions = _as_completions(completions, prompts.tokens.shape[0])
    p, k, t = completions.tokens.shape
    self._check_width(prompts.tokens.shape[1] + t)
    rows, lengths = _joined(prompts, completions, self.pad_id)
    mask = (np.arange(rows.shape[1])[None, :] < lengths[:, None]).astype(np.int32)
    last = lengths - 1
    chunks = []
    size = min(self.batch_size, max(p * k, 1))
    for a, b in _chunks(p * k, size):
      if self.backend == "flax":  # fixed chunk shapes: one compilation
        with _flax_numpy_rules():
          h = self._flax_hidden(self.model.params, jnp.asarray(_pad_rows(rows[a:b], size)),
                                jnp.asarray(_pad_rows(mask[a:b], size)),
                                jnp.asarray(_pad_rows(last[a:b], size)))
        chunks.append(np.asarray(h)[:b - a])
      else:
        import torch  # pylint: disable=import-outside-toplevel

        with torch.no_grad():
          out = self.model(torch.from_numpy(rows[a:b]).long(),
                           attention_mask=torch.from_numpy(mask[a:b]).long(),
                           output_hidden_states=True)
          h = out.hidden_states[self.layer]
          h = h[torch.arange(b - a), torch.from_numpy(last[a:b]).long()]
        chunks.append(h.float().cpu().numpy())
    d = chunks[0].shape[-1] if chunks else self.model.config.hidden_size
    out = np.concatenate(chunks) if chunks else np.zeros((0, d), np.float32)
    return out.astype(np.float32).reshape(p, k, d)
