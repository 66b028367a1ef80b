"""Shared timing and memory measurement for the benchmark harness.

A benchmark *case* builds one plain train step and any number of weighted train
steps over the SAME model, optimiser, state and batch, in the same process. The
harness compiles every step, reads its peak memory from the compiled executable,
warms it up, and times it with interleaved repeats so that drift on a shared
machine (other processes, thermal throttling) hits the plain and the weighted
steps alike. Every row reports the weighted step relative to its own plain step.

Adding rows for a new family: write ``benchmarks/<family>.py`` with a list
``CASES`` of :class:`Case` objects and name the module in
:data:`benchmarks.cases.FAMILY_MODULES`.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

PyTree = Any
Step = Callable[[PyTree, PyTree], PyTree]

PLAIN = "plain"


class Setup(NamedTuple):
  """What a case's ``build`` function returns.

  Attributes:
    plain_step: the plain (uniform-weight) step, e.g.
      ``jaxweights.make_train_step(graphdef, loss_fn, tx, weighting=None)``.
    weighted_steps: ``{method: step}``; each step has the plain step's model,
      loss, optimiser and batch, and differs only in its weighting.
    state: the train state fed to every step (re-fed unchanged each call, so the
      steps must not donate it).
    batch: the batch fed to every step.
    model_name: a short human-readable model description.
    batch_desc: a short human-readable batch description (e.g. ``"32x256"``).
    weighted_states: optional ``{method: state}`` for weightings whose state
      differs from the plain step's (methods not listed use ``state``).
  """

  plain_step: Step
  weighted_steps: dict[str, Step]
  state: PyTree
  batch: PyTree
  model_name: str
  batch_desc: str
  weighted_states: dict[str, PyTree] | None = None


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmark: a name, a builder and optional targets.

  Attributes:
    name: unique row prefix, ``"<family>/<what>"``; ``--only`` matches on it.
    build: ``build(quick) -> Setup``; ``quick=True`` must build something small
      enough for a unit test (seconds on a CPU).
    target_time_ratio: the largest acceptable weighted/plain step time, or None.
    target_memory_ratio: the largest acceptable weighted/plain peak memory, or
      None.
    target_methods: the methods the targets apply to; None means every row
      (the plain row included, which meets them trivially). Rows of other
      methods (shown for contrast) get no target and ``meets_target`` None.
    measure: optional ``measure(case, settings, quick) -> rows`` replacing
      :func:`measure_case`'s JAX measurement, for rows timed some other way
      (e.g. a peer library in another framework); the rows must follow the same
      schema, plain row first. ``build`` is then unused.
  """

  name: str
  build: Callable[[bool], Setup]
  target_time_ratio: float | None = None
  target_memory_ratio: float | None = None
  target_methods: tuple[str, ...] | None = None
  measure: Callable[[Case, Settings, bool], list[dict]] | None = None

  def targets_for(self, method: str) -> tuple[float | None, float | None]:
    """``(target_time_ratio, target_memory_ratio)`` of one method's row."""
    if self.target_methods is not None and method not in self.target_methods:
      return None, None
    return self.target_time_ratio, self.target_memory_ratio


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to time.

  Attributes:
    repeats: timed repeats per step; the reported time is their median.
    warmup: untimed calls per step after compilation.
    min_repeat_s: each repeat loops the step until about this long (the loop
      count is calibrated once on the plain step and shared by every method).
  """

  repeats: int = 7
  warmup: int = 2
  min_repeat_s: float = 0.25

  def __post_init__(self):
    if self.repeats < 1:
      raise ValueError(f"repeats must be >= 1, got {self.repeats}.")
    if self.warmup < 0:
      raise ValueError(f"warmup must be >= 0, got {self.warmup}.")


def device_string() -> str:
  """The first device's kind plus platform, e.g. ``"NVIDIA H100 80GB HBM3 (gpu)"``."""
  d = jax.devices()[0]
  return f"{d.device_kind} ({d.platform})"


# Quick runs only check that every case runs and reports sane rows; XLA's CPU
# compile time dominates them, and these options halve it.
QUICK_COMPILER_OPTIONS = {
  "xla_backend_optimization_level": 0,
  "xla_llvm_disable_expensive_passes": True,
}


def compile_step(
  step: Step, state: PyTree, batch: PyTree, compiler_options: dict | None = None
) -> jax.stages.Compiled:
  """Ahead-of-time compiles ``step(state, batch)`` (jitting it if it is not)."""
  jitted = step if hasattr(step, "lower") else jax.jit(step)
  return jitted.lower(state, batch).compile(compiler_options)


def peak_memory_bytes(compiled: jax.stages.Compiled) -> int | None:
  """Peak device memory of one call of a compiled executable, from XLA.

  ``peak = temp + argument + output - alias`` bytes, where (from
  ``compiled.memory_analysis()``) ``temp`` is the scratch buffer XLA allocates
  for intermediates (activations kept for the backward pass, gradients, ...),
  ``argument`` the inputs (state and batch), ``output`` the results (new state
  and metrics), and ``alias`` the outputs that reuse input buffers (donation),
  counted once. Generated code size is left out. Returns None when the backend
  gives no analysis.
  """
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return int(
    stats.temp_size_in_bytes
    + stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    - stats.alias_size_in_bytes
  )


