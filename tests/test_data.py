"""Tests for jaxweights.substrates.data: purity in (seed, step), splits, caching, padding."""

from __future__ import annotations

import json
import os
import sysconfig

import numpy as np
import pytest

from jaxweights import data

SMALL = 200_000  # bytes of stdlib source for the corpus tests


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("corpus_cache"))


@pytest.fixture(scope="module")
def corpus(cache_dir):
  return data.stdlib_corpus(vocab_size=512, max_bytes=SMALL, seed=3, cache_dir=cache_dir)


# ---------------------------------------------------------------- batch_indices


def test_batch_indices_pure_and_typed():
  a = data.batch_indices(100, 16, seed=1, step=7)
  b = data.batch_indices(100, 16, seed=1, step=7)
  np.testing.assert_array_equal(a, b)
  assert a.dtype == np.int64 and a.shape == (16,)
  assert not np.array_equal(a, data.batch_indices(100, 16, seed=2, step=7))
  assert not np.array_equal(a, data.batch_indices(100, 16, seed=1, step=8))


@pytest.mark.parametrize("n,batch_size", [(10, 3), (12, 4), (5, 13), (1, 4)])
def test_batch_indices_epochs_visit_every_index_once(n, batch_size):
  n_epochs = 4
  steps = -(-n_epochs * n // batch_size)
  stream = np.concatenate([data.batch_indices(n, batch_size, seed=0, step=s) for s in range(steps)])
  for e in range(n_epochs):
    epoch = stream[e * n : (e + 1) * n]
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
    np.testing.assert_array_equal(epoch, np.random.default_rng((0, e)).permutation(n))


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(n=0, batch_size=2, seed=0, step=0),
    dict(n=5, batch_size=0, seed=0, step=0),
    dict(n=5, batch_size=-1, seed=0, step=0),
    dict(n=5, batch_size=2, seed=-1, step=0),
    dict(n=5, batch_size=2, seed=0, step=-3),
    dict(n=5, batch_size=2.5, seed=0, step=0),
  ],
)
def test_batch_indices_bad_inputs(kwargs):
  n, bs = kwargs.pop("n"), kwargs.pop("batch_size")
  with pytest.raises(ValueError):
    data.batch_indices(n, bs, **kwargs)


# ---------------------------------------------------------------- digits


def test_digits_shapes_ranges_and_stratification():
  d = data.load_digits(seed=0, test_fraction=0.2)
  n_train, n_test = len(d["y_train"]), len(d["y_test"])
  assert n_train + n_test == 1797 and abs(n_test - 0.2 * 1797) <= 1
  for s in ("train", "test"):
    x, y = d[f"x_{s}"], d[f"y_{s}"]
    assert x.dtype == np.float32 and x.shape == (len(y), 64)
    assert y.dtype == np.int32 and set(np.unique(y)) == set(range(10))
    assert x.min() >= 0.0 and x.max() <= 1.0
  p_train = np.bincount(d["y_train"], minlength=10) / n_train
  p_test = np.bincount(d["y_test"], minlength=10) / n_test
  np.testing.assert_allclose(p_train, p_test, atol=0.01)
  e = data.load_digits(seed=0)
  np.testing.assert_array_equal(d["x_train"], e["x_train"])
  assert not np.array_equal(d["y_train"], data.load_digits(seed=1)["y_train"])

  batch = data.digits_batch(d, seed=0, step=3, batch_size=32)
  assert batch["x"].shape == (32, 64) and batch["x"].dtype == np.float32
  assert batch["y"].shape == (32,) and batch["y"].dtype == np.int32
  idx = data.batch_indices(n_train, 32, seed=0, step=3)
  np.testing.assert_array_equal(batch["y"], d["y_train"][idx])
  test_batch = data.digits_batch(d, seed=0, step=0, batch_size=8, split="test")
  assert test_batch["x"].shape == (8, 64)
  with pytest.raises(ValueError):
    data.digits_batch(d, seed=0, step=0, batch_size=8, split="val")
  for bad in (0.0, 1.0, -0.1, 1.5):
    with pytest.raises(ValueError):
      data.load_digits(test_fraction=bad)


# ---------------------------------------------------------------- text corpora


