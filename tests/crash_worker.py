"""A training run for the crash-safety test: ``python crash_worker.py CKPT_DIR OUT.npz``.

Trains a small MLP with a stateful weighting for 40 steps, checkpointing every
3 steps; sleeps a little per step so a SIGKILL lands mid-run. On completion it
writes every leaf of the final state to OUT.npz.
"""

import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import test_checkpoint as tc

import jaxweights as jw

STEPS = 40


def main(ckpt_dir, out):
  step, state0 = tc.setup()

  def slow_batch(i):
    time.sleep(0.03)
    return tc.batch_fn(i)

  async_save = os.environ.get("JW_ASYNC_SAVE") == "1"  # saves written in the background
  ckpt = jw.Checkpointer(ckpt_dir, max_to_keep=2, async_save=async_save) if ckpt_dir != "-" else None
  final, _ = jw.train_loop(step, state0, slow_batch, STEPS, checkpointer=ckpt, checkpoint_every=3)
  if ckpt is not None:
    ckpt.close()
  np.savez(out, *[np.asarray(x) for x in jax.tree.leaves(final)])


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