def _time_loop(fn: Callable, state: PyTree, batch: PyTree, n: int) -> float:
  """Seconds per call of ``n`` back-to-back calls, synchronised at the end.

  The same ``state`` is fed every call (no donation), so the step is timed, not
  the growth of a state. Calls are dispatched without waiting on each other (as
  in a training loop, where dispatch overlaps the device's work).
  """
  t0 = time.perf_counter()
  out = None
  for _ in range(n):
    out = fn(state, batch)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / n


def _ratio(a: float | None, b: float | None) -> float | None:
  if a is None or b is None or b == 0:
    return None
  return a / b


def measure_case(case: Case, settings: Settings, *, quick: bool = False) -> list[dict]:
  """Builds, compiles, measures and compares every step of ``case``.

  The plain and weighted steps are timed in interleaved rounds: each round
  times every method once, and the order rotates from round to round, so that
  no method always runs first or always follows the same one.

  With ``quick``, steps are compiled with :data:`QUICK_COMPILER_OPTIONS`.

  Returns:
    One row per method, the ``"plain"`` row first (ratios 1). Ratios are
    weighted/plain: ``time_ratio_vs_plain`` is the ratio of the median step
    times, ``peak_memory_ratio_vs_plain`` that of the peak bytes (see
    :func:`peak_memory_bytes`).
  """
  if case.measure is not None:
    return case.measure(case, settings, quick)
  setup = case.build(quick)
  if PLAIN in setup.weighted_steps:
    raise ValueError(f"case {case.name!r}: {PLAIN!r} is reserved for the plain step.")
  steps = {PLAIN: setup.plain_step, **setup.weighted_steps}
  given_states = setup.weighted_states or {}
  states = {m: given_states.get(m, setup.state) for m in steps}
  batch = setup.batch

  options = QUICK_COMPILER_OPTIONS if quick else None
  compiled = {m: compile_step(s, states[m], batch, options) for m, s in steps.items()}
  peak = {m: peak_memory_bytes(c) for m, c in compiled.items()}

  for m, fn in compiled.items():
    for _ in range(settings.warmup):
      jax.block_until_ready(fn(states[m], batch))

  # One timed call of the plain step sets the loop count shared by all methods.
  once = _time_loop(compiled[PLAIN], states[PLAIN], batch, 1)
  n = max(1, math.ceil(settings.min_repeat_s / max(once, 1e-9)))

  methods = list(steps)
  times: dict[str, list[float]] = {m: [] for m in methods}
  for r in range(settings.repeats):
    k = r % len(methods)
    for m in methods[k:] + methods[:k]:
      times[m].append(_time_loop(compiled[m], states[m], batch, n))

  median_s = {m: statistics.median(ts) for m, ts in times.items()}
  device = device_string()
  rows = []
  for m in methods:
    time_ratio = _ratio(median_s[m], median_s[PLAIN])
    memory_ratio = _ratio(peak[m], peak[PLAIN])
    target_time, target_memory = case.targets_for(m)
    rows.append(
      {
        "benchmark": case.name,
        "method": m,
        "time_ratio_vs_plain": time_ratio,
        "peak_memory_ratio_vs_plain": memory_ratio,
        "plain_step_ms": 1e3 * median_s[PLAIN],
        "step_ms": 1e3 * median_s[m],
        "plain_peak_memory_bytes": peak[PLAIN],
        "peak_memory_bytes": peak[m],
        "device": device,
        "model": setup.model_name,
        "batch": setup.batch_desc,
        "repeats": settings.repeats,
        "calls_per_repeat": n,
        "target_time_ratio": target_time,
        "target_memory_ratio": target_memory,
        "meets_target": meets_target(target_time, target_memory, time_ratio, memory_ratio),
      }
    )
  return rows


def meets_target(
  target_time: float | None,
  target_memory: float | None,
  time_ratio: float | None,
  memory_ratio: float | None,
) -> bool | None:
  """True/False against the targets; None when there is no target."""
  if target_time is None and target_memory is None:
    return None
  ok = True
  if target_time is not None:
    ok &= time_ratio is not None and time_ratio <= target_time
  if target_memory is not None:
    ok &= memory_ratio is not None and memory_ratio <= target_memory
  return bool(ok)


def _fmt(x, spec: str) -> str:
  return "n/a" if x is None else format(x, spec)


def markdown_table(rows: list[dict]) -> str:
  """The rows as a GitHub markdown table (one line per row).

  A row's optional ``"note"`` (free text, e.g. a peer comparison) fills the last
  column.
  """
  header = (
    "| benchmark | method | model | batch | plain ms | step ms | time ratio "
    "| peak MiB | memory ratio | target (time / memory) | meets target "
    "| device | repeats | note |"
  )
  lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
  for row in rows:
    tt, tm = row.get("target_time_ratio"), row.get("target_memory_ratio")
    bound = lambda t: "-" if t is None else f"<= {t:.2f}x"
    target = "-" if tt is None and tm is None else f"{bound(tt)} / {bound(tm)}"
    meets = row.get("meets_target")
    peak = row.get("peak_memory_bytes")
    cells = [
      row["benchmark"],
      row["method"],
      row["model"],
      row["batch"],
      _fmt(row["plain_step_ms"], ".2f"),
      _fmt(row["step_ms"], ".2f"),
      _fmt(row["time_ratio_vs_plain"], ".3f") + "x",
      _fmt(None if peak is None else peak / 2**20, ".1f"),
      _fmt(row["peak_memory_ratio_vs_plain"], ".4f") + "x",
      target,
      "-" if meets is None else ("yes" if meets else "**no**"),
      row["device"],
      str(row["repeats"]),
      str(row.get("note") or "-").replace("|", "/"),
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
