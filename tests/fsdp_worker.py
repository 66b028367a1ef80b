"""One process of the FSDP multi-process test: ``python fsdp_worker.py OUT.npz [COORD NPROC PID]``.

Trains an MLP with LinUpper weights for 3 steps on a (data 2, fsdp 4, tensor 1)
mesh over every device of every process, parameters and Adam moments sharded,
each process loading only its own rows of every batch; writes the final
parameters (gathered) and the rows this process loaded.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

import jaxweights as jw

N, BATCH, STEPS = 256, 32, 3


def main(out, coordinator=None, nproc=None, pid=None):
  if coordinator:
    jw.distributed.initialize(coordinator, int(nproc), int(pid), timeout_s=120)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, 16)).astype("float32")
  y = rng.integers(0, 8, N).astype("int32")
  mesh = jw.make_mesh(2, 4, 1)
  tx = optax.adam(1e-2, eps=1e-3)
  weighting = jw.linupper_weighting(r=1.0)
  graphdef, state = jw.init_train_state(jw.MLP(16, [32], 8, rngs=nnx.Rngs(0)), tx, weighting)
  shardings = jw.state_shardings(state, mesh)
  state = jw.place(state, shardings)

  def loss_fn(model, batch):
    return jw.LossOutput(jw.cross_entropy(model(batch["x"]), batch["y"]))

  step = jw.make_train_step(graphdef, loss_fn, tx, weighting, mesh=mesh, state_shardings=shardings)
  loaded = []

  def load_rows(idx):
    loaded.extend(idx.tolist())
    return {"x": x[idx], "y": y[idx]}

  for s in range(STEPS):
    indices = jw.data.batch_indices(N, BATCH, seed=0, step=s)
    state, _ = step(state, jw.data.process_local_batch(load_rows, indices, mesh))
  params = [
    np.asarray(multihost_utils.process_allgather(p, tiled=True)) for p in jax.tree.leaves(state.params)
  ]
  np.savez(out, *params, loaded=np.asarray(loaded), local_devices=jax.local_device_count())


if __name__ == "__main__":
  main(*sys.argv[1:])
