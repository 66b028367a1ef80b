"""A minimal host loop: batches by step, metrics to JSON lines, resumable.

The loop owns nothing the step does not: batches come from ``batch_fn(step)``, a
pure function of the step index (see :mod:`jaxweights.substrates.data`), so restarting from a
checkpoint at step ``k`` replays exactly the batches an uninterrupted run would
have seen, and the result is bit-identical on CPU.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax

from jaxweights.core.step import TrainState
from jaxweights.runtime.checkpoint import Checkpointer

PyTree = Any


class JsonlLogger:
  """Appends one JSON object per line; ``None`` path logs nowhere.

  Each record is written (keys sorted) and the file closed at once, so a crash
  loses nothing already logged, and a resumed run appends to the same file. In a
  multi-process run only process 0 writes (``all_processes=True`` lets every
  process write, e.g. to a per-process path).

  Args:
    path: the ``.jsonl`` file to append to (its folder is created if missing),
      or None to discard every record.
    all_processes: write from every process, not only process 0.

  Examples:
    >>> import os
    >>> import tempfile
    >>> import jaxweights as jw
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   path = os.path.join(tmp, "logs", "metrics.jsonl")
    ...   logger = jw.JsonlLogger(path)
    ...   logger.log({"step": 1, "loss": 0.5})
    ...   logger.log({"step": 2, "loss": 0.25})
    ...   records = jw.read_jsonl(path)
    >>> records
    [{'loss': 0.5, 'step': 1}, {'loss': 0.25, 'step': 2}]
  """

  def __init__(self, path: str | os.PathLike | None, *, all_processes: bool = False) -> None:
    writes = all_processes or jax.process_index() == 0
    self.path = None if path is None or not writes else os.fspath(path)
    if self.path:
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)

  def log(self, record: dict) -> None:
    """Appends ``record`` as one line of JSON (a no-op without a path).

    Args:
      record: a JSON-serialisable dict (e.g. host floats from the metrics).
    """
    if self.path:
      with open(self.path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """Reads a JSON-lines file such as a :class:`JsonlLogger` writes.

  Args:
    path: the ``.jsonl`` file; blank lines are skipped.

  Returns:
    The records, one dict per non-blank line, in file order.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    json.JSONDecodeError: a line is not valid JSON.

  Examples:
    >>> import os
    >>> import tempfile
    >>> import jaxweights as jw
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   path = os.path.join(tmp, "metrics.jsonl")
    ...   with open(path, "w") as f:
    ...     print('{"step": 1, "loss": 0.5}', file=f)
    ...     print(file=f)  # blank lines are skipped
    ...     print('{"step": 2, "loss": 0.25}', file=f)
    ...   steps = [r["step"] for r in jw.read_jsonl(path)]
    >>> steps
    [1, 2]
  """
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def progress(
  iterable: Iterable,
  *,
  total: int | None = None,
  desc: str = "",
  initial: int = 0,
  enabled: bool | None = None,
) -> Iterable:
  """A tqdm progress bar when available and stderr is a terminal (or forced).

  Args:
    iterable: what to iterate over.
    total: the number of items expected (for the bar's length).
    desc: the bar's label.
    initial: the count the bar starts from (a resumed run's first step).
    enabled: force the bar on or off; None shows it when stderr is a terminal.

  Returns:
    A ``tqdm`` wrapper of ``iterable``, or ``iterable`` itself when the bar is
    off or tqdm (an ``experiments`` extra) is not installed.
  """
  if enabled is None:
    enabled = sys.stderr.isatty()
  if not enabled:
    return iterable
  try:
    from tqdm.auto import tqdm
  except ImportError:  # tqdm is an experiments extra
    return iterable
  return tqdm(iterable, total=total, desc=desc, initial=initial, dynamic_ncols=True)


def train_loop(
  step_fn: Callable[[TrainState, PyTree], tuple[TrainState, dict]],
  state: TrainState,
  batch_fn: Callable[[int], PyTree],
  num_steps: int,
  *,
  checkpointer: Checkpointer | None = None,
  checkpoint_every: int = 0,
  logger: JsonlLogger | None = None,
  log_every: int = 1,
  eval_fn: Callable[[TrainState], dict] | None = None,
  eval_every: int = 0,
  desc: str = "train",
  show_progress: bool | None = None,
  samples_per_step: int | None = None,
  tokens_per_step: int | None = None,
  flops_per_step: float | None = None,
  peak_flops: float | None = None,
) -> tuple[TrainState, list[dict]]:
  """Runs ``step_fn`` from ``state.step`` up to ``num_steps``.

  If ``checkpointer`` holds a checkpoint, the loop restores the latest one first
  and continues from its step. Metrics are fetched to the host only every
  ``log_every`` steps (each fetch is a device sync).

  Args:
    step_fn: a compiled ``step(state, batch) -> (state, metrics)``.
    state: the initial state (also the restore target: shapes and shardings).
    batch_fn: ``batch_fn(step) -> batch``, pure in ``step``.
    num_steps: total number of updates of the run.
    checkpointer: optional; saves every ``checkpoint_every`` steps and at the end.
    checkpoint_every: 0 = only at the end.
    logger: optional JSON-lines logger for metrics (and eval results).
    log_every: metrics fetch/log period.
    eval_fn: optional ``eval_fn(state) -> dict`` run every ``eval_every`` steps
      and at the end.
    eval_every: 0 = only at the end.
    desc: progress-bar label.
    show_progress: force the progress bar on/off (default: when a terminal).
    samples_per_step: the global batch size; logs ``samples_per_s``.
    tokens_per_step: tokens per global batch; logs ``tokens_per_s``.
    flops_per_step: FLOPs of one step per device (e.g.
      :func:`jaxweights.runtime.aot.compiled_flops` of the compiled step); logs
      ``tflops_per_device``.
    peak_flops: the device's peak FLOP/s (default: :func:`peak_flops_per_device`
      for known accelerators); with ``flops_per_step`` logs ``mfu``.

  Returns:
    ``(final_state, history)``: the logged records of this invocation.

  Raises:
    ValueError: ``num_steps``, ``checkpoint_every``, ``log_every`` or
      ``eval_every`` is not an integer ``>= 0``, or the (restored) state is
      already past ``num_steps``.
  """
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
    raise ValueError(f"num_steps must be an integer >= 0, got {num_steps!r}.")
  for name, value in (
    ("checkpoint_every", checkpoint_every),
    ("log_every", log_every),
    ("eval_every", eval_every),
  ):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
  if checkpointer is not None and checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
  start = int(jax.device_get(state.step))
  if start > num_steps:
    raise ValueError(
      f"the run is already at step {start} (restored from "
      f"{getattr(checkpointer, 'directory', 'the given state')}), past num_steps="
      f"{num_steps}; pass num_steps >= {start} or use another checkpoint directory."
    )
  history: list[dict] = []
  t0 = time.perf_counter()
  peak = peak_flops if peak_flops is not None else peak_flops_per_device()
  last = (start, t0)

  def record(rec):
    history.append(rec)
    if logger is not None:
      logger.log(rec)

  for step in progress(
    range(start, num_steps), total=num_steps, initial=start, desc=desc, enabled=show_progress
  ):
    state, metrics = step_fn(state, batch_fn(step))
    done = step + 1
    if log_every and (done % log_every == 0 or done == num_steps):
      rec = {k: float(v) for k, v in jax.device_get(metrics).items()}
      now = time.perf_counter()
      rec.update(step=done, time_s=now - t0)
      rec.update(
        _throughput(done - last[0], now - last[1], samples_per_step, tokens_per_step, flops_per_step, peak)
      )
      last = (done, now)
      record(rec)
    if eval_fn is not None and eval_every and done % eval_every == 0 and done != num_steps:
      record({"step": done, **eval_fn(state)})
    if checkpointer is not None and checkpoint_every and done % checkpoint_every == 0:
      checkpointer.save(done, state)
  if eval_fn is not None and (start < num_steps or not history):
    record({"step": num_steps, **eval_fn(state)})
  if checkpointer is not None and checkpointer.latest_step() != num_steps:
    checkpointer.save(num_steps, state, force=True)
  return state, history


def _throughput(steps, seconds, samples, tokens, flops, peak) -> dict[str, float]:
  """Rates over the last logging interval (the metrics fetch synchronises, so the
  interval holds exactly ``steps`` finished steps; the first one also holds the
  compilation)."""
  if steps <= 0 or seconds <= 0:
    return {}
  rate = steps / seconds
  out = {"steps_per_s": rate}
  if samples:
    out["samples_per_s"] = rate * samples
  if tokens:
    out["tokens_per_s"] = rate * tokens
  if flops:
    out["tflops_per_device"] = rate * flops / 1e12
    if peak:
      out["mfu"] = rate * flops / peak
  return out


# Dense bf16 peak FLOP/s per device (vendor figures) by ``device_kind`` prefix.
PEAK_BF16_FLOPS: dict[str, float] = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
  "NVIDIA A100": 312e12,
}


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  """The dense bf16 peak FLOP/s of a known accelerator, for an MFU estimate.

  Args:
    device: the device (default: ``jax.devices()[0]``).

  Returns:
    FLOP/s from :data:`PEAK_BF16_FLOPS` (longest matching ``device_kind``
    prefix), or None for an unknown kind (CPUs included).
  """
  kind = (device or jax.devices()[0]).device_kind
  matches = [k for k in PEAK_BF16_FLOPS if kind.startswith(k)]
  return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None
