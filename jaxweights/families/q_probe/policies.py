"""What Q-probing needs of a base model, and the token conventions its adapters share.

Q-probe (Li et al., ICML 2024) reweights ``k`` completions sampled from a frozen
base model by a probe on their embeddings (the math and the weights are in
:mod:`jaxweights.families.q_probe.probe`); this module defines the two things it
needs of that model, sampling and embedding.

A :class:`Policy` samples completions and embeds (prompt, completion) pairs.
Adapters: :class:`~jaxweights.TransformerPolicy` (the library's own NNX
:class:`~jaxweights.TransformerLM`, in
:mod:`jaxweights.families.q_probe.transformer_policy`) and
:class:`~jaxweights.HFCausalLMPolicy` (a Hugging Face ``transformers`` causal LM,
Flax or PyTorch, in :mod:`jaxweights.families.q_probe.hf_policy`).
:class:`PrecomputedEmbeddings` is the "API" mode: features stored on disk.

Token conventions (both adapters): prompts are right-padded int arrays with
their lengths, a :class:`Tokens` ``(tokens [P, L], lengths [P])`` (a plain
``(tokens, lengths)`` tuple is accepted). ``sample(key, prompts, k)`` returns
the completions alone as ``Tokens(tokens [P, k, T], lengths [P, k])`` with ``T
= max_new_tokens``; a completion that ends at ``eos_id`` keeps it (its length
counts it), and positions past a completion's length hold ``pad_id`` (0 for
:class:`~jaxweights.TransformerPolicy`). ``embed(prompts, completions)`` returns
float32 ``[P, k, d]``: the hidden state at the last token of prompt + completion.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np


class Tokens(NamedTuple):
  """Right-padded token ids ``[..., T]`` and their lengths ``[...]``.

  Attributes:
    tokens: ``[..., T]`` integer token ids, right-padded.
    lengths: ``[...]`` integer lengths (the real tokens of each row).
  """

  tokens: np.ndarray
  lengths: np.ndarray


#: Token ids with their lengths: a :class:`Tokens` or a plain ``(tokens, lengths)`` tuple.
TokensLike = Tokens | tuple[jax.typing.ArrayLike, jax.typing.ArrayLike]


def pad_sequences(seqs: Iterable[Iterable[int]], pad_id: int = 0, width: int | None = None) -> Tokens:
  """Right-pads a list of token-id lists into ``Tokens([n, width], [n])``.

  Args:
    seqs: sequences of ints.
    pad_id: the padding id.
    width: the padded length (default: the longest sequence).

  Returns:
    ``Tokens(tokens [n, width] int32, lengths [n] int32)``.

  Raises:
    ValueError: a sequence is longer than ``width``.

  Examples:
    >>> import jaxweights as jw
    >>> tokens, lengths = jw.q_probe.pad_sequences([[5, 6, 7], [8]], pad_id=0)
    >>> tokens.tolist(), lengths.tolist()
    ([[5, 6, 7], [8, 0, 0]], [3, 1])
  """
  seqs = [list(s) for s in seqs]
  lengths = np.asarray([len(s) for s in seqs], np.int32)
  width = int(lengths.max(initial=0)) if width is None else width
  if len(seqs) and lengths.max() > width:
    raise ValueError(f"a sequence of length {lengths.max()} does not fit width {width}.")
  tokens = np.full((len(seqs), width), pad_id, np.int32)
  for i, s in enumerate(seqs):
    tokens[i, : len(s)] = s
  return Tokens(tokens, lengths)


def as_prompts(prompts: TokensLike) -> Tokens:
  """Validates right-padded prompts.

  Args:
    prompts: ``(tokens [P, L], lengths [P])``, integer ids.

  Returns:
    The prompts as int32 :class:`Tokens`.

  Raises:
    ValueError: other shapes, non-integer tokens, or a length outside ``[1, L]``.
  """
  tokens, lengths = prompts
  tokens = np.asarray(tokens)
  lengths = np.asarray(lengths)
  if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
    raise ValueError(
      f"prompts must be (tokens [P, L], lengths [P]); got shapes {tokens.shape} and {lengths.shape}."
    )
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"prompt tokens must be integers, got {tokens.dtype}.")
  if len(lengths) and (lengths.min() < 1 or lengths.max() > tokens.shape[1]):
    raise ValueError(
      f"prompt lengths must be in [1, {tokens.shape[1]}], got range [{lengths.min()}, {lengths.max()}]."
    )
  return Tokens(tokens.astype(np.int32), lengths.astype(np.int32))


def as_completions(completions: TokensLike, n_prompts: int) -> Tokens:
  """Validates completions grouped per prompt.

  Args:
    completions: ``(tokens [P, k, T], lengths [P, k])``.
    n_prompts: the number of prompts ``P`` they belong to.

  Returns:
    The completions as int32 :class:`Tokens`.

  Raises:
    ValueError: other shapes, or a length outside ``[0, T]``.
  """
  tokens, lengths = completions
  tokens = np.asarray(tokens)
  lengths = np.asarray(lengths)
  if tokens.ndim != 3 or lengths.shape != tokens.shape[:2] or tokens.shape[0] != n_prompts:
    raise ValueError(
      f"completions must be (tokens [P, k, T], lengths [P, k]) with P = {n_prompts} "
      f"prompts; got shapes {tokens.shape} and {lengths.shape}."
    )
  if lengths.size and (lengths.min() < 0 or lengths.max() > tokens.shape[2]):
    raise ValueError(
      f"completion lengths must be in [0, {tokens.shape[2]}], got range [{lengths.min()}, {lengths.max()}]."
    )
  return Tokens(tokens.astype(np.int32), lengths.astype(np.int32))


def check_k(k: int) -> None:
  """Validates the number of completions per prompt.

  Args:
    k: completions per prompt.

  Raises:
    ValueError: ``k`` is not a positive int.
  """
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive int, got {k!r}.")


def completion_lengths(comp: np.ndarray, eos_id: int | None) -> np.ndarray:
  """Length of each ``[n, T]`` completion: up to and including the first eos.

  Args:
    comp: ``[n, T]`` completion token ids.
    eos_id: the end token (None: every completion has length ``T``).

  Returns:
    ``[n]`` int32 lengths.
  """
  n, t = comp.shape
  if eos_id is None:
    return np.full(n, t, np.int32)
  is_eos = comp == eos_id
  return np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, t).astype(np.int32)


def joined(prompts: Tokens, completions: Tokens, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded prompt + completion rows ``[P * k, L + T]`` and their lengths.

  Args:
    prompts: ``Tokens([P, L], [P])``.
    completions: ``Tokens([P, k, T], [P, k])``.
    pad_id: the id written after each row's last real token.

  Returns:
    ``(rows [P * k, L + T] int32, lengths [P * k])``, row ``p * k + j`` holding
    prompt ``p`` followed by its completion ``j``.
  """
  p, k, t = completions.tokens.shape
  width = prompts.tokens.shape[1] + t
  plen = np.repeat(prompts.lengths, k)
  clen = completions.lengths.reshape(-1)
  rows = np.full((p * k, width), pad_id, np.int32)
  rows[:, : prompts.tokens.shape[1]] = np.repeat(prompts.tokens, k, axis=0)
  # Write each completion right after its prompt (over the prompt's padding);
  # its own padding lands after the last real token, where it is inert.
  np.put_along_axis(rows, plen[:, None] + np.arange(t)[None, :], completions.tokens.reshape(p * k, t), axis=1)
  pos = np.arange(width)[None, :]
  rows = np.where(pos < (plen + clen)[:, None], rows, pad_id)
  return rows, plen + clen


