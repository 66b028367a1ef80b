"""Saving and restoring the train state with orbax.

The whole :class:`~jaxweights.TrainState` (params, optimiser state, weighting
state, step and PRNG key) is one pytree, so one ``CheckpointManager`` item holds
it. Restoring against the live state as a target keeps dtypes and shardings, and a
resumed run continues exactly as an uninterrupted one (bit-identical on CPU, given
batches that are a pure function of (seed, step)).

What the checkpointer guarantees (each with a test in ``tests/reliability``):

* options and the directory are checked when it is created: ``max_to_keep`` and
  ``save_interval_steps`` must be positive integers, the directory must be
  writable, and one run at a time holds it (a lock file; a second run gets a
  clear error instead of racing the first);
* an unreadable checkpoint (empty, truncated, corrupted) is skipped with a
  warning naming it and moved aside to ``<directory>/.unreadable/``, so it does
  not hide older good checkpoints nor block a later save of the same step;
* a checkpoint written for another model (different tree, shapes or dtypes) is
  never silently cast into the target: restore raises
  :class:`CheckpointMismatchError` naming the first difference;
* with ``fingerprint=`` (e.g. an experiment's config) a directory written under
  another fingerprint is refused instead of being resumed;
* in a multi-process run every process saves to the same directory (orbax's save
  is collective); only process 0 writes the lock, the fingerprint and moves
  unreadable steps aside;
* paths go through ``etils.epath``: a local path is made absolute, a URL such as
  ``gs://bucket/run`` passes through untouched (the lock file is local-only: on
  object stores one run per directory is the caller's business);
* with ``async_save=True`` a save returns once the arrays are copied off the
  devices and training continues while orbax writes; the checkpoint appears
  only when complete (written to a temporary folder, then renamed), so a crash
  mid-save leaves the previous one restorable. ``wait()``, the next save and
  ``close()`` wait for a pending write.
"""

from __future__ import annotations

import errno
import json
import os
import time
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

PyTree = Any

_LOCK = ".jaxweights.lock"
_FINGERPRINT = "fingerprint.json"
_UNREADABLE = ".unreadable"


class CheckpointMismatchError(ValueError):
  """A checkpoint exists but was written for a different tree, shapes or dtypes."""


class CheckpointLockedError(RuntimeError):
  """Another run holds the checkpoint directory."""


def _positive_int(value, name: str, *, allow_none: bool = False) -> int | None:
  if value is None and allow_none:
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1{' or None' if allow_none else ''}, got {value!r}.")
  return value