def test_corpus_split_by_file(corpus):
  assert corpus.train_files and corpus.test_files
  assert not set(corpus.train_files) & set(corpus.test_files)
  assert corpus.train_files == sorted(corpus.train_files)
  root = sysconfig.get_paths()["stdlib"]
  names = corpus.train_files + corpus.test_files
  total = sum(os.path.getsize(os.path.join(root, f)) for f in names)
  assert total <= SMALL
  for f in names:
    parts = f.split("/")
    assert f.endswith(".py")
    assert not {"test", "tests", "site-packages", "idlelib"} & set(parts[:-1])
  assert corpus.vocab_size == 512
  for toks in (corpus.train_tokens, corpus.test_tokens):
    assert toks.dtype == np.int32 and toks.ndim == 1
    assert toks.min() >= 0 and toks.max() < corpus.vocab_size
  # One end-of-text token after each document.
  assert np.sum(corpus.train_tokens == corpus.eot_id) == len(corpus.train_files)
  assert np.sum(corpus.test_tokens == corpus.eot_id) == len(corpus.test_files)
  assert corpus.train_tokens[-1] == corpus.eot_id


def test_tokenizer_round_trip_on_held_out_code(corpus):
  root = sysconfig.get_paths()["stdlib"]
  with open(os.path.join(root, corpus.test_files[0]), encoding="utf-8") as f:
    src = f.read()
  tok = corpus.tokenizer
  ids = tok.encode(src).ids
  assert tok.decode(ids) == src
  assert len(ids) < len(src) / 1.5  # BPE actually merges
  weird = "déjà vu ✓ \t\n  x = '\\u00e9'  # 日本語\r\n"
  assert tok.decode(tok.encode(weird).ids) == weird
  # The stream of the first held-out file is exactly its encoding.
  np.testing.assert_array_equal(corpus.test_tokens[: len(ids)], ids)


def test_corpus_cache_hit_identical_and_no_retraining(corpus, cache_dir, monkeypatch):
  def boom(*args, **kwargs):
    raise AssertionError("the tokenizer was retrained on a cache hit")

  monkeypatch.setattr(data, "_train_tokenizer", boom)
  again = data.stdlib_corpus(vocab_size=512, max_bytes=SMALL, seed=3, cache_dir=cache_dir)
  np.testing.assert_array_equal(again.train_tokens, corpus.train_tokens)
  np.testing.assert_array_equal(again.test_tokens, corpus.test_tokens)
  assert again.train_files == corpus.train_files
  assert again.test_files == corpus.test_files
  assert again.tokenizer.to_str() == corpus.tokenizer.to_str()


def test_corpus_deterministic_and_seeded(corpus, tmp_path):
  fresh = data.stdlib_corpus(vocab_size=512, max_bytes=SMALL, seed=3, cache_dir=str(tmp_path / "a"))
  np.testing.assert_array_equal(fresh.train_tokens, corpus.train_tokens)
  assert fresh.tokenizer.to_str() == corpus.tokenizer.to_str()
  other = data.stdlib_corpus(vocab_size=512, max_bytes=SMALL, seed=4, cache_dir=str(tmp_path / "b"))
  assert other.train_files + other.test_files != corpus.train_files + corpus.test_files


def test_corpus_save(corpus, tmp_path):
  corpus.save(tmp_path / "run")
  with open(tmp_path / "run" / "split.json") as f:
    split = json.load(f)
  assert split["train_files"] == corpus.train_files
  assert split["test_files"] == corpus.test_files
  assert split["n_train_tokens"] == corpus.train_tokens.size
  assert split["vocab_size"] == corpus.vocab_size
  import tokenizers

  tok = tokenizers.Tokenizer.from_file(str(tmp_path / "run" / "tokenizer.json"))
  assert tok.encode("def f(x):\n  return x").ids == corpus.tokenizer.encode("def f(x):\n  return x").ids


