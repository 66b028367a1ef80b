"""Training the small LMs (the base policy and the "API" embedder) with the shared LM recipe."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

import jaxweights
from experiments import lm_recipe
from experiments.qprobe_arith import task


def train_lm(
  text: task.WorksheetText,
  lm_config,
  *,
  logger: jaxweights.JsonlLogger | None = None,
  log_every: int = 50,
  log: Callable[[str], None] = print,
  name: str = "lm",
):
  """Trains a :class:`~jaxweights.TransformerLM` on worksheet text from scratch.

  The recipe is :mod:`experiments.lm_recipe`'s (the per-sequence token-mean
  loss, AdamW with warm-up and cosine decay, gradient clipping); batches come
  from ``text.batch`` (a pure function of ``(seed, step)``).

  Args:
    text: the worksheet lines.
    lm_config: ``model``, ``seq_len``, ``num_steps``, ``batch_size``, ``seed``
      and the optimiser fields of :func:`experiments.lm_recipe.make_optimizer`.
    logger: where the training loss goes every ``log_every`` steps.
    log_every: logging period.
    log: where the summary line goes.
    name: the model's name in that line.

  Returns:
    ``(model, final mean training loss over the last 10% of steps, parameter count)``.
  """
  model_cfg = lm_recipe.model_config(lm_config, task.VOCAB_SIZE)
  lm = lm_recipe.make_model(model_cfg, lm_config.seed)
  tx = lm_recipe.make_optimizer(lm_config)
  graphdef, state = jaxweights.init_train_state(lm, tx, seed=lm_config.seed)
  step = jaxweights.make_train_step(graphdef, lm_recipe.loss_fn, tx)
  t0 = time.perf_counter()
  losses = []
  steps = lm_config.num_steps
  for i in range(steps):
    batch = text.batch(seed=lm_config.seed, step=i, batch_size=lm_config.batch_size)
    state, metrics = step(state, batch)
    losses.append(metrics["loss_mean"])
    if logger is not None and ((i + 1) % log_every == 0 or i + 1 == steps):
      logger.log({"step": i + 1, "loss_mean": float(metrics["loss_mean"])})
  losses = np.asarray(jax.device_get(losses))
  tail = float(losses[-max(1, steps // 10) :].mean()) if steps else float("nan")
  n_params = lm_recipe.count_params(model_cfg)
  log(f"  {name}: {n_params} params, {steps} steps, final loss {tail:.3f} ({time.perf_counter() - t0:.1f}s)")
  return nnx.merge(graphdef, state.params, state.model_vars), tail, n_params