class Checkpointer:
  """A checked wrapper over ``orbax.checkpoint.CheckpointManager``.

  Args:
    directory: where step folders are written (created if missing).
    max_to_keep: keep the newest N checkpoints (>= 1; None keeps all).
    save_interval_steps: ``save`` is a no-op on steps not divisible by this (>= 1).
    fingerprint: optional JSON-serialisable description of the run (its config);
      stored with the checkpoints and compared on every later open, so a
      directory written under another config is refused.
    lock: hold ``<directory>/.jaxweights.lock`` while open (process 0; local
      directories only).
    async_save: write checkpoints in the background (see the module docstring).

  Attributes:
    directory: the checkpoint directory: an absolute local path, or the URL as
      given (``gs://...``).
    max_to_keep: as given.
    save_interval_steps: as given.
    restored_step: the step the last ``restore(target)`` without ``step``
      loaded (None before any).

  Raises:
    ValueError: ``max_to_keep`` or ``save_interval_steps`` is not a positive
      integer, or ``fingerprint`` differs from the one stored in ``directory``.
    PermissionError: ``directory`` cannot be created or written.
    CheckpointLockedError: another open checkpointer (of this or another
      process) holds the lock on ``directory``.

  Examples:
    >>> import os
    >>> import tempfile
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> tmp = tempfile.TemporaryDirectory()
    >>> ckpt = jw.Checkpointer(os.path.join(tmp.name, "run"), max_to_keep=2)
    >>> ckpt.save(10, {"w": jnp.arange(3.0), "step": jnp.int32(10)})
    True
    >>> ckpt.latest_step(), ckpt.all_steps()
    (10, [10])
    >>> restored = ckpt.restore({"w": jnp.zeros(3), "step": jnp.int32(0)})
    >>> restored["w"].tolist(), int(restored["step"])
    ([0.0, 1.0, 2.0], 10)
    >>> ckpt.close()
    >>> tmp.cleanup()
  """

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    max_to_keep: int | None = 3,
    save_interval_steps: int = 1,
    fingerprint: Any = None,
    lock: bool = True,
    async_save: bool = False,
  ) -> None:
    self.max_to_keep = _positive_int(max_to_keep, "max_to_keep", allow_none=True)
    self.save_interval_steps = _positive_int(save_interval_steps, "save_interval_steps")
    self.async_save = bool(async_save)
    self.directory = _as_path(directory)
    self._lock_fd = None
    primary = jax.process_index() == 0
    if primary:
      _check_writable(self.directory)
      if lock and _is_local(self.directory):
        self._lock_fd = _acquire_lock(self.directory)
      if fingerprint is not None:
        _check_fingerprint(self.directory, fingerprint)
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
      epath.Path(self.directory),
      item_handlers=ocp.StandardCheckpointHandler(),  # so a fresh manager reads metadata
      options=ocp.CheckpointManagerOptions(
        max_to_keep=self.max_to_keep,
        save_interval_steps=self.save_interval_steps,
        enable_async_checkpointing=self.async_save,
      ),
    )

  def save(self, step: int, state: PyTree, *, force: bool = False) -> bool:
    """Saves ``state`` under ``step``: waits until it is written, or with
    ``async_save`` until the arrays are copied off the devices.

    In a multi-process run every process must call this (orbax's save is
    collective).

    Args:
      step: the step number the checkpoint is saved under.
      state: the pytree to save (e.g. a :class:`~jaxweights.TrainState`).
      force: save even if ``step`` is not a multiple of
        ``save_interval_steps``.

    Returns:
      Whether a checkpoint was written (False when skipped by the interval).
    """
    saved = self._manager.save(int(step), args=ocp.args.StandardSave(state), force=force)
    if not self.async_save:
      self._manager.wait_until_finished()
    return bool(saved)

  def wait(self) -> None:
    """Blocks until a pending (asynchronous) save is written."""
    self._manager.wait_until_finished()

  def latest_step(self) -> int | None:
    """The newest saved step.

    Returns:
      The largest step with a checkpoint in the directory, or None if none.
    """
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every saved step.

    Returns:
      The steps with a checkpoint in the directory.
    """
    return list(self._manager.all_steps())

  def restore(self, target: PyTree, step: int | None = None) -> PyTree:
    """Restores a checkpoint shaped like ``target``.

    With ``step=None`` the newest readable checkpoint wins: one that fails to
    restore (a truncated or corrupted file, an empty folder) is reported with a
    warning naming it, moved aside to ``.unreadable/`` and skipped for the next
    older one. A partially written checkpoint never appears as a step: orbax
    writes to a temporary folder and renames it only when complete. ``target``
    may be a live state or its ``jax.ShapeDtypeStruct`` tree; its shardings are
    kept.

    Args:
      target: a pytree like the saved one (arrays or ``jax.ShapeDtypeStruct``
        leaves with the same tree, shapes and dtypes); it gives the restored
        arrays their shardings.
      step: the step to restore; None restores the newest readable one (and
        records it in ``restored_step``).

    Returns:
      The restored pytree, with ``target``'s structure, shapes, dtypes and
      shardings.

    Raises:
      CheckpointMismatchError: the newest readable checkpoint holds another tree,
        shapes or dtypes than ``target`` (nothing is cast).
      FileNotFoundError: no (readable) checkpoint.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    if step is not None:
      self._check_matches(step, abstract)
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}.")
    for candidate in steps:
      try:
        saved = _saved_tree(self._manager.item_metadata(candidate))
      except Exception as error:  # orbax raises many types for a damaged folder
        self._skip(candidate, error)
        continue
      self._check_matches(candidate, abstract, saved)
      try:
        restored = self._manager.restore(candidate, args=ocp.args.StandardRestore(abstract))
      except Exception as error:
        self._skip(candidate, error)
        continue
      self.restored_step = candidate
      return restored
    raise FileNotFoundError(f"no readable checkpoint in {self.directory} (tried {steps}).")

  restored_step: int | None = None

  def _check_matches(self, step: int, abstract: PyTree, saved_tree=None) -> None:
    if saved_tree is None:
      saved_tree = _saved_tree(self._manager.item_metadata(step))
    saved = _leaf_specs(saved_tree)
    wanted = _leaf_specs(abstract)
    if saved != wanted:
      missing = sorted(set(wanted) - set(saved))
      extra = sorted(set(saved) - set(wanted))
      differ = sorted(p for p in set(saved) & set(wanted) if saved[p] != wanted[p])
      detail = (
        f"'{differ[0]}' is {saved[differ[0]]} in the checkpoint but {wanted[differ[0]]} in the target"
        if differ
        else f"the target has {missing[:3]} that the checkpoint lacks"
        if missing
        else f"the checkpoint has {extra[:3]} that the target lacks"
      )
      raise CheckpointMismatchError(
        f"checkpoint step {step} in {self.directory} was written for another model or "
        f"dtype: {detail}. Restore into a matching state, or use another directory."
      )

  def _skip(self, step: int, error: Exception) -> None:
    warnings.warn(
      f"checkpoint step {step} in {self.directory} is unreadable and is skipped "
      f"({type(error).__name__}: {str(error)[:200]}); moved to {_UNREADABLE}/.",
      stacklevel=3,
    )
    if jax.process_index() == 0:
      src = epath.Path(self.directory) / str(step)
      if src.exists():
        dst_dir = epath.Path(self.directory) / _UNREADABLE
        dst_dir.mkdir(parents=True, exist_ok=True)
        src.rename(dst_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

      multihost_utils.sync_global_devices(f"jaxweights_skip_{step}")
    self._manager.close()
    self._manager = self._open()  # a failed restore can leave the manager's step cache stale

  def close(self) -> None:
    """Waits for a pending save, closes the orbax manager and releases the lock."""
    self._manager.wait_until_finished()
    self._manager.close()
    if self._lock_fd is not None:
      import fcntl  # pylint: disable=import-outside-toplevel

      fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
      os.close(self._lock_fd)
      self._lock_fd = None

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()

  def __del__(self):
    if getattr(self, "_lock_fd", None) is not None:
      try:
        os.close(self._lock_fd)
      except OSError:
        pass


def _saved_tree(metadata):
  """The saved tree's metadata; raises for an empty or damaged step."""
  if metadata is None:
    raise ValueError("no metadata")
  tree = metadata.tree
  if tree is None or not jax.tree_util.tree_leaves(tree):
    raise ValueError("no saved arrays")
  return tree


def _path_key(path) -> str:
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
  return "/".join(out)


def _leaf_specs(tree) -> dict[str, tuple]:
  """``{normalised key path: (shape, dtype)}``: comparable between a target and
  orbax's saved metadata, whatever container types each uses."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_key(p): (tuple(x.shape), str(x.dtype)) for p, x in leaves}


def _as_path(directory: str | os.PathLike) -> str:
  """An absolute local path, or a URL (``gs://...``) unchanged."""
  text = os.fspath(directory)
  return text if "://" in text else os.path.abspath(text)


def _is_local(directory: str) -> bool:
  return "://" not in directory


def _check_writable(directory: str) -> None:
  try:
    path = epath.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write-probe-{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise PermissionError(
      f"checkpoint directory {directory} is not writable ({e.strerror or e}); "
      "checked before training so that no run is lost at its first save."
    ) from None


def _acquire_lock(directory: str) -> int:
  import fcntl  # pylint: disable=import-outside-toplevel

  fd = os.open(os.path.join(directory, _LOCK), os.O_CREAT | os.O_RDWR, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno in (errno.EAGAIN, errno.EACCES):
      raise CheckpointLockedError(
        f"checkpoint directory {directory} is in use by another run (lock "
        f"{_LOCK}); two runs writing one directory would overwrite each other's "
        "steps. Use another directory, or stop the other run."
      ) from None
    raise
  os.ftruncate(fd, 0)
  os.write(fd, str(os.getpid()).encode())
  return fd


def _check_fingerprint(directory: str, fingerprint: Any) -> None:
  path = epath.Path(directory) / _FINGERPRINT
  text = json.dumps(fingerprint, sort_keys=True, default=repr)
  if path.exists():
    old = path.read_text()
    if old != text:
      raise ValueError(
        f"checkpoint directory {directory} was written by a run with another "
        f"configuration ({_FINGERPRINT} differs); resuming it would mix two runs. "
        "Use another output directory or delete the old checkpoints."
      )
  else:
    path.write_text(text)
