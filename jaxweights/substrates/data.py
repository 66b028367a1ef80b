"""Datasets and batchers whose every batch is a pure function of ``(seed, step)``.

A run that is resumed from a checkpoint at step ``s`` asks for batch ``s`` and
gets exactly the batch the uninterrupted run would have seen; nothing here keeps
an iterator position. Everything is host-side numpy; hand the batches to
:func:`~jaxweights.shard_batch`.

* :func:`batch_indices`: epoch-wise shuffled indices for random-access datasets.
* :func:`load_digits` / :func:`digits_batch`: scikit-learn's offline 8x8 digits.
* :func:`stdlib_corpus` / :func:`prose_corpus`: token streams built from the
  Python standard library's own source (or its pydoc topics), held out by file,
  with a byte-level BPE trained on the training files only; cached on disk.
* :func:`mixture_corpus` / :func:`mixture_lm_batch`: a mixture of offline text
  domains (Python, English prose, C) with i.i.d. held-out rows per domain, and
  uniform-mixture batches.
* :func:`lm_batch` / :func:`lm_eval_batches`: random and exhaustive windows.
* :func:`linear_regression_data`: clean / easy-redundant / noisy-label rows.
* :class:`TfdsSource`: random access to tensorflow-datasets (no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import operator
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from jaxweights.core.sharding import batch_axes, batch_shard_count

if TYPE_CHECKING:
  import tokenizers

EOT = "<|endoftext|>"
_CACHE_FORMAT = 1
# Directory names never read by :func:`stdlib_corpus`.
_STDLIB_SKIP_DIRS = frozenset(
  {
    "__pycache__",
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idle_test",
    "idlelib",
    "pydoc_data",
  }
)


def _nonneg_int(value: Any, name: str) -> int:
  try:
    value = operator.index(value)
  except TypeError:
    raise ValueError(f"{name} must be an integer, got {value!r}.") from None
  if value < 0:
    raise ValueError(f"{name} must be >= 0, got {value}.")
  return value


def _pos_int(value: Any, name: str) -> int:
  value = _nonneg_int(value, name)
  if value == 0:
    raise ValueError(f"{name} must be > 0, got 0.")
  return value


def _check_fraction(value: float, name: str) -> float:
  if not 0.0 < float(value) < 1.0:
    raise ValueError(f"{name} must be in (0, 1), got {value!r}.")
  return float(value)


# ----------------------------------------------------------------------------
# Random-access batches.


@functools.lru_cache(maxsize=8)
def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  perm = np.random.default_rng((seed, epoch)).permutation(n)
  perm.flags.writeable = False
  return perm


def batch_indices(n: int, batch_size: int, *, seed: int, step: int) -> np.ndarray:
  """The dataset indices of batch ``step``, a pure function of ``(seed, step)``.

  Sampling is epoch-wise without replacement: the global position of row ``j``
  is ``p = step * batch_size + j``, its epoch is ``p // n`` and it takes entry
  ``p % n`` of that epoch's permutation
  ``np.random.default_rng((seed, epoch)).permutation(n)``. Every epoch thus
  visits every index exactly once; a batch may straddle epochs (and span
  several when ``batch_size > n``).

  Args:
    n: dataset size (> 0).
    batch_size: rows per batch (> 0).
    seed: non-negative data seed.
    step: non-negative step number.

  Returns:
    int64 ``[batch_size]`` indices in ``[0, n)``.

  Raises:
    ValueError: an argument is not an integer, or is out of range.

  Examples:
    >>> import numpy as np
    >>> import jaxweights as jw
    >>> idx = jw.data.batch_indices(10, 4, seed=0, step=0)
    >>> idx.shape, str(idx.dtype)
    ((4,), 'int64')
    >>> epoch = np.concatenate([jw.data.batch_indices(10, 5, seed=0, step=s) for s in (0, 1)])
    >>> sorted(epoch.tolist()) == list(range(10))  # one epoch visits every index once
    True
    >>> bool((jw.data.batch_indices(10, 4, seed=0, step=3) == jw.data.batch_indices(10, 4, seed=0, step=3)).all())
    True
  """
  n = _pos_int(n, "n")
  batch_size = _pos_int(batch_size, "batch_size")
  seed = _nonneg_int(seed, "seed")
  step = _nonneg_int(step, "step")
  pos = step * batch_size + np.arange(batch_size, dtype=np.int64)
  epochs, offsets = np.divmod(pos, n)
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = _epoch_permutation(n, seed, int(epoch))[offsets[sel]]
  return out


def process_rows(
  mesh: jax.sharding.Mesh, global_batch: int, axis_name: str | tuple[str, ...] | None = None
) -> np.ndarray:
  """The rows of a global batch that this process's devices hold.

  Args:
    mesh: the mesh the batch is split over.
    global_batch: the global batch size (a multiple of the batch axes' size).
    axis_name: the batch axes (default: ``("data", "fsdp")`` on a
      :func:`~jaxweights.make_mesh` mesh, the one axis of a data mesh).

  Returns:
    int64 row positions in ``[0, global_batch)``, ascending: the rows this
    process loads.
  """
  axis_name = batch_axes(mesh) if axis_name is None else axis_name
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis_name))
  rows: set[int] = set()
  for index in sharding.addressable_devices_indices_map((global_batch,)).values():
    rows.update(range(*index[0].indices(global_batch)))
  return np.asarray(sorted(rows), np.int64)


def process_local_batch(
  load_rows: Callable[[np.ndarray], Any],
  indices: np.ndarray,
  mesh: jax.sharding.Mesh,
  axis_name: str | tuple[str, ...] | None = None,
) -> Any:
  """A global batch of which each process loads only its own rows.

  Every process computes the same global ``indices`` (e.g. :func:`batch_indices`
  of ``(seed, step)``, so resuming and 1-vs-N-process equality hold), loads the
  rows its devices hold with ``load_rows`` (any random-access source: in-memory
  arrays, ``tfds.data_source``, a grain ``MapDataset``), and the pieces become one
  global array with ``jax.make_array_from_process_local_data``.

  Args:
    load_rows: ``load_rows(dataset_indices) -> pytree of [k, ...] arrays``.
    indices: int ``[global_batch]`` dataset indices of the whole batch.
    mesh: the mesh; the batch is split over its batch axes.
    axis_name: the batch axes (default as :func:`process_rows`).

  Returns:
    The pytree of global ``jax.Array`` s ``[global_batch, ...]``, split along
    the batch axes.

  Raises:
    ValueError: the batch size is not a multiple of the batch axes' size, or
      ``load_rows`` returns the wrong number of rows.
  """
  indices = np.asarray(indices)
  axis_name = batch_axes(mesh) if axis_name is None else axis_name
  n_shards = batch_shard_count(mesh, axis_name)
  if indices.ndim != 1 or len(indices) % n_shards:
    raise ValueError(f"a batch of {indices.shape} indices cannot be split over {n_shards} devices.")
  rows = process_rows(mesh, len(indices), axis_name)
  local = load_rows(indices[rows])
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis_name))

  def assemble(x):
    x = np.asarray(x)
    if x.shape[:1] != (len(rows),):
      raise ValueError(f"load_rows returned {x.shape[0]} rows for {len(rows)} indices.")
    return jax.make_array_from_process_local_data(sharding, x, (len(indices), *x.shape[1:]))

  return jax.tree.map(assemble, local)


def load_digits(*, seed: int = 0, test_fraction: float = 0.2) -> dict[str, np.ndarray]:
  """scikit-learn's bundled 8x8 digits (1797 images, no download), split by class.

  Args:
    seed: seed of the stratified train/test split.
    test_fraction: held-out fraction, in (0, 1).

  Returns:
    ``x_train`` float32 ``[N_train, 64]`` and ``x_test`` float32 ``[N_test, 64]``
    in ``[0, 1]`` (pixel / 16); ``y_train`` int32 ``[N_train]`` and ``y_test``
    int32 ``[N_test]`` in ``[0, 10)``. Class proportions agree across splits.

  Raises:
    ValueError: ``test_fraction`` is outside ``(0, 1)`` or ``seed`` is negative.
    ImportError: scikit-learn is not installed.
  """
  test_fraction = _check_fraction(test_fraction, "test_fraction")
  seed = _nonneg_int(seed, "seed")
  try:
    from sklearn import datasets, model_selection
  except ImportError as e:
    raise ImportError("load_digits needs scikit-learn: pip install 'jaxweights[experiments]'") from e
  digits = datasets.load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
    x, y, test_size=test_fraction, random_state=seed, stratify=y
  )
  return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def digits_batch(data: dict, *, seed: int, step: int, batch_size: int, split: str = "train") -> dict:
  """Batch ``step`` of a :func:`load_digits` split (see :func:`batch_indices`).

  Args:
    data: the dict :func:`load_digits` returns.
    seed: non-negative data seed.
    step: non-negative step number.
    batch_size: rows per batch (> 0).
    split: ``"train"`` or ``"test"``.

  Returns:
    ``{"x": float32 [batch_size, 64], "y": int32 [batch_size]}``.

  Raises:
    ValueError: ``split`` is not ``"train"`` or ``"test"``, or a count is
      invalid.
  """
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
  x, y = data[f"x_{split}"], data[f"y_{split}"]
  idx = batch_indices(len(y), batch_size, seed=seed, step=step)
  return {"x": np.asarray(x[idx], np.float32), "y": np.asarray(y[idx], np.int32)}


# ----------------------------------------------------------------------------
# Text corpora.


class _Tokenized:
  """What every corpus with a ``tokenizer`` attribute derives from it."""

  tokenizer: tokenizers.Tokenizer

  @property
  def vocab_size(self) -> int:
    """The tokenizer's vocabulary size, special token included."""
    return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

  @property
  def eot_id(self) -> int:
    """The id of the ``<|endoftext|>`` separator that closes every document or chunk."""
    return int(self.tokenizer.token_to_id(EOT))


@dataclasses.dataclass
class TextCorpus(_Tokenized):
  """Token streams with a held-out split by document and the tokenizer that made them.

  Attributes:
    tokenizer: a ``tokenizers.Tokenizer`` (byte-level BPE), trained on the
      training documents only.
    train_tokens: int32 ``[T_train]``; every training document's tokens
      followed by the ``<|endoftext|>`` token, in ``train_files`` order.
    test_tokens: int32 ``[T_test]``; the same for the held-out documents.
    train_files: the training documents' names (for :func:`stdlib_corpus`,
      paths relative to the stdlib root, ``/``-separated; for
      :func:`prose_corpus`, ``topics/<name>``).
    test_files: the held-out documents' names; disjoint from ``train_files``.
  """

  tokenizer: tokenizers.Tokenizer
  train_tokens: np.ndarray
  test_tokens: np.ndarray
  train_files: list[str]
  test_files: list[str]

  def save(self, directory: str | os.PathLike) -> None:
    """Writes ``tokenizer.json`` and ``split.json`` (file lists, sizes) to ``directory``.

    The token arrays are not written (a cache stores them beside these files).

    Args:
      directory: the output folder (created if missing).
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    self.tokenizer.save(os.path.join(directory, "tokenizer.json"))
    split = {
      "vocab_size": self.vocab_size,
      "eot_id": self.eot_id,
      "n_train_tokens": int(self.train_tokens.size),
      "n_test_tokens": int(self.test_tokens.size),
      "train_files": list(self.train_files),
      "test_files": list(self.test_files),
    }
    with open(os.path.join(directory, "split.json"), "w") as f:
      json.dump(split, f, indent=1)

  @classmethod
  def _load(cls, directory: str) -> TextCorpus:
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "split.json")) as f:
      split = json.load(f)
    with np.load(os.path.join(directory, "tokens.npz")) as z:
      train, test = z["train_tokens"], z["test_tokens"]
    if train.size != split["n_train_tokens"] or test.size != split["n_test_tokens"]:
      raise ValueError(f"corrupt corpus cache in {directory}.")
    return cls(tok, train, test, split["train_files"], split["test_files"])


def _default_cache_dir() -> str:
  return os.path.join(os.path.expanduser("~"), ".cache", "jaxweights")


def _stdlib_documents() -> list[tuple[str, int, Callable[[], str]]]:
  """``(relative path, size in bytes, reader)`` for every stdlib .py file, sorted."""
  root = sysconfig.get_paths()["stdlib"]
  docs = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS and not d.startswith("config-"))
    for name in filenames:
      path = os.path.join(dirpath, name)
      if not name.endswith(".py") or os.path.getsize(path) == 0:
        continue
      rel = os.path.relpath(path, root).replace(os.sep, "/")
      docs.append((rel, os.path.getsize(path), functools.partial(_read_text, path)))
  docs.sort(key=lambda d: d[0])
  return docs


def _read_text(path: str) -> str:
  with open(path, "rb") as f:
    return f.read().decode("utf-8", errors="replace")


def _prose_documents() -> list[tuple[str, int, Callable[[], str]]]:
  from pydoc_data import topics

  return [
    (f"topics/{k}", len(v.encode("utf-8")), functools.partial(lambda s: s, v))
    for k, v in sorted(topics.topics.items())
    if v
  ]


def _train_tokenizer(texts: Sequence[str], vocab_size: int) -> tokenizers.Tokenizer:
  """A byte-level BPE with ``<|endoftext|>`` as id 0, trained on ``texts``."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=[EOT],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
  return tok


def _encode_stream(tok: tokenizers.Tokenizer, texts: Sequence[str]) -> np.ndarray:
  eot = tok.token_to_id(EOT)
  parts = []
  for enc in tok.encode_batch(list(texts), add_special_tokens=False):
    parts.append(np.asarray(enc.ids, np.int32))
    parts.append(np.array([eot], np.int32))
  return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def _build_corpus(
  kind: str,
  list_docs: Callable[[], list],
  *,
  vocab_size: int,
  max_bytes: int | None,
  test_fraction: float,
  seed: int,
  cache_dir: str | None,
) -> TextCorpus:
  try:
    import tokenizers  # noqa: F401  (checks that it is installed)
  except ImportError as e:
    raise ImportError("text corpora need tokenizers: pip install 'jaxweights[experiments]'") from e
  vocab_size = _nonneg_int(vocab_size, "vocab_size")
  if vocab_size < 257:
    raise ValueError(f"vocab_size must be >= 257 (256 byte tokens + {EOT}), got {vocab_size}.")
  if max_bytes is not None:
    max_bytes = _pos_int(max_bytes, "max_bytes")
  test_fraction = _check_fraction(test_fraction, "test_fraction")
  seed = _nonneg_int(seed, "seed")

  cache_dir, target = _cache_target(
    cache_dir,
    kind,
    vocab_size=vocab_size,
    max_bytes=max_bytes,
    test_fraction=test_fraction,
    seed=seed,
  )
  if os.path.exists(os.path.join(target, "tokens.npz")):
    return TextCorpus._load(target)

  # Seeded shuffle of the sorted documents, then whole documents up to the cap.
  docs = list_docs()
  order = np.random.default_rng(seed).permutation(len(docs))
  chosen, total = [], 0
  for i in order:
    name, size, read = docs[i]
    if max_bytes is not None and total + size > max_bytes:
      continue
    chosen.append((name, read))
    total += size
  if len(chosen) < 2:
    raise ValueError(
      f"max_bytes={max_bytes} selects {len(chosen)} document(s); need at least 2 for a train/test split."
    )
  n_test = min(max(1, round(test_fraction * len(chosen))), len(chosen) - 1)
  test = sorted(chosen[:n_test])
  train = sorted(chosen[n_test:])
  train_texts = [read() for _, read in train]
  test_texts = [read() for _, read in test]

  tok = _train_tokenizer(train_texts, vocab_size)
  corpus = TextCorpus(
    tokenizer=tok,
    train_tokens=_encode_stream(tok, train_texts),
    test_tokens=_encode_stream(tok, test_texts),
    train_files=[name for name, _ in train],
    test_files=[name for name, _ in test],
  )

  _write_cache(
    cache_dir, target, corpus.save, {"train_tokens": corpus.train_tokens, "test_tokens": corpus.test_tokens}
  )
  return corpus


def stdlib_corpus(
  *,
  vocab_size: int = 1024,
  max_bytes: int | None = None,
  test_fraction: float = 0.1,
  seed: int = 0,
  cache_dir: str | None = None,
) -> TextCorpus:
  """Python source: this interpreter's standard library, held out by file.

  Reads every ``.py`` file under ``sysconfig.get_paths()["stdlib"]`` (sorted,
  skipping empty files, ``site-packages``, ``test``/``tests``/``idle_test``
  folders, ``idlelib`` and ``pydoc_data``), shuffles the sorted list with ``seed``, keeps
  whole files in that order while their total stays within ``max_bytes``, and
  holds out ``round(test_fraction * n_files)`` of them (at least one each way).
  A byte-level BPE of ``vocab_size`` tokens (``<|endoftext|>`` is id 0) is
  trained on the training files only. The result is cached in ``cache_dir``
  (default ``~/.cache/jaxweights``) under a hash of the arguments, the Python
  and tokenizers versions, so a second call only loads arrays.

  Args:
    vocab_size: BPE vocabulary size (>= 257).
    max_bytes: cap on the source bytes read; None reads the whole stdlib
      (~10 MB on CPython 3.11).
    test_fraction: held-out fraction of files, in (0, 1).
    seed: seed of the file shuffle (and thus of the split).
    cache_dir: cache folder.

  Returns:
    The corpus, a :class:`TextCorpus`.

  Raises:
    ValueError: ``vocab_size < 257``, ``max_bytes`` selects fewer than 2 files,
      ``test_fraction`` is outside ``(0, 1)`` or ``seed`` is negative.
    ImportError: tokenizers is not installed.
  """
  return _build_corpus(
    "stdlib",
    _stdlib_documents,
    vocab_size=vocab_size,
    max_bytes=max_bytes,
    test_fraction=test_fraction,
    seed=seed,
    cache_dir=cache_dir,
  )


def prose_corpus(
  *,
  vocab_size: int = 1024,
  max_bytes: int | None = None,
  test_fraction: float = 0.1,
  seed: int = 0,
  cache_dir: str | None = None,
) -> TextCorpus:
  """English prose: the stdlib's ``pydoc_data.topics`` (~0.5 MB), held out by topic.

  Same recipe and arguments as :func:`stdlib_corpus`; each of the ~90 help
  topics is one document, named ``topics/<name>``.

  Args:
    vocab_size: BPE vocabulary size (>= 257).
    max_bytes: cap on the text bytes read; None reads every topic.
    test_fraction: held-out fraction of topics, in (0, 1).
    seed: seed of the topic shuffle (and thus of the split).
    cache_dir: cache folder (default ``~/.cache/jaxweights``).

  Returns:
    The corpus, a :class:`TextCorpus`.

  Raises:
    ValueError: see :func:`stdlib_corpus`.
    ImportError: tokenizers is not installed.
  """
  return _build_corpus(
    "prose",
    _prose_documents,
    vocab_size=vocab_size,
    max_bytes=max_bytes,
    test_fraction=test_fraction,
    seed=seed,
    cache_dir=cache_dir,
  )


def _c_header_documents() -> list[tuple[str, int, Callable[[], str]]]:
  """``(relative path, size, reader)`` of this interpreter's C headers (``include/``), sorted."""
  root = sysconfig.get_paths()["include"]
  docs = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      path = os.path.join(dirpath, name)
      if name.endswith(".h") and os.path.getsize(path) > 0:
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        docs.append((f"include/{rel}", os.path.getsize(path), functools.partial(_read_text, path)))
  return sorted(docs, key=lambda d: d[0])


# Offline text domains of the interpreter itself: name -> document lister.
MIXTURE_DOMAINS: dict[str, Callable[[], list[tuple[str, int, Callable[[], str]]]]] = {
  "python": _stdlib_documents,  # the standard library's Python source
  "prose": _prose_documents,  # English: pydoc_data.topics, the language reference's help texts
  "c": _c_header_documents,  # C: CPython's public headers
}


@dataclasses.dataclass(frozen=True)
class MixtureCorpus(_Tokenized):
  """Token streams of several text domains with i.i.d. held-out rows per domain.

  Attributes:
    tokenizer: a byte-level BPE trained on the training chunks of every domain only.
    domains: the domain names, in order (a batch's ``domain`` ids index this).
    train: ``{domain: int32 [T]}``, the domain's training chunks, each followed by
      ``<|endoftext|>``.
    test: ``{domain: int32 [T']}``, its held-out chunks, likewise.
    chunks: ``{domain: {"train": n, "test": n}}``, chunk counts.
  """

  tokenizer: tokenizers.Tokenizer
  domains: tuple[str, ...]
  train: dict[str, np.ndarray]
  test: dict[str, np.ndarray]
  chunks: dict[str, dict[str, int]]

  def save(self, directory: str | os.PathLike) -> None:
    """Writes ``tokenizer.json`` and ``split.json`` (domains, chunk and token counts).

    Args:
      directory: the output folder (created if missing).
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    self.tokenizer.save(os.path.join(directory, "tokenizer.json"))
    split = {
      "domains": list(self.domains),
      "chunks": self.chunks,
      "train_tokens": {d: int(self.train[d].size) for d in self.domains},
      "test_tokens": {d: int(self.test[d].size) for d in self.domains},
    }
    with open(os.path.join(directory, "split.json"), "w") as f:
      json.dump(split, f, indent=1)


def _chunks(text: str, chunk_bytes: int) -> list[str]:
  """``text`` cut at line ends into pieces of at most ~``chunk_bytes`` characters."""
  out, current, size = [], [], 0
  for line in text.splitlines(keepends=True):
    if size and size + len(line) > chunk_bytes:
      out.append("".join(current))
      current, size = [], 0
    current.append(line)
    size += len(line)
  if current:
    out.append("".join(current))
  return out


def mixture_corpus(
  *,
  domains: Sequence[str] = ("python", "prose", "c"),
  vocab_size: int = 1024,
  max_bytes_per_domain: int | None = None,
  chunk_bytes: int = 2048,
  test_fraction: float = 0.1,
  seed: int = 0,
  cache_dir: str | None = None,
) -> MixtureCorpus:
  """A mixture of offline text domains with held-out rows drawn i.i.d. within each domain.

  For each domain (:data:`MIXTURE_DOMAINS`: the standard library's Python source,
  the English pydoc topics, CPython's C headers) the documents are shuffled with
  ``seed`` and taken whole while their total stays within
  ``max_bytes_per_domain``; each is cut at line ends into chunks of about
  ``chunk_bytes`` characters, and ``round(test_fraction * n_chunks)`` chunks drawn
  at random (seeded) are held out. Held-out rows are thus i.i.d. samples of the
  domain, not whole files, as a held-out split of a shuffled pretraining corpus
  is. A byte-level BPE of ``vocab_size`` tokens is trained on the training chunks
  only. Cached like :func:`stdlib_corpus`.

  Args:
    domains: names from :data:`MIXTURE_DOMAINS` (at least one, no repeats).
    vocab_size: BPE vocabulary size (>= 257).
    max_bytes_per_domain: cap on each domain's bytes; None reads everything.
    chunk_bytes: target chunk size in characters (>= 64).
    test_fraction: held-out fraction of each domain's chunks, in (0, 1).
    seed: seed of the document shuffle and of the held-out draw.
    cache_dir: cache folder (default ``~/.cache/jaxweights``).

  Returns:
    The corpus, a :class:`MixtureCorpus`.

  Raises:
    ValueError: an unknown or repeated domain, a domain with fewer than 2 chunks,
      or an invalid count or fraction.
    ImportError: tokenizers is not installed.
  """
  try:
    import tokenizers  # noqa: F401  (checks that it is installed)
  except ImportError as e:
    raise ImportError("text corpora need tokenizers: pip install 'jaxweights[experiments]'") from e
  domains = tuple(domains)
  unknown = [d for d in domains if d not in MIXTURE_DOMAINS]
  if not domains or unknown or len(set(domains)) != len(domains):
    raise ValueError(f"domains must be distinct names from {sorted(MIXTURE_DOMAINS)}, got {domains}.")
  vocab_size = _nonneg_int(vocab_size, "vocab_size")
  if vocab_size < 257:
    raise ValueError(f"vocab_size must be >= 257 (256 byte tokens + {EOT}), got {vocab_size}.")
  if max_bytes_per_domain is not None:
    max_bytes_per_domain = _pos_int(max_bytes_per_domain, "max_bytes_per_domain")
  chunk_bytes = _pos_int(chunk_bytes, "chunk_bytes")
  if chunk_bytes < 64:
    raise ValueError(f"chunk_bytes must be >= 64, got {chunk_bytes}.")
  test_fraction = _check_fraction(test_fraction, "test_fraction")
  seed = _nonneg_int(seed, "seed")
  cache_dir, target = _cache_target(
    cache_dir,
    "mixture",
    domains=domains,
    vocab_size=vocab_size,
    max_bytes_per_domain=max_bytes_per_domain,
    chunk_bytes=chunk_bytes,
    test_fraction=test_fraction,
    seed=seed,
  )
  if os.path.exists(os.path.join(target, "tokens.npz")):
    return _load_mixture(target)

  split_chunks: dict[str, tuple[list[str], list[str]]] = {}
  for i, domain in enumerate(domains):
    docs = MIXTURE_DOMAINS[domain]()
    rng = np.random.default_rng((seed, i))
    chunks, total = [], 0
    for j in rng.permutation(len(docs)):
      _, size, read = docs[j]
      if max_bytes_per_domain is not None and total + size > max_bytes_per_domain:
        continue
      chunks += _chunks(read(), chunk_bytes)
      total += size
    if len(chunks) < 2:
      raise ValueError(f"domain {domain!r} gives {len(chunks)} chunk(s); need at least 2 for a split.")
    n_test = min(max(1, round(test_fraction * len(chunks))), len(chunks) - 1)
    held = set(rng.permutation(len(chunks))[:n_test].tolist())
    split_chunks[domain] = (
      [c for k, c in enumerate(chunks) if k not in held],
      [c for k, c in enumerate(chunks) if k in held],
    )
  tok = _train_tokenizer([c for d in domains for c in split_chunks[d][0]], vocab_size)
  corpus = MixtureCorpus(
    tokenizer=tok,
    domains=domains,
    train={d: _encode_stream(tok, split_chunks[d][0]) for d in domains},
    test={d: _encode_stream(tok, split_chunks[d][1]) for d in domains},
    chunks={d: {"train": len(split_chunks[d][0]), "test": len(split_chunks[d][1])} for d in domains},
  )
  arrays = {f"{part}/{d}": getattr(corpus, part)[d] for part in ("train", "test") for d in domains}
  _write_cache(cache_dir, target, corpus.save, arrays)
  return corpus


def _load_mixture(directory: str) -> MixtureCorpus:
  import tokenizers

  tok = tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "split.json")) as f:
    split = json.load(f)
  domains = tuple(split["domains"])
  with np.load(os.path.join(directory, "tokens.npz")) as z:
    train = {d: z[f"train/{d}"] for d in domains}
    test = {d: z[f"test/{d}"] for d in domains}
  for d in domains:
    if train[d].size != split["train_tokens"][d] or test[d].size != split["test_tokens"][d]:
      raise ValueError(f"corrupt corpus cache in {directory}.")
  return MixtureCorpus(tok, domains, train, test, split["chunks"])


def _cache_target(cache_dir: str | None, kind: str, **args: Any) -> tuple[str, str]:
  """``(cache folder, this corpus's folder in it)``: named by a hash of ``kind``, the
  arguments, and the Python and tokenizers versions."""
  import tokenizers

  key = json.dumps(
    {
      "kind": kind,
      **args,
      "python": sys.version,
      "tokenizers": tokenizers.__version__,
      "format": _CACHE_FORMAT,
    },
    sort_keys=True,
  )
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  cache_dir = os.fspath(cache_dir) if cache_dir is not None else _default_cache_dir()
  return cache_dir, os.path.join(cache_dir, f"{kind}-{digest}")


def _write_cache(cache_dir: str, target: str, save: Callable[[str], None], arrays: dict) -> None:
  """Writes ``save(folder)`` and ``tokens.npz`` into a scratch folder renamed to ``target``.

  Readers never see a half-written cache, and a concurrent builder's identical
  result wins harmlessly.
  """
  os.makedirs(cache_dir, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}-", dir=cache_dir)
  try:
    save(scratch)
    np.savez(os.path.join(scratch, "tokens.npz"), **arrays)
    try:
      os.rename(scratch, target)
    except OSError:
      pass  # Another process got there first.
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def mixture_lm_batch(
  streams: Sequence[np.ndarray],
  *,
  seed: int,
  step: int,
  batch_size: int,
  seq_len: int,
  rows: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
  """Random windows of a uniform mixture of token streams, a pure function of ``(seed, step)``.

  Every row picks a stream uniformly at random, then a window start uniformly
  within it (``np.random.default_rng((seed, step))``; with replacement): a
  uniform domain mix, each row an i.i.d. draw.

  Args:
    streams: one int ``[T_d]`` stream per domain, each ``T_d >= seq_len + 1``.
    seed: non-negative data seed.
    step: non-negative step number.
    batch_size: rows of the global batch (> 0).
    seq_len: predicted positions per window (> 0).
    rows: the global row indices to cut (None: all); a process loading only
      its own rows gets exactly those rows of the global batch.

  Returns:
    ``{"tokens": int32 [R, seq_len + 1], "mask": bool [R, seq_len + 1] (all True),
    "domain": int32 [R]}`` with ``R = len(rows)`` (``batch_size`` by default).

  Raises:
    ValueError: no stream, a stream too short, or an invalid count.

  Examples:
    >>> import numpy as np
    >>> import jaxweights as jw
    >>> b = jw.data.mixture_lm_batch([np.arange(50), np.arange(100, 150)], seed=0, step=0,
    ...                              batch_size=4, seq_len=8)
    >>> b["tokens"].shape, b["domain"].tolist() == (b["tokens"][:, 0] >= 100).tolist()
    ((4, 9), True)
  """
  if not len(streams):
    raise ValueError("mixture_lm_batch needs at least one stream.")
  streams = [_check_window(s, seq_len)[0] for s in streams]
  seq_len = _pos_int(seq_len, "seq_len")
  batch_size = _pos_int(batch_size, "batch_size")
  rng = np.random.default_rng((_nonneg_int(seed, "seed"), _nonneg_int(step, "step")))
  domain = rng.integers(0, len(streams), size=batch_size)
  unit = rng.random(batch_size)
  sizes = np.array([s.size - seq_len for s in streams])
  starts = np.minimum((unit * sizes[domain]).astype(np.int64), sizes[domain] - 1)
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  offsets = np.arange(seq_len + 1)
  window = np.stack([streams[domain[r]][starts[r] + offsets] for r in rows]).astype(np.int32)
  return {"tokens": window, "mask": np.ones(window.shape, bool), "domain": domain[rows].astype(np.int32)}


def _check_window(tokens: np.ndarray, seq_len: int) -> tuple[np.ndarray, int]:
  tokens = np.asarray(tokens)
  if tokens.ndim != 1:
    raise ValueError(f"tokens must be a 1-D stream, got shape {tokens.shape}.")
  seq_len = _pos_int(seq_len, "seq_len")
  if tokens.size < seq_len + 1:
    raise ValueError(f"seq_len={seq_len} needs a stream of at least {seq_len + 1} tokens, got {tokens.size}.")
  return tokens, seq_len


def lm_batch(
  tokens: np.ndarray, *, seed: int, step: int, batch_size: int, seq_len: int
) -> dict[str, np.ndarray]:
  """Random windows of a token stream, a pure function of ``(seed, step)``.

  Start offsets are ``np.random.default_rng((seed, step)).integers(0, T - seq_len,
  batch_size)`` (with replacement), so every window lies inside the stream.

  Args:
    tokens: int ``[T]`` stream with ``T >= seq_len + 1``.
    seed: non-negative data seed.
    step: non-negative step number.
    batch_size: windows per batch (> 0).
    seq_len: predicted positions per window (> 0).

  Returns:
    ``{"tokens": int32 [batch_size, seq_len + 1], "mask": bool [batch_size,
    seq_len + 1]}``; inputs are ``tokens[:, :-1]``, targets ``tokens[:, 1:]``;
    ``mask`` is all True (it exists so padded eval batches share the code path).

  Raises:
    ValueError: ``tokens`` is not 1-D or is too short, or a count is invalid.

  Examples:
    >>> import numpy as np
    >>> import jaxweights as jw
    >>> batch = jw.data.lm_batch(np.arange(100), seed=0, step=0, batch_size=2, seq_len=8)
    >>> batch["tokens"].shape, bool(batch["mask"].all())
    ((2, 9), True)
    >>> bool((np.diff(batch["tokens"], axis=1) == 1).all())  # contiguous windows
    True
  """
  tokens, seq_len = _check_window(tokens, seq_len)
  batch_size = _pos_int(batch_size, "batch_size")
  seed = _nonneg_int(seed, "seed")
  step = _nonneg_int(step, "step")
  starts = np.random.default_rng((seed, step)).integers(0, tokens.size - seq_len, size=batch_size)
  window = tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)
  return {"tokens": window, "mask": np.ones(window.shape, bool)}


def lm_eval_batches(
  tokens: np.ndarray, *, batch_size: int, seq_len: int, max_batches: int | None = None
) -> Iterator[dict]:
  """Every window of a held-out stream once, in order, as fixed-shape batches.

  Window ``k`` is ``tokens[k * seq_len : k * seq_len + seq_len + 1]`` for
  ``k < (T - 1) // seq_len``: consecutive windows share one boundary token, so
  each token from position 1 on is a target exactly once (the last
  ``(T - 1) % seq_len`` tokens, fewer than one window, are dropped). The final
  batch is padded with all-zero rows whose mask is False.

  Args:
    tokens: int ``[T]`` stream with ``T >= seq_len + 1``.
    batch_size: windows per batch (> 0).
    seq_len: predicted positions per window (> 0).
    max_batches: stop after this many batches (None: all).

  Returns:
    An iterator of ``{"tokens": int32 [batch_size, seq_len + 1], "mask": bool
    [batch_size, seq_len + 1]}`` batches; a row's mask is all True (a real
    window) or all False.

  Raises:
    ValueError: ``tokens`` is not 1-D or is too short, or a count is invalid
      (checked at the call, before iteration).

  Examples:
    >>> import numpy as np
    >>> import jaxweights as jw
    >>> batches = list(jw.data.lm_eval_batches(np.arange(21), batch_size=3, seq_len=4))
    >>> len(batches)  # 5 windows of 4 targets in batches of 3
    2
    >>> mask = batches.pop()["mask"]
    >>> mask.shape, mask.all(axis=1).tolist()  # the last batch has one padding row
    ((3, 5), [True, True, False])
  """
  tokens, seq_len = _check_window(tokens, seq_len)
  batch_size = _pos_int(batch_size, "batch_size")
  if max_batches is not None:
    max_batches = _pos_int(max_batches, "max_batches")
  n_windows = (tokens.size - 1) // seq_len
  n_batches = math.ceil(n_windows / batch_size)
  if max_batches is not None:
    n_batches = min(n_batches, max_batches)
  offsets = np.arange(seq_len + 1)

  def batches():
    for b in range(n_batches):
      k = np.arange(b * batch_size, (b + 1) * batch_size)
      real = k < n_windows
      out = np.zeros((batch_size, seq_len + 1), np.int32)
      out[real] = tokens[k[real, None] * seq_len + offsets]
      mask = np.broadcast_to(real[:, None], out.shape).copy()
      yield {"tokens": out, "mask": mask}

  return batches()


# ----------------------------------------------------------------------------
# Synthetic regression.


def linear_regression_data(
  *,
  seed: int,
  n_train: int = 2000,
  n_test: int = 1000,
  dim: int = 20,
  easy_fraction: float = 0.4,
  noisy_fraction: float = 0.2,
  noise_std: float = 0.1,
  outlier_std: float = 3.0,
) -> dict[str, np.ndarray]:
  """Linear regression with three kinds of training rows (after Sow et al.).

  ``w_true ~ N(0, I / dim)``, so ``x @ w_true`` has unit variance for
  ``x ~ N(0, I)``. Training rows are shuffled and come in three kinds:

  * clean (0): ``x ~ N(0, I)``, ``y = x @ w_true + N(0, noise_std^2)``;
  * easy (1), ``round(easy_fraction * n_train)`` rows: near-copies (jitter 0.01)
    of 5 prototype rows, labelled like clean rows: learnt quickly, redundant;
  * noisy (2), ``round(noisy_fraction * n_train)`` rows: clean inputs whose
    targets get ``N(0, outlier_std^2)`` label noise instead.

  Test rows are clean and noise-free, so test MSE is ``||w - w_true||^2``
  (in expectation over x) for a linear model.

  The setting follows the linear-regression experiment of Sow et al. (ICLR
  2025, *Dynamic Loss-Based Sample Reweighting for Improved Large Language
  Model Pretraining*).

  Args:
    seed: non-negative seed of every draw.
    n_train: number of training rows (> 0).
    n_test: number of test rows (> 0).
    dim: input dimension (> 0).
    easy_fraction: fraction of easy (redundant) training rows, in ``[0, 1]``.
    noisy_fraction: fraction of noisy-label training rows, in ``[0, 1]``;
      ``easy_fraction + noisy_fraction <= 1``.
    noise_std: target noise of clean and easy rows (>= 0).
    outlier_std: target noise of noisy rows (>= 0).

  Returns:
    ``x_train`` float32 ``[n_train, dim]``, ``y_train`` float32 ``[n_train]``,
    ``x_test`` float32 ``[n_test, dim]``, ``y_test`` float32 ``[n_test]``,
    ``w_true`` float32 ``[dim]`` and ``kind_train`` int8 ``[n_train]``.

  Raises:
    ValueError: a count is not a positive integer, a fraction is outside
      ``[0, 1]`` (or the two sum above 1), or a standard deviation is negative.

  Examples:
    >>> import jaxweights as jw
    >>> d = jw.data.linear_regression_data(seed=0, n_train=10, n_test=4, dim=3)
    >>> d["x_train"].shape, d["y_test"].shape, sorted(d["kind_train"].tolist())
    ((10, 3), (4,), [0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
  """
  seed = _nonneg_int(seed, "seed")
  n_train = _pos_int(n_train, "n_train")
  n_test = _pos_int(n_test, "n_test")
  dim = _pos_int(dim, "dim")
  for name, v in (("easy_fraction", easy_fraction), ("noisy_fraction", noisy_fraction)):
    if not 0.0 <= float(v) <= 1.0:
      raise ValueError(f"{name} must be in [0, 1], got {v!r}.")
  if easy_fraction + noisy_fraction > 1.0:
    raise ValueError(f"easy_fraction + noisy_fraction must be <= 1, got {easy_fraction} + {noisy_fraction}.")
  for name, v in (("noise_std", noise_std), ("outlier_std", outlier_std)):
    if not float(v) >= 0.0:
      raise ValueError(f"{name} must be >= 0, got {v!r}.")

  rng = np.random.default_rng(seed)
  w_true = rng.normal(size=dim) / np.sqrt(dim)
  n_easy = round(easy_fraction * n_train)
  n_noisy = round(noisy_fraction * n_train)
  n_clean = n_train - n_easy - n_noisy
  kind = np.repeat(np.array([0, 1, 2], np.int8), [n_clean, n_easy, n_noisy])

  x = rng.normal(size=(n_train, dim))
  prototypes = rng.normal(size=(5, dim))
  easy = kind == 1
  x[easy] = prototypes[rng.integers(0, 5, size=n_easy)] + 0.01 * rng.normal(size=(n_easy, dim))
  noise_scale = np.where(kind == 2, outlier_std, noise_std)
  y = x @ w_true + noise_scale * rng.normal(size=n_train)
  perm = rng.permutation(n_train)

  x_test = rng.normal(size=(n_test, dim))
  return {
    "x_train": x[perm].astype(np.float32),
    "y_train": y[perm].astype(np.float32),
    "x_test": x_test.astype(np.float32),
    "y_test": (x_test @ w_true).astype(np.float32),
    "w_true": w_true.astype(np.float32),
    "kind_train": kind[perm],
  }


# ----------------------------------------------------------------------------
# tensorflow-datasets.


def _stack(examples: list) -> Any:
  first = examples[0]
  if isinstance(first, dict):
    return {k: _stack([ex[k] for ex in examples]) for k in first}
  return np.stack([np.asarray(ex) for ex in examples])


class TfdsSource:
  """Random access to a prepared tensorflow-datasets split, no TensorFlow needed.

  Wraps ``tfds.data_source(name, split=split, data_dir=data_dir)`` (ArrayRecord
  files, decoded with numpy). The dataset must already be prepared in
  ``data_dir`` in the ``array_record`` format; preparing most datasets needs
  TensorFlow (and a network), reading them does not.

  Args:
    name: tfds name, e.g. ``"mnist"`` or ``"mnist:3.0.1"``.
    split: e.g. ``"train"`` or ``"test[:10%]"``.
    data_dir: tfds data folder (default: tfds's own default).
    keys: the features to return (default: all).

  Raises:
    ImportError: tensorflow-datasets is not installed.
    ValueError: ``keys`` is a single string instead of a sequence of names.
  """

  def __init__(
    self, name: str, *, split: str, data_dir: str | None = None, keys: Sequence[str] | None = None
  ) -> None:
    try:
      import tensorflow_datasets as tfds
    except ImportError as e:
      raise ImportError("TfdsSource needs tensorflow-datasets: pip install 'jaxweights[tfds]'") from e
    if isinstance(keys, str):
      raise ValueError(f"keys must be a sequence of feature names, got {keys!r}.")
    self.name = name
    self.split = split
    self.keys = None if keys is None else tuple(keys)
    self._source = tfds.data_source(name, split=split, data_dir=data_dir)

  def __len__(self) -> int:
    return len(self._source)

  def _get(self, idx: np.ndarray) -> list:
    keys = [int(i) for i in idx]
    try:
      return list(self._source.__getitems__(keys))
    except TypeError:
      # tfds.testing.mock_data sets __getitems__ as an unbound partial on a
      # MagicMock (not a magic method mock knows), so batched reads fail there.
      return [self._source[i] for i in keys]

  def batch(self, *, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """Batch ``step`` (rows from :func:`batch_indices`), features stacked.

    Args:
      seed: non-negative data seed.
      step: non-negative step number.
      batch_size: rows per batch (> 0).

    Returns:
      ``{feature: [batch_size, *feature_shape]}`` in the dataset's dtypes
      (nested feature dicts stay nested).

    Raises:
      ValueError: a requested feature is not in the dataset.
    """
    idx = batch_indices(len(self), batch_size, seed=seed, step=step)
    examples = self._get(idx)
    if self.keys is not None:
      missing = [k for k in self.keys if k not in examples[0]]
      if missing:
        raise ValueError(f"features {missing} are not in {self.name}; it has {sorted(examples[0])}.")
      examples = [{k: ex[k] for k in self.keys} for ex in examples]
    return _stack(examples)