def test_prose_corpus(tmp_path):
  c = data.prose_corpus(vocab_size=300, max_bytes=60_000, cache_dir=str(tmp_path))
  assert c.train_files and c.test_files
  assert not set(c.train_files) & set(c.test_files)
  assert all(f.startswith("topics/") for f in c.train_files)
  assert c.vocab_size == 300


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(test_fraction=0.0),
    dict(test_fraction=1.0),
    dict(test_fraction=-0.5),
    dict(vocab_size=100),
    dict(max_bytes=0),
    dict(max_bytes=30),
    dict(seed=-1),
  ],
)
def test_corpus_bad_inputs(kwargs, tmp_path):
  with pytest.raises(ValueError):
    data.stdlib_corpus(cache_dir=str(tmp_path), **kwargs)


# ---------------------------------------------------------------- LM batches


def test_mixture_corpus_iid_held_out_rows_per_domain(tmp_path, monkeypatch):
  kwargs = dict(vocab_size=300, max_bytes_per_domain=30_000, chunk_bytes=512, test_fraction=0.2)
  corpus = data.mixture_corpus(cache_dir=str(tmp_path), **kwargs)
  assert corpus.domains == ("python", "prose", "c")
  tok = corpus.tokenizer
  for d in corpus.domains:
    n = corpus.chunks[d]
    assert n["test"] == round(0.2 * (n["train"] + n["test"]))
    # Each stream is its chunks, each closed by <|endoftext|>.
    assert int((corpus.train[d] == corpus.eot_id).sum()) == n["train"]
    assert int((corpus.test[d] == corpus.eot_id).sum()) == n["test"]
  # Held-out rows are chunks, not files: a held-out chunk's file also has training chunks.
  held = tok.decode(corpus.test["python"][: int(np.argmax(corpus.test["python"] == corpus.eot_id))].tolist())
  train_text = tok.decode(corpus.train["python"].tolist())
  assert held and held not in train_text
  # Cached: the second call trains no tokenizer.
  monkeypatch.setattr(data, "_train_tokenizer", lambda *a: pytest.fail("retrained"))
  again = data.mixture_corpus(cache_dir=str(tmp_path), **kwargs)
  for d in corpus.domains:
    np.testing.assert_array_equal(again.train[d], corpus.train[d])
    np.testing.assert_array_equal(again.test[d], corpus.test[d])
  corpus.save(tmp_path / "saved")
  split = json.loads((tmp_path / "saved" / "split.json").read_text())
  assert split["train_tokens"]["c"] == corpus.train["c"].size


@pytest.mark.parametrize(
  "kwargs",
  [dict(domains=("python", "python")), dict(domains=("latin",)), dict(domains=()), dict(chunk_bytes=10)],
)
def test_mixture_corpus_bad_inputs(kwargs, tmp_path):
  with pytest.raises(ValueError):
    data.mixture_corpus(cache_dir=str(tmp_path), **kwargs)


