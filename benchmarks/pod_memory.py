"""Per-device memory of the pod-size LM step, from ahead-of-time compilation.

The model is a Llama-style decoder of about 1B parameters
(:data:`POD_LLAMA`: 18 blocks of width 2048, 16 heads, SwiGLU 5632, vocabulary
32000, untied head, bf16 compute with float32 parameters, blocks rematerialised), trained with AdamW
and LinUpper weights. The step is compiled for abstract inputs on fake CPU
devices in the pod's mesh shape; nothing is allocated. The default mesh is a TPU
v5e-64 slice used as pure FSDP, ``(data=1, fsdp=64, tensor=1)``, with 8
sequences of 2048 tokens per device (512 sequences, ~1M tokens per step)::

  XLA_FLAGS=--xla_force_host_platform_device_count=64 \\
    python -m benchmarks.pod_memory --mesh 1,64,1 --per-device-batch 8 --seq-len 2048

Flags shrink every size for a quick check (``--layers 2 --width 256 ...``); the
test suite runs a reduced model on 8 devices. The printed JSON gives the
parameter count, the per-device bytes of the sharded state (exact) and XLA's
per-device argument / temp / peak bytes of the partitioned CPU program (an
estimate of the accelerator's: compilers fuse and schedule differently).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxweights as jw
from experiments.lm_recipe import POD_MODEL
from jaxweights.runtime import aot

# The model of the LM experiments' pod configurations.
POD_LLAMA = jw.LlamaConfig(vocab_size=32000, max_len=2048, **POD_MODEL)


def lm_loss(model, batch):
  logits = model(batch["inputs"])
  loss, mask = jw.token_mean_cross_entropy(logits, batch["targets"])
  return jw.LossOutput(loss, mask)


def measure(config: jw.LlamaConfig, mesh_shape: Sequence[int], per_device_batch: int, seq_len: int) -> dict:
  """Compiles the LinUpper-weighted step for abstract inputs and reports its memory."""
  mesh = jw.make_mesh(*mesh_shape)
  tx = optax.adamw(3e-4, b2=0.95, weight_decay=0.1)
  weighting = jw.linupper_weighting(r=1.0)
  graphdef, state, shardings = aot.abstract_train_state(
    lambda: jw.Llama(config, rngs=nnx.Rngs(0)), tx, weighting, mesh=mesh
  )
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))
  step = jw.make_train_step(
    graphdef, lm_loss, tx, weighting, mesh=mesh, state_shardings=shardings, donate=True
  )
  batch_sharding = NamedSharding(mesh, P(jw.BATCH_AXES))
  global_batch = per_device_batch * mesh.shape["data"] * mesh.shape["fsdp"]
  tokens = jax.ShapeDtypeStruct((global_batch, seq_len), jnp.int32, sharding=batch_sharding)
  start = time.perf_counter()
  compiled = step.lower(state, {"inputs": tokens, "targets": tokens}).compile()
  memory = aot.compiled_memory(compiled)
  arrays = [x for x in jax.tree.leaves(state) if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)]
  state_bytes = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in arrays)
  return {
    "model": dataclasses.asdict(config),
    "params": n_params,
    "mesh": dict(mesh.shape),
    "devices": mesh.size,
    "global_batch": global_batch,
    "seq_len": seq_len,
    "tokens_per_step": global_batch * seq_len,
    "state_bytes_per_device": state_bytes,
    "state_bytes_replicated": sum(math.prod(x.shape) * x.dtype.itemsize for x in arrays),
    "compiled": memory._asdict(),
    "flops_per_device": aot.compiled_flops(compiled),
    "compile_s": round(time.perf_counter() - start, 1),
    "backend": jax.devices()[0].platform,
  }


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mesh", default="1,64,1", help="data,fsdp,tensor sizes")
  parser.add_argument("--per-device-batch", type=int, default=8)
  parser.add_argument("--seq-len", type=int, default=2048)
  parser.add_argument("--layers", type=int, default=POD_LLAMA.n_layers)
  parser.add_argument("--width", type=int, default=POD_LLAMA.d_model)
  parser.add_argument("--heads", type=int, default=POD_LLAMA.n_heads)
  parser.add_argument("--ff", type=int, default=POD_LLAMA.d_ff)
  parser.add_argument("--vocab", type=int, default=POD_LLAMA.vocab_size)
  parser.add_argument("--json", default=None, help="also write the result here")
  args = parser.parse_args(argv)
  config = dataclasses.replace(
    POD_LLAMA,
    n_layers=args.layers,
    d_model=args.width,
    n_heads=args.heads,
    d_ff=args.ff,
    vocab_size=args.vocab,
    max_len=max(args.seq_len, 1),
  )
  result = measure(config, [int(s) for s in args.mesh.split(",")], args.per_device_batch, args.seq_len)
  text = json.dumps(result, indent=2)
  print(text)
  if args.json:
    with open(args.json, "w") as f:
      f.write(text + "\n")
  return result


if __name__ == "__main__":
  main()
