"""Offline TracIn self-influence of a fixed pool of training rows, and where injected rows rank.

``tracin_self_influence`` sums ``eta_c ||grad l(z; theta_c)||^2`` over the saved
checkpoints ``c``; the per-checkpoint terms (``self_influence``) tell whether
injected rows have larger or smaller gradient norms than clean rows at each
point of training, which is what PRESENCE's per-batch z-score reacts to.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxweights
from experiments.presence_lm.inject import CLEAN, KINDS
from jaxweights import grad_norms


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
  """P(score of a positive > score of a negative), ties counted one half."""
  p = np.asarray(positive, np.float64)[:, None]
  n = np.asarray(negative, np.float64)[None, :]
  return float(np.mean((p > n) + 0.5 * (p == n)))


def top_shares(scores: np.ndarray, kinds: np.ndarray, fraction: float = 0.1) -> dict[str, float]:
  """Of the top ``fraction`` of rows by score, the share of each kind."""
  n_top = max(1, int(round(fraction * scores.size)))
  top = np.argsort(-scores, kind="stable")[:n_top]
  return {KINDS[k]: float(np.mean(kinds[top] == k)) for k in range(len(KINDS))}


def rank_metrics(scores: np.ndarray, kinds: np.ndarray, prefix: str) -> dict[str, float]:
  """AUROC of each injected kind vs clean and each kind's share of the top decile."""
  clean = scores[kinds == CLEAN]
  out = {}
  for k, name in enumerate(KINDS):
    if k == CLEAN:
      continue
    out[f"{prefix}auroc_{name}"] = auroc(scores[kinds == k], clean)
  injected = kinds != CLEAN
  out[f"{prefix}auroc_injected"] = auroc(scores[injected], clean)
  shares = top_shares(scores, kinds)
  for name, share in shares.items():
    out[f"{prefix}top10_{name}"] = share
  out[f"{prefix}top10_injected"] = 1.0 - shares["clean"]
  return out


class Scorer:
  """Current-parameter self-influence and output-layer diagnostics, compiled once.

  (:func:`jaxweights.families.self_influence.presence.self_influence` compiles a fresh function per
  call; scoring several checkpoints of several runs with one compiled function
  saves a compilation per checkpoint.)
  """

  def __init__(self, loss_fn, **norm_kwargs):
    self.loss_fn, self.norm_kwargs = loss_fn, norm_kwargs

    @functools.partial(jax.jit, static_argnums=0)
    def norms(graphdef, state, batch):
      return grad_norms.per_sample_grad_norms(loss_fn, nnx.merge(graphdef, state), batch, **norm_kwargs).total

    self._norms = norms
    self._diag = head_diagnostics_fn()

  def self_influence(self, model, batches) -> np.ndarray:
    """``||grad l(z)||^2`` of every row of ``batches`` (padding rows included)."""
    graphdef, state = nnx.split(model)
    return np.concatenate([np.asarray(self._norms(graphdef, state, b), np.float64) for b in batches])

  def diagnostics(self, model, batches, n) -> dict[str, np.ndarray]:
    return head_diagnostics(self._diag, model, batches, n)