def row_chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
  """``(start, stop)`` of consecutive chunks of ``size`` rows covering ``n`` rows.

  Args:
    n: the number of rows.
    size: rows per chunk, ``>= 1``; the last chunk may be shorter.

  Returns:
    An iterator of ``(start, stop)`` pairs.
  """
  for start in range(0, n, size):
    yield start, min(start + size, n)


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """Pads the leading axis to ``size`` by repeating the first row (fixed shapes).

  Args:
    x: ``[n, ...]`` rows, ``1 <= n <= size``.
    size: the padded length.

  Returns:
    ``[size, ...]``: ``x`` followed by copies of its first row.
  """
  if len(x) == size:
    return x
  return np.concatenate([x, np.repeat(x[:1], size - len(x), axis=0)])


class Policy(Protocol):
  """What Q-probing needs of a base model: sampling and embeddings.

  ``sample(key, prompts, k)`` returns k completions per prompt (any
  representation the same policy's ``embed`` accepts); ``embed(prompts,
  completions)`` returns ``[prompts, k, d]`` float32 features of each
  (prompt, completion) pair.
  """

  def sample(self, key: jax.Array, prompts: TokensLike, k: int) -> Any:
    """Draws ``k`` completions per prompt.

    Args:
      key: PRNG key.
      prompts: ``(tokens [P, L], lengths [P])`` right-padded.
      k: completions per prompt.

    Returns:
      The completions, in the representation ``embed`` accepts (the adapters
      return ``Tokens([P, k, T], [P, k])``).
    """

  def embed(self, prompts: TokensLike, completions: Any) -> np.ndarray:
    """Features of each (prompt, completion) pair.

    Args:
      prompts: ``(tokens [P, L], lengths [P])`` right-padded.
      completions: as :meth:`sample` returns them.

    Returns:
      float32 ``[P, k, d]`` features.
    """


