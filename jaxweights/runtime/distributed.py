"""Multi-process (multi-host) runs with ``jax.distributed``.

One program per host (or per process on one machine); every process computes the
same pure ``batch_fn(step)`` on its host and only its own devices' rows are put on
devices (:func:`jaxweights.shard_batch` uses ``jax.make_array_from_callback`` when
``jax.process_count() > 1``), so the global batch, the weights and the update are
exactly those of a single-process run over the same devices. Results are gathered
(metrics are replicated) and written by process 0 (:func:`is_main`).

Configuration comes from flags or the environment:

* ``--coordinator HOST:PORT`` / ``JAXWEIGHTS_COORDINATOR``
* ``--num-processes N`` / ``JAXWEIGHTS_NUM_PROCESSES``
* ``--process-id I`` / ``JAXWEIGHTS_PROCESS_ID``

On TPU pods and managed GPU clusters (SLURM, ...) ``jax.distributed.initialize()``
finds these by itself: pass ``--distributed auto``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

import jax


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds ``--coordinator``, ``--num-processes``, ``--process-id``, ``--distributed``.

  The defaults of the first three come from ``JAXWEIGHTS_COORDINATOR``,
  ``JAXWEIGHTS_NUM_PROCESSES`` and ``JAXWEIGHTS_PROCESS_ID`` (read now).

  Args:
    parser: the parser to extend (in a ``"multi-process"`` argument group).

  Examples:
    >>> import argparse
    >>> import jaxweights as jw
    >>> parser = argparse.ArgumentParser()
    >>> jw.distributed.add_arguments(parser)
    >>> args = parser.parse_args(["--distributed", "off"])
    >>> jw.distributed.initialize_from_args(args)
    False
  """
  group = parser.add_argument_group("multi-process")
  group.add_argument(
    "--coordinator",
    default=os.environ.get("JAXWEIGHTS_COORDINATOR"),
    help="HOST:PORT of process 0 (env JAXWEIGHTS_COORDINATOR)",
  )
  group.add_argument(
    "--num-processes",
    type=int,
    default=_env_int("JAXWEIGHTS_NUM_PROCESSES"),
    help="number of processes (env JAXWEIGHTS_NUM_PROCESSES)",
  )
  group.add_argument(
    "--process-id",
    type=int,
    default=_env_int("JAXWEIGHTS_PROCESS_ID"),
    help="this process's index (env JAXWEIGHTS_PROCESS_ID)",
  )
  group.add_argument(
    "--distributed",
    choices=("off", "flags", "auto"),
    default=None,
    help="auto: let jax.distributed detect a TPU pod / cluster",
  )


DEFAULT_TIMEOUT_S = 120


def initialize(
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  auto: bool = False,
  timeout_s: int | None = None,
) -> bool:
  """Starts ``jax.distributed`` when more than one process is configured.

  Must run before any other JAX call that touches devices. On CPU the
  cross-process collectives use gloo (loopback works: 2 processes x 4 devices).

  Misconfiguration fails within ``timeout_s`` (default: env
  ``JAXWEIGHTS_INIT_TIMEOUT`` or 120 s) with a message: a worker that cannot
  reach the coordinator raises a ``RuntimeError`` naming it; a coordinator that
  waits for processes that never come (more declared than launched) is stopped
  by jax after the same timeout, after the message printed here.

  Args:
    coordinator: ``HOST:PORT`` of process 0; None (with at most one process)
      means a single-process run.
    num_processes: the number of processes.
    process_id: this process's index in ``[0, num_processes)``.
    auto: let ``jax.distributed.initialize()`` detect the cluster (TPU pods,
      SLURM...) and ignore the other arguments.
    timeout_s: seconds to wait for the coordinator and the other processes.

  Returns:
    True if ``jax.distributed`` was initialised.

  Raises:
    ValueError: a multi-process run lacks the coordinator, the process count
      or the process id, ``process_id`` is out of range, or ``coordinator`` is
      not ``HOST:PORT``.
    RuntimeError: a worker cannot reach the coordinator within ``timeout_s``.
  """
  if timeout_s is None:
    timeout_s = _env_int("JAXWEIGHTS_INIT_TIMEOUT") or DEFAULT_TIMEOUT_S
  if auto:
    jax.distributed.initialize()
    return True
  if coordinator is None and (num_processes or 1) == 1:
    return False
  if coordinator is None or num_processes is None or process_id is None:
    raise ValueError(
      "a multi-process run needs the coordinator address, the process count and "
      f"this process's id; got coordinator={coordinator!r}, "
      f"num_processes={num_processes!r}, process_id={process_id!r}."
    )
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}.")
  host, _, port = coordinator.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"coordinator must be HOST:PORT, got {coordinator!r}.")
  print(
    f"[jaxweights] process {process_id} of {num_processes}: joining the coordinator "
    f"at {coordinator} (timeout {timeout_s} s). If this stops with a timeout, check "
    "that every process was launched with the same --coordinator and "
    "--num-processes and a distinct --process-id.",
    file=sys.stderr,
    flush=True,
  )
  if process_id != 0:
    _wait_for(host, int(port), timeout_s, coordinator)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator,
    num_processes=num_processes,
    process_id=process_id,
    initialization_timeout=timeout_s,
  )
  return True


def _wait_for(host: str, port: int, timeout_s: float, coordinator: str) -> None:
  """Waits until the coordinator accepts TCP connections, or raises in time."""
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=1.0):
        return
    except OSError:
      if time.monotonic() >= deadline:
        raise RuntimeError(
          f"could not reach the coordinator at {coordinator} within {timeout_s} s: "
          "is process 0 running, with the same --coordinator?"
        ) from None
      time.sleep(0.2)


def initialize_from_args(args: argparse.Namespace) -> bool:
  """:func:`initialize` from :func:`add_arguments`'s flags.

  Args:
    args: parsed arguments holding ``coordinator``, ``num_processes``,
      ``process_id`` and ``distributed`` (``"off"`` skips the set-up,
      ``"auto"`` lets jax detect the cluster).

  Returns:
    True if ``jax.distributed`` was initialised.

  Raises:
    ValueError: see :func:`initialize`.
    RuntimeError: see :func:`initialize`.
  """
  mode = getattr(args, "distributed", None)
  if mode == "off":
    return False
  return initialize(args.coordinator, args.num_processes, args.process_id, auto=mode == "auto")


def is_main() -> bool:
  """Whether this is process 0 (the one that writes results).

  Returns:
    True in process 0 (and in every single-process run).
  """
  return jax.process_index() == 0


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value else None