def tracin_metrics(
  scorer: Scorer,
  models: Sequence,
  learning_rates: Sequence[float],
  batches: Sequence[dict],
  kinds: np.ndarray,
  *,
  checkpoint_steps,
  check_library: bool = False,
) -> dict[str, float]:
  """TracIn ranking metrics plus per-checkpoint gradient-norm comparisons by kind.

  Args:
    scorer: the compiled scoring functions.
    models: the checkpoints' models.
    learning_rates: the schedule's learning rate at each checkpoint.
    batches: the scoring pool as equal batches (padding rows last).
    kinds: ``[n]`` kind of each real row (padding excluded).
    checkpoint_steps: the checkpoints' steps (for the metric names).
    check_library: also compute the TracIn scores with
      :func:`jaxweights.tracin_self_influence` and check that they agree.

  Returns:
    ``tracin_auroc_<kind>`` / ``tracin_top10_<kind>`` for the TracIn score
    ``sum_c eta_c ||grad l(z; theta_c)||^2``, and per checkpoint
    ``ck<step>_auroc_<kind>`` (current-parameter self-influence, PRESENCE's
    score), ``ck<step>_normratio_<kind>`` (the kind's median squared gradient
    norm over the clean rows'), ``ck<step>_tokgrad_<kind>`` and
    ``ck<step>_coherence_<kind>`` (see :func:`head_diagnostics_fn`).
  """
  n = kinds.size
  per_ckpt = [scorer.self_influence(m, batches)[:n] for m in models]
  scores = sum(lr * s for lr, s in zip(learning_rates, per_ckpt))
  if check_library:
    lib = jaxweights.tracin_self_influence(
      scorer.loss_fn, list(models), list(learning_rates), batches, **scorer.norm_kwargs
    )[:n]
    np.testing.assert_allclose(
      scores, lib, rtol=1e-4, atol=1e-6 * float(np.max(lib)), err_msg="TracIn: per-checkpoint sum != library"
    )
  out = rank_metrics(scores, kinds, "tracin_")
  clean = kinds == CLEAN
  for step, model, s in zip(checkpoint_steps, models, per_ckpt):
    ref = float(np.median(s[clean]))
    for k, name in enumerate(KINDS):
      if k == CLEAN:
        continue
      out[f"ck{step}_auroc_{name}"] = auroc(s[kinds == k], s[clean])
      out[f"ck{step}_normratio_{name}"] = float(np.median(s[kinds == k])) / max(ref, 1e-30)
    diag = scorer.diagnostics(model, batches, n)
    tok_ref = float(np.median(diag["token_grad"][clean]))
    for k, name in enumerate(KINDS):
      out[f"ck{step}_coherence_{name}"] = float(np.median(diag["coherence"][kinds == k]))
      if k != CLEAN:
        out[f"ck{step}_tokgrad_{name}"] = float(np.median(diag["token_grad"][kinds == k])) / max(
          tok_ref, 1e-30
        )
  return out


def head_diagnostics_fn():
  """A jitted ``f(graphdef, state, batch) -> (token_grad, coherence, head_sq_norm)`` per row.

  For the output layer (``head``, kernel and bias) of a
  :class:`jaxweights.TransformerLM` and a row's token-mean cross-entropy, the
  gradient is ``sum_t a_t g_t^T`` (plus ``sum_t g_t`` for the bias) with
  ``a_t`` the final hidden state and ``g_t = (softmax(z_t) - e_{y_t}) / T``.
  Returns:

  * ``token_grad``: ``mean_t ||softmax(z_t) - e_{y_t}||^2``, the per-token
    gradient size at the logits (large when the targets are unpredictable);
  * ``coherence``: the row's exact squared head-gradient norm over its
    "diagonal" part ``sum_t (||a_t||^2 + 1) ||g_t||^2``, i.e. how much the
    per-token gradients add up (1: they cancel on average, as for unrelated
    directions; up to T: all aligned).
  """

  @functools.partial(jax.jit, static_argnums=0)
  def diagnostics(graphdef, state, batch):
    model = nnx.merge(graphdef, state)
    tokens, mask = batch["tokens"], batch["mask"]
    inputs, targets, valid = tokens[:, :-1], tokens[:, 1:], mask[:, 1:].astype(jnp.float32)
    b, t = inputs.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    x = model.tok(inputs) + model.pos(positions)
    for block in model.blocks:
      x = block(x)
    a = model.ln_f(x).astype(jnp.float32)
    logits = model.head(a).astype(jnp.float32)
    err = jax.nn.softmax(logits) - jax.nn.one_hot(targets, logits.shape[-1])
    err = err * valid[..., None]
    n_tok = jnp.maximum(valid.sum(1), 1.0)
    g = err / n_tok[:, None, None]
    gram_a = jnp.einsum("btd,bsd->bts", a, a) + 1.0  # + 1: the bias
    gram_g = jnp.einsum("btv,bsv->bts", g, g)
    exact = jnp.sum(gram_a * gram_g, axis=(1, 2))
    diag = jnp.sum(jnp.diagonal(gram_a, axis1=1, axis2=2) * jnp.diagonal(gram_g, axis1=1, axis2=2), 1)
    token_grad = jnp.sum(jnp.sum(err**2, -1), 1) / n_tok
    return token_grad, exact / jnp.maximum(diag, 1e-30), exact

  return diagnostics


def head_diagnostics(fn, model, batches, n) -> dict[str, np.ndarray]:
  graphdef, state = nnx.split(model)
  tg, co, _ = zip(*[jax.device_get(fn(graphdef, state, b)) for b in batches])
  return {
    "token_grad": np.concatenate(tg)[:n].astype(np.float64),
    "coherence": np.concatenate(co)[:n].astype(np.float64),
  }
