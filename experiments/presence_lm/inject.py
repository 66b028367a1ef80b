"""Noisy and duplicated rows injected into LM training batches, a pure function of (seed, step).

Every training batch starts as :func:`jaxweights.substrates.data.mixture_lm_batch`
windows of the clean training streams (the domain mixture). Then, with a generator
seeded by ``(seed, step, 1)``, a
random set of rows is replaced:

* ``shuffled`` (kind 1): the window's own tokens in a random order (same unigram
  statistics, no sequential structure);
* ``random`` (kind 2): uniform token ids over the whole vocabulary;
* ``duplicate`` (kind 3): an exact copy of one of ``duplicate_pool`` fixed
  windows of the training streams (drawn once per seed), so each pool window is
  repeated many times over training.

The other rows are ``clean`` (kind 0). The batch carries ``kind`` (int32
``[batch]``) so what each kind receives can be measured from the weights the
step used; the loss function ignores it.
"""

from __future__ import annotations

import numpy as np

from jaxweights import data as jw_data

KINDS = ("clean", "shuffled", "random", "duplicate")
CLEAN, SHUFFLED, RANDOM, DUPLICATE = range(4)
_INJECT_STREAM = 1
_POOL_STEP = 2**62


def kind_counts(batch_size: int, noise_fraction: float, duplicate_fraction: float) -> dict[str, int]:
  """Rows per batch of each kind; every injected kind gets at least one row."""
  noise = int(round(noise_fraction * batch_size))
  dup = int(round(duplicate_fraction * batch_size))
  counts = {"shuffled": noise // 2, "random": noise - noise // 2, "duplicate": dup}
  bad = [k for k, v in counts.items() if v < 1]
  if bad:
    raise ValueError(
      f"batch_size={batch_size} with noise_fraction={noise_fraction} and "
      f"duplicate_fraction={duplicate_fraction} gives no {bad} rows; each injected "
      f"kind needs at least one row per batch (counts {counts})."
    )
  counts["clean"] = batch_size - sum(counts.values())
  if counts["clean"] < 1:
    raise ValueError(f"no clean rows left in a batch of {batch_size}: {counts}.")
  return {k: counts[k] for k in KINDS}


class Injector:
  """Training batches with injected rows, and the fixed duplicate pool, for one seed."""

  def __init__(
    self,
    streams,
    *,
    seed: int,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    noise_fraction: float,
    duplicate_fraction: float,
    duplicate_pool: int,
  ):
    self.streams = [np.asarray(t) for t in streams]
    self.seed, self.batch_size, self.seq_len = seed, batch_size, seq_len
    self.vocab_size = vocab_size
    self.counts = kind_counts(batch_size, noise_fraction, duplicate_fraction)
    if duplicate_pool < 1:
      raise ValueError(f"duplicate_pool must be >= 1, got {duplicate_pool}.")
    # The pool is the batch of a "step" no run reaches: a fixed draw of the same
    # mixture, independent of every training batch.
    self.pool = jw_data.mixture_lm_batch(
      self.streams, seed=seed, step=_POOL_STEP, batch_size=duplicate_pool, seq_len=seq_len
    )["tokens"]

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """``{"tokens", "mask", "kind"}`` of training step ``step``."""
    batch = jw_data.mixture_lm_batch(
      self.streams, seed=self.seed, step=step, batch_size=self.batch_size, seq_len=self.seq_len
    )
    tokens = batch["tokens"].copy()
    rng = np.random.default_rng((self.seed, step, _INJECT_STREAM))
    rows = rng.permutation(self.batch_size)
    kind = np.zeros(self.batch_size, np.int32)
    n_s, n_r, n_d = (self.counts[k] for k in ("shuffled", "random", "duplicate"))
    shuffled = rows[:n_s]
    random_rows = rows[n_s : n_s + n_r]
    dup = rows[n_s + n_r : n_s + n_r + n_d]
    for i in shuffled:
      tokens[i] = rng.permutation(tokens[i])
    tokens[random_rows] = rng.integers(0, self.vocab_size, size=(n_r, tokens.shape[1]), dtype=np.int32)
    tokens[dup] = self.pool[rng.integers(0, len(self.pool), size=n_d)]
    kind[shuffled], kind[random_rows], kind[dup] = SHUFFLED, RANDOM, DUPLICATE
    return {"tokens": tokens, "mask": batch["mask"], "kind": kind}

  def scoring_pool(self, num_steps: int, per_kind: dict[str, int]) -> dict[str, np.ndarray]:
    """A fixed set of rows the run trained on, for offline scoring.

    ``per_kind[k]`` rows of kind ``k`` (clean, shuffled, random) taken from
    evenly spaced training batches (the same number from each batch, as far as
    possible), plus every window of the duplicate pool once (kind 3).
    """
    take = {k: int(per_kind.get(k, 0)) for k in ("clean", "shuffled", "random")}
    need = (
      max(int(np.ceil(n / self.counts[k])) for k, n in take.items() if n > 0) if any(take.values()) else 0
    )
    steps = np.unique(np.linspace(0, num_steps - 1, max(need, 1)).round().astype(int))
    rows: dict[int, list] = {KINDS.index(k): [] for k in take}
    per_step = {KINDS.index(k): int(np.ceil(n / len(steps))) for k, n in take.items()}
    for s in steps:
      b = self.batch(int(s))
      for code, k in per_step.items():
        rows[code].extend(b["tokens"][b["kind"] == code][:k])
    tokens, kinds = [], []
    for code, got in rows.items():
      n = take[KINDS[code]]
      if len(got) < n:
        raise ValueError(f"only {len(got)} {KINDS[code]} rows in {num_steps} steps, need {n}.")
      tokens.extend(got[:n])
      kinds.extend([code] * n)
    tokens.extend(self.pool)
    kinds.extend([DUPLICATE] * len(self.pool))
    tokens = np.stack(tokens).astype(np.int32)
    return {"tokens": tokens, "mask": np.ones(tokens.shape, bool), "kind": np.asarray(kinds, np.int32)}


def fixed_batches(pool: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
  """``pool`` cut into equal batches; the last is padded with masked-out rows."""
  n = pool["tokens"].shape[0]
  out = []
  for start in range(0, n, batch_size):
    sl = slice(start, min(start + batch_size, n))
    pad = batch_size - (sl.stop - sl.start)
    b = {}
    for key, value in pool.items():
      v = value[sl]
      if pad:
        v = np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
      b[key] = v
    out.append(b)
  return out
