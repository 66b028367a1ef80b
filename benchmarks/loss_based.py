"""Benchmark cases for loss-based reweighting (Sow et al., ICLR 2025).

The weights are a min-max normalisation and a softmax over ``[batch]`` detached
losses: O(batch) scalar work next to a full forward and backward pass, so the
weighted step should cost what the plain step costs.

* ``loss_based/lm_step``: ``TransformerLM(TransformerConfig.small())`` (4 layers
  x 256, vocab 4096), batch 32 x 256 tokens, AdamW, per-sequence token-mean
  cross-entropy. Target (from the issue): <= 1.03x plain step time and <= 1.01x
  plain peak memory.
* ``loss_based/mlp_step``: MLP 64 -> 256 -> 256 -> 10, batch 256, per-sample
  cross-entropy, AdamW. A step this small shows the fixed cost of the weight
  computation; it has no target.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxweights
from benchmarks.harness import Case, Setup

METHODS: tuple[str, ...] = ("linupper", "quadratic", "extremes")
TEMPERATURE = 1.0
LEARNING_RATE = 3e-4


def _steps(graphdef, loss_fn, tx):
  plain = jaxweights.make_train_step(graphdef, loss_fn, tx, weighting=None)
  weighted = {
    m: jaxweights.make_train_step(
      graphdef, loss_fn, tx, weighting=jaxweights.loss_based.WEIGHTINGS[m](r=TEMPERATURE)
    )
    for m in METHODS
  }
  return plain, weighted


def _lm_loss(model, batch):
  logits = model(batch["inputs"])
  loss, mask = jaxweights.token_mean_cross_entropy(logits, batch["targets"])
  return jaxweights.LossOutput(loss, mask)


def build_lm(quick: bool) -> Setup:
  """The loss-weighted LM step (tiny model, batch 8 x 32 when ``quick``)."""
  if quick:
    cfg, batch_size, seq_len, size = jaxweights.TransformerConfig.tiny(), 8, 32, "tiny"
  else:
    cfg, batch_size, seq_len, size = jaxweights.TransformerConfig.small(), 32, 256, "small"
  model = jaxweights.TransformerLM(cfg, rngs=nnx.Rngs(0))
  n_params = jaxweights.count_params(model)
  tx = optax.adamw(LEARNING_RATE)
  graphdef, state = jaxweights.init_train_state(model, tx)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
  batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}
  plain, weighted = _steps(graphdef, _lm_loss, tx)
  model_name = (
    f"TransformerLM {size} ({cfg.n_layers}x{cfg.d_model}, vocab {cfg.vocab_size}, "
    f"{n_params / 1e6:.2f}M params)"
  )
  return Setup(plain, weighted, state, batch, model_name, f"{batch_size}x{seq_len} tokens")


def _mlp_loss(model, batch):
  return jaxweights.LossOutput(jaxweights.cross_entropy(model(batch["x"]), batch["y"]))


def build_mlp(quick: bool) -> Setup:
  """The MLP step (already small: ``quick`` changes nothing)."""
  del quick
  in_features, hidden, classes, batch_size = 64, (256, 256), 10, 256
  model = jaxweights.MLP(in_features, hidden, classes, rngs=nnx.Rngs(0))
  n_params = jaxweights.count_params(model)
  tx = optax.adamw(LEARNING_RATE)
  graphdef, state = jaxweights.init_train_state(model, tx)
  rng = np.random.default_rng(0)
  batch = {
    "x": jnp.asarray(rng.standard_normal((batch_size, in_features), np.float32)),
    "y": jnp.asarray(rng.integers(0, classes, (batch_size,), dtype=np.int32)),
  }
  plain, weighted = _steps(graphdef, _mlp_loss, tx)
  sizes = "->".join(str(s) for s in (in_features, *hidden, classes))
  model_name = f"MLP {sizes} ({n_params / 1e3:.1f}k params)"
  return Setup(plain, weighted, state, batch, model_name, f"{batch_size} samples")


CASES: list[Case] = [
  Case(
    "loss_based/lm_step",
    build_lm,
    target_time_ratio=1.03,
    target_memory_ratio=1.01,
  ),
  Case("loss_based/mlp_step", build_mlp),
]
