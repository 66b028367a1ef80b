"""Saving and restoring the train state with orbax.

The whole :class:`~jaxweights.TrainState` (params, optimiser state, weighting
state, step and PRNG key) is one pytree, so one ``CheckpointManager`` item holds
it. Restoring against the live state as a target keeps dtypes and shardings, and a
resumed run continues exactly as an uninterrupted one (bit-identical on CPU, given
batches that are a pure function of (seed, step)).
"""

from __future__ import annotations

import os
from typing import Any

import warnings

import jax
import orbax.checkpoint as ocp

PyTree = Any


class Checkpointer:
  """A thin wrapper over ``orbax.checkpoint.CheckpointManager``.

  Args:
    directory: where step folders are written (created if missing).
    max_to_keep: keep the newest N checkpoints.
    save_interval_steps: ``save`` is a no-op on steps not divisible by this.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3,
               save_interval_steps: int = 1):
    self.directory = os.path.abspath(os.fspath(directory))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=False,
        ),
    )

  def save(self, step: int, state: PyTree, *, force: bool = False) -> bool:
    """Saves ``state`` under ``step``; returns whether a checkpoint was written."""
    saved = self._manager.save(int(step), args=ocp.args.StandardSave(state), force=force)
    self._manager.wait_until_finished()
    return bool(saved)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore(self, target: PyTree, step: int | None = None) -> PyTree:
    """Restores a checkpoint shaped like ``target``.

    With ``step=None`` the newest readable checkpoint wins: one that fails to
    restore (a truncated or corrupted file) is reported with a warning naming it
    and skipped for the next older one. A partially written checkpoint never
    appears as a step: orbax writes to a temporary folder and renames it only
    when complete. ``target`` may be a live state or its
    ``jax.ShapeDtypeStruct`` tree; its shardings are kept.

    Raises:
      FileNotFoundError: no (readable) checkpoint.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    if step is not None:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}.")
    for candidate in steps:
      try:
        restored = self._manager.restore(candidate, args=ocp.args.StandardRestore(abstract))
        _check_finite_structure(restored, abstract)
        self.restored_step = candidate
        return restored
      except Exception as error:  # orbax raises many types for a damaged folder
        warnings.warn(
            f"checkpoint step {candidate} in {self.directory} is unreadable and is "
            f"skipped ({type(error).__name__}: {str(error)[:200]}).",
            stacklevel=2,
        )
    raise FileNotFoundError(f"no readable checkpoint in {self.directory} (tried {steps}).")

  restored_step: int | None = None

  def close(self):
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _check_finite_structure(restored: PyTree, abstract: PyTree) -> None:
  """Raises if a restored tree does not match the target's shapes and dtypes."""
  got = jax.tree.map(lambda x: (x.shape, x.dtype), restored)
  want = jax.tree.map(lambda x: (x.shape, x.dtype), abstract)
  if jax.tree.structure(got) != jax.tree.structure(want) or got != want:
    raise ValueError("restored tree does not match the target's structure, shapes or dtypes.")
