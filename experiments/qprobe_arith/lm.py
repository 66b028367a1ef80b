"""Training the small arithmetic LMs (the base policy and the "API" embedder)."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np
import optax
from flax import nnx

import jaxweights
from experiments.qprobe_arith import task


def lm_loss(model, batch) -> jaxweights.LossOutput:
  """Mean cross-entropy over the answer tokens (and the end token) of each row."""
  tokens = batch["tokens"]
  losses, mask = jaxweights.token_mean_cross_entropy(
    model(tokens[:, :-1]), tokens[:, 1:], batch["mask"][:, 1:]
  )
  return jaxweights.LossOutput(losses, mask)


def train_lm(
  text: task.WorksheetText,
  *,
  model: dict,
  max_len: int,
  steps: int,
  batch_size: int,
  learning_rate: float,
  warmup_steps: int,
  seed: int,
  logger: jaxweights.JsonlLogger | None = None,
  log_every: int = 50,
  log: Callable[[str], None] = print,
  name: str = "lm",
):
  """Trains a :class:`~jaxweights.TransformerLM` on worksheet text from scratch.

  AdamW (weight decay 0.01), linear warm-up then cosine decay to 10% of the
  peak, gradient clipping at 1.0; batches from ``text.batch`` (a pure function
  of ``(seed, step)``).

  Returns:
    ``(model, final mean training loss over the last 10% of steps)``.
  """
  cfg = jaxweights.TransformerConfig(vocab_size=task.VOCAB_SIZE, max_len=max_len, **model)
  lm = jaxweights.TransformerLM(cfg, rngs=nnx.Rngs(seed))
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, learning_rate, warmup_steps, max(steps, warmup_steps + 1), learning_rate / 10
  )
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
  graphdef, state = jaxweights.init_train_state(lm, tx, seed=seed)
  step = jaxweights.make_train_step(graphdef, lm_loss, tx)
  t0 = time.perf_counter()
  losses = []
  for i in range(steps):
    state, metrics = step(state, text.batch(seed=seed, step=i, batch_size=batch_size))
    losses.append(metrics["loss_mean"])
    if logger is not None and ((i + 1) % log_every == 0 or i + 1 == steps):
      logger.log({"step": i + 1, "loss_mean": float(metrics["loss_mean"])})
  losses = np.asarray(jax.device_get(losses))
  tail = float(losses[-max(1, steps // 10) :].mean()) if steps else float("nan")
  log(
    f"  {name}: {jaxweights.count_params(lm)} params, {steps} steps, final loss "
    f"{tail:.3f} ({time.perf_counter() - t0:.1f}s)"
  )
  return nnx.merge(graphdef, state.params, state.model_vars), tail