def test_mixture_lm_batch_uniform_mix_and_process_rows():
  streams = [np.arange(0, 500), np.arange(1000, 1300), np.arange(2000, 2100)]
  a = data.mixture_lm_batch(streams, seed=3, step=7, batch_size=3000, seq_len=8)
  assert a["tokens"].shape == (3000, 9) and a["tokens"].dtype == np.int32
  # Rows come from the stream their domain id names, as contiguous windows inside it.
  np.testing.assert_array_equal(a["tokens"][:, 0] // 1000, a["domain"])
  assert (np.diff(a["tokens"], axis=1) == 1).all()
  for d, s in enumerate(streams):
    rows = a["tokens"][a["domain"] == d]
    assert rows.min() >= s[0] and rows.max() <= s[-1]
  # A uniform mix, not proportional to the streams' sizes.
  shares = np.bincount(a["domain"], minlength=3) / 3000
  np.testing.assert_allclose(shares, 1 / 3, atol=0.04)
  # Pure in (seed, step); a subset of rows is exactly those rows of the global batch.
  b = data.mixture_lm_batch(streams, seed=3, step=7, batch_size=3000, seq_len=8, rows=np.array([5, 17]))
  np.testing.assert_array_equal(b["tokens"], a["tokens"][[5, 17]])
  np.testing.assert_array_equal(b["domain"], a["domain"][[5, 17]])
  c = data.mixture_lm_batch(streams, seed=3, step=8, batch_size=3000, seq_len=8)
  assert not np.array_equal(c["tokens"], a["tokens"])
  with pytest.raises(ValueError):
    data.mixture_lm_batch([np.arange(5)], seed=0, step=0, batch_size=2, seq_len=8)
  with pytest.raises(ValueError):
    data.mixture_lm_batch([], seed=0, step=0, batch_size=2, seq_len=8)


def test_lm_batch_pure_and_shapes():
  tokens = np.arange(1000, dtype=np.int32)
  a = data.lm_batch(tokens, seed=0, step=5, batch_size=8, seq_len=16)
  b = data.lm_batch(tokens, seed=0, step=5, batch_size=8, seq_len=16)
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert a["tokens"].shape == (8, 17) and a["tokens"].dtype == np.int32
  assert a["mask"].shape == (8, 17) and a["mask"].dtype == bool and a["mask"].all()
  # Contiguous windows of the stream.
  np.testing.assert_array_equal(np.diff(a["tokens"], axis=1), 1)
  c = data.lm_batch(tokens, seed=0, step=6, batch_size=8, seq_len=16)
  assert not np.array_equal(a["tokens"], c["tokens"])
  # A stream of exactly seq_len + 1 tokens has one window.
  one = data.lm_batch(tokens[:17], seed=1, step=0, batch_size=3, seq_len=16)
  np.testing.assert_array_equal(one["tokens"], np.tile(tokens[:17], (3, 1)))


def test_lm_batch_on_corpus(corpus):
  b = data.lm_batch(corpus.train_tokens, seed=0, step=0, batch_size=4, seq_len=64)
  assert b["tokens"].shape == (4, 65)
  assert b["tokens"].max() < corpus.vocab_size


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(seq_len=100),
    dict(seq_len=0),
    dict(batch_size=0),
    dict(seed=-1),
    dict(step=-1),
  ],
)
def test_lm_batch_bad_inputs(kwargs):
  args = dict(seed=0, step=0, batch_size=2, seq_len=8) | kwargs
  with pytest.raises(ValueError):
    data.lm_batch(np.arange(100), **args)
  with pytest.raises(ValueError):
    data.lm_batch(np.zeros((10, 10), np.int32), seed=0, step=0, batch_size=2, seq_len=4)


@pytest.mark.parametrize("n,seq_len,batch_size", [(101, 10, 4), (100, 10, 3), (11, 10, 5), (57, 7, 8)])
def test_lm_eval_batches_cover_every_window_once(n, seq_len, batch_size):
  tokens = np.arange(n, dtype=np.int32) + 1  # no real token is 0
  batches = list(data.lm_eval_batches(tokens, batch_size=batch_size, seq_len=seq_len))
  n_windows = (n - 1) // seq_len
  assert len(batches) == -(-n_windows // batch_size)
  rows = []
  for b in batches:
    assert b["tokens"].shape == (batch_size, seq_len + 1)
    assert b["mask"].shape == (batch_size, seq_len + 1) and b["mask"].dtype == bool
    row_mask = b["mask"].all(axis=1)
    np.testing.assert_array_equal(row_mask, b["mask"].any(axis=1))
    assert (b["tokens"][~row_mask] == 0).all()
    rows.extend(b["tokens"][row_mask])
  assert len(rows) == n_windows
  targets = np.concatenate([r[1:] for r in rows])
  # Every target position 1 .. n_windows * seq_len exactly once, in order.
  np.testing.assert_array_equal(targets, tokens[1 : n_windows * seq_len + 1])
  for k, r in enumerate(rows):
    np.testing.assert_array_equal(r, tokens[k * seq_len : k * seq_len + seq_len + 1])
  # Only the final batch is padded.
  for b in batches[:-1]:
    assert b["mask"].all()


def test_lm_eval_batches_max_batches_and_bad_inputs():
  tokens = np.arange(1000)
  assert len(list(data.lm_eval_batches(tokens, batch_size=2, seq_len=10, max_batches=3))) == 3
  with pytest.raises(ValueError):
    data.lm_eval_batches(tokens[:5], batch_size=2, seq_len=10)
  with pytest.raises(ValueError):
    data.lm_eval_batches(tokens, batch_size=0, seq_len=10)
  with pytest.raises(ValueError):
    data.lm_eval_batches(tokens, batch_size=2, seq_len=10, max_batches=0)


# ---------------------------------------------------------------- linear regression


def test_linear_regression_data():
  d = data.linear_regression_data(seed=0, n_train=1000, n_test=300, dim=8)
  assert d["x_train"].shape == (1000, 8) and d["x_train"].dtype == np.float32
  assert d["y_train"].shape == (1000,) and d["y_train"].dtype == np.float32
  assert d["x_test"].shape == (300, 8) and d["y_test"].shape == (300,)
  assert d["w_true"].shape == (8,) and d["w_true"].dtype == np.float32
  kind = d["kind_train"]
  assert kind.dtype == np.int8 and kind.shape == (1000,)
  np.testing.assert_array_equal(np.bincount(kind, minlength=3), [400, 400, 200])
  assert not (np.diff(kind) >= 0).all()  # kinds are interleaved
  resid = d["y_train"] - d["x_train"] @ d["w_true"]
  assert np.std(resid[kind == 0]) < 0.15 and np.std(resid[kind == 1]) < 0.15
  assert np.std(resid[kind == 2]) > 2.0
  np.testing.assert_allclose(d["y_test"], d["x_test"] @ d["w_true"], rtol=1e-5, atol=1e-5)
  # Easy rows are near-copies of a few prototypes.
  easy = d["x_train"][kind == 1]
  close = np.linalg.norm(easy[:, None] - easy[None], axis=-1) < 0.2
  assert len(np.unique(close, axis=0)) <= 5
  again = data.linear_regression_data(seed=0, n_train=1000, n_test=300, dim=8)
  for k in d:
    np.testing.assert_array_equal(d[k], again[k])


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(n_train=0),
    dict(dim=0),
    dict(easy_fraction=-0.1),
    dict(noisy_fraction=1.2),
    dict(easy_fraction=0.7, noisy_fraction=0.5),
    dict(noise_std=-1.0),
    dict(seed=-2),
  ],
)
def test_linear_regression_bad_inputs(kwargs):
  with pytest.raises(ValueError):
    data.linear_regression_data(**({"seed": 0} | kwargs))


