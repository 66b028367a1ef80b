"""The LM pieces shared by the LM experiments: loss, optimiser, model, mesh, sharded
state, batches.

The optimiser follows the loss-reweighting paper's GPT-2 runs (Sow et al., ICLR
2025): AdamW (configurable b2, weight decay), linear warm-up then cosine decay to
``end_lr``, global gradient clipping.

A config chooses the model (``model_kind``: ``"transformer"`` for
:class:`jaxweights.TransformerLM`, ``"llama"`` for :class:`jaxweights.Llama`, sized
by ``config.model``) and the mesh (``config.mesh``: ``None`` for a data mesh over
every device, or ``dict(data=, fsdp=, tensor=)`` for :func:`jaxweights.make_mesh`).
On a mesh with an ``fsdp`` or ``tensor`` axis the train state is initialised
directly in its sharded layout (each device computes only its shards) and the
step keeps it there; every process builds only its own rows of each batch.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax
from flax import nnx

import jaxweights
from jaxweights import data as jw_data
from jaxweights.runtime import aot


def loss_fn(model: nnx.Module, batch: dict) -> jaxweights.LossOutput:
  """Per-sequence token-mean next-token cross-entropy of ``batch["tokens"]``
  (``[B, seq + 1]``), padding given by ``batch["mask"]``."""
  tokens, mask = batch["tokens"], batch["mask"]
  logits = model(tokens[:, :-1])
  losses, sample_mask = jaxweights.token_mean_cross_entropy(logits, tokens[:, 1:], mask[:, 1:])
  return jaxweights.LossOutput(loss=losses, mask=sample_mask)


def make_schedule(config) -> optax.Schedule:
  """Linear warm-up to ``peak_lr`` over ``lr_warmup_steps``, cosine to ``end_lr``."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=config.peak_lr,
    warmup_steps=config.lr_warmup_steps,
    decay_steps=config.num_steps,
    end_value=config.end_lr,
  )


def make_optimizer(config) -> optax.GradientTransformation:
  """Global-norm clipping then AdamW on :func:`make_schedule`."""
  return optax.chain(
    optax.clip_by_global_norm(config.clip_norm),
    optax.adamw(make_schedule(config), b2=config.b2, weight_decay=config.weight_decay),
  )


def model_config(config, vocab_size: int):
  """The model's config for ``config.model_kind`` with the corpus's vocabulary."""
  kind = config.get("model_kind", "transformer")
  if kind == "transformer":
    return jaxweights.TransformerConfig(vocab_size=vocab_size, max_len=config.seq_len, **config.model)
  if kind == "llama":
    return jaxweights.LlamaConfig(vocab_size=vocab_size, max_len=config.seq_len, **config.model)
  raise ValueError(f"model_kind must be 'transformer' or 'llama', got {kind!r}.")


def make_model(model_cfg, seed: int) -> nnx.Module:
  cls = jaxweights.Llama if isinstance(model_cfg, jaxweights.LlamaConfig) else jaxweights.TransformerLM
  return cls(model_cfg, rngs=nnx.Rngs(seed))


def count_params(model_cfg) -> int:
  """Parameters of the model, counted from shapes (nothing is allocated)."""
  abstract = nnx.eval_shape(lambda: make_model(model_cfg, 0))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def get_mesh(config):
  """``config.mesh`` as a (data, fsdp, tensor) mesh; else a data mesh over all
  devices when there are several (and ``use_mesh``); else None."""
  sizes = config.get("mesh")
  if sizes:
    mesh = jaxweights.make_mesh(**sizes)
  elif config.use_mesh and jax.device_count() > 1:
    mesh = jaxweights.data_mesh()
  else:
    return None
  n = jaxweights.core.sharding.batch_shard_count(mesh)
  for size in (config.batch_size, config.eval_batch_size):
    if size % n:
      raise ValueError(
        f"batch size {size} is not a multiple of the {n} batch shards; change the config or set use_mesh=False."
      )
  return mesh


def sharded(mesh) -> bool:
  """Whether the state is sharded on ``mesh`` (an fsdp or tensor axis > 1)."""
  return mesh is not None and any(mesh.shape.get(a, 1) > 1 for a in ("fsdp", "tensor"))


def state_shardings(model_cfg, optimizer, weighting, mesh):
  """The train state's shardings on ``mesh`` (None when it stays replicated)."""
  if not sharded(mesh):
    return None
  _, _, shardings = aot.abstract_train_state(
    lambda: make_model(model_cfg, 0), optimizer, weighting, mesh=mesh
  )
  return shardings


def init_state(model_cfg, optimizer, weighting, seed: int, mesh, shardings):
  """The initial train state: replicated, or initialised in its sharded layout
  (each device computes only its own shards: a 1B model never sits whole on a host)."""
  if mesh is None:
    return jaxweights.init_train_state(make_model(model_cfg, seed), optimizer, weighting, seed=seed)[1]
  if shardings is None:
    state = jaxweights.init_train_state(make_model(model_cfg, seed), optimizer, weighting, seed=seed)[1]
    return jaxweights.replicate(state, mesh)
  init = jax.jit(
    lambda: jaxweights.init_train_state(make_model(model_cfg, seed), optimizer, weighting, seed=seed)[1],
    out_shardings=shardings,
  )
  with nnx.use_eager_sharding(False):
    return init()


def train_batch(tokens: np.ndarray, *, seed: int, step: int, batch_size: int, seq_len: int, mesh):
  """Batch ``step`` of random windows (:func:`jaxweights.data.lm_batch`); on a mesh
  each process cuts only the windows of its own rows."""
  if mesh is None:
    return jw_data.lm_batch(tokens, seed=seed, step=step, batch_size=batch_size, seq_len=seq_len)
  starts = np.random.default_rng((seed, step)).integers(0, tokens.size - seq_len, size=batch_size)

  def load_rows(rows):
    window = tokens[starts[rows][:, None] + np.arange(seq_len + 1)].astype(np.int32)
    return {"tokens": window, "mask": np.ones(window.shape, bool)}

  return jw_data.process_local_batch(load_rows, np.arange(batch_size), mesh)


def with_dtype(model_cfg, dtype: str):
  return dataclasses.replace(model_cfg, dtype=dtype)