class PrecomputedEmbeddings:
  """The "API" mode: features stored on disk; the probe never touches the model.

  ``save(path, features [P, k, d], rewards [P, k], mask=None)`` writes one
  ``.npz``; ``load(path)`` returns an instance with ``features``, ``rewards`` and
  ``mask`` arrays.

  Args:
    features: ``[P, k, d]`` features of each (prompt, candidate) pair.
    rewards: ``[P, k]`` rewards.
    mask: optional ``[P, k]`` booleans marking the real candidates (default: all).

  Attributes:
    features: ``[P, k, d]`` float32.
    rewards: ``[P, k]`` float32.
    mask: ``[P, k]`` bool.

  Raises:
    ValueError: shapes other than ``[P, k, d]``, ``[P, k]`` and ``[P, k]``.

  Examples:
    >>> import numpy as np
    >>> import jaxweights as jw
    >>> data = jw.PrecomputedEmbeddings(np.ones((2, 3, 4)), np.zeros((2, 3)))
    >>> features, rewards, prompt_ids = data.flat()
    >>> features.shape, prompt_ids.tolist()
    ((6, 4), [0, 0, 0, 1, 1, 1])
  """

  def __init__(
    self,
    features: jax.typing.ArrayLike,
    rewards: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike | None = None,
  ):
    self.features = np.asarray(features, np.float32)
    self.rewards = np.asarray(rewards, np.float32)
    self.mask = np.ones(self.rewards.shape, bool) if mask is None else np.asarray(mask, bool)
    if self.features.ndim != 3 or self.features.shape[:2] != self.rewards.shape:
      raise ValueError(
        f"features must be [prompts, k, d] and rewards [prompts, k]; got "
        f"{self.features.shape} and {self.rewards.shape}."
      )
    if self.mask.shape != self.rewards.shape:
      raise ValueError(f"mask shape {self.mask.shape} does not match rewards {self.rewards.shape}.")

  @staticmethod
  def save(
    path: str | os.PathLike,
    features: jax.typing.ArrayLike,
    rewards: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike | None = None,
  ) -> None:
    """Validates the arrays and writes them to one ``.npz`` file.

    Args:
      path: the file (numpy appends ``.npz`` to a name without it).
      features: ``[P, k, d]`` features.
      rewards: ``[P, k]`` rewards.
      mask: optional ``[P, k]`` real candidates.

    Raises:
      ValueError: bad shapes (see the class).
    """
    e = PrecomputedEmbeddings(features, rewards, mask)
    np.savez(path, features=e.features, rewards=e.rewards, mask=e.mask)

  @classmethod
  def load(cls, path: str | os.PathLike) -> PrecomputedEmbeddings:
    """Reads a file written by :meth:`save`.

    Args:
      path: the ``.npz`` file.

    Returns:
      The stored :class:`PrecomputedEmbeddings`.
    """
    with np.load(path) as f:
      return cls(f["features"], f["rewards"], f["mask"])

  def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The real candidates as flat arrays, for :func:`~jaxweights.train_probe`.

    Returns:
      ``(features [N, d], rewards [N], prompt_ids [N])`` of the real
      candidates, in prompt order.
    """
    p, k = self.rewards.shape
    ids = np.repeat(np.arange(p), k).reshape(p, k)
    m = self.mask
    return self.features[m], self.rewards[m], ids[m]