# ---------------------------------------------------------------- tfds


def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=20):
    src = data.TfdsSource("mnist", split="train")
    assert len(src) == 20
    b = src.batch(seed=0, step=1, batch_size=8)
    assert b["image"].shape == (8, 28, 28, 1) and b["image"].dtype == np.uint8
    assert b["label"].shape == (8,)
    again = src.batch(seed=0, step=1, batch_size=8)
    np.testing.assert_array_equal(b["image"], again["image"])
    only = data.TfdsSource("mnist", split="train", keys=["label"])
    lb = only.batch(seed=0, step=1, batch_size=8)
    assert set(lb) == {"label"}
    np.testing.assert_array_equal(lb["label"], b["label"])
    with pytest.raises(ValueError):
      data.TfdsSource("mnist", split="train", keys=["nope"]).batch(seed=0, step=0, batch_size=2)


def test_tfds_source_import_error(monkeypatch):
  import sys

  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match=r"jaxweights\[tfds\]"):
    data.TfdsSource("mnist", split="train")


def test_tfds_source_real_array_record_without_tensorflow(tmp_path):
  """Prepares a tiny array_record dataset and reads it back, no TensorFlow needed."""
  import sys

  tfds = pytest.importorskip("tensorflow_datasets")

  class JaxweightsTestTiny(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            "x": tfds.features.Tensor(shape=(3,), dtype=np.float32),
            "label": tfds.features.ClassLabel(num_classes=4),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(10)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"x": np.full(3, i, np.float32), "label": i % 4}

  JaxweightsTestTiny(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  src = data.TfdsSource("jaxweights_test_tiny", split="train", data_dir=str(tmp_path))
  assert len(src) == 10
  b = src.batch(seed=0, step=0, batch_size=10)  # one epoch: every record once
  assert b["x"].shape == (10, 3) and b["x"].dtype == np.float32
  assert b["label"].shape == (10,)
  np.testing.assert_array_equal(np.sort(b["x"][:, 0]), np.arange(10))
  np.testing.assert_array_equal(b["label"], b["x"][:, 0].astype(int) % 4)
  assert "tensorflow" not in sys.modules
