"""A thin Weighting wrapper that accumulates, in its state, the weight mass each row kind got.

The wrapper measures the weights the step actually used: it wraps ``update``
(the ordinary path) and ``gradient`` (PRESENCE's one-backward book-keeping
override, whose :class:`jaxweights.GradientOutput` carries the weights), so
whichever path the step takes, the same per-sample weights are accounted.

State: ``{"inner": the wrapped weighting's state, "mass": float32 [2, K],
"share": float32 [2, K]}``. Row ``s`` is the stage (0: steps < ``switch_step``,
1: the rest); ``mass[s, k]`` sums, over the stage's steps, the weight of the
valid rows of kind ``k`` (the weights sum to 1 per step); ``share[s, k]`` sums
the kind's fraction of the valid rows, i.e. the mass uniform weights would have
given it. ``mass / share`` is the relative mass (1 = as much as uniform).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jaxweights
from jaxweights.core.reductions import gsum


def _account(acc, weights, mask, kind, step, switch_step, n_kinds, axis_name):
  onehot = ((kind[:, None] == jnp.arange(n_kinds)[None, :]) & mask[:, None]).astype(jnp.float32)
  w = jnp.where(mask, weights, 0.0).astype(jnp.float32)
  mass = jnp.stack([gsum(w * onehot[:, k], axis_name) for k in range(n_kinds)])
  counts = jnp.stack([gsum(onehot[:, k], axis_name) for k in range(n_kinds)])
  share = counts / jnp.maximum(jnp.sum(counts), 1.0)
  stage = (jnp.arange(2) == (step >= switch_step).astype(jnp.int32))[:, None]
  return {
    "mass": acc["mass"] + jnp.where(stage, mass[None, :], 0.0),
    "share": acc["share"] + jnp.where(stage, share[None, :], 0.0),
  }


def track_kinds(
  inner: jaxweights.Weighting, *, switch_step: int, n_kinds: int = 4, kind_key: str = "kind"
) -> jaxweights.Weighting:
  """``inner`` plus per-kind, per-stage weight-mass accumulators in the state.

  Args:
    inner: the weighting to measure.
    switch_step: first step of stage 1 (stage 0 before it).
    n_kinds: row kinds are ``0 .. n_kinds - 1`` in ``batch[kind_key]``.
    kind_key: the batch entry with each row's kind.
  """

  def init():
    zeros = jnp.zeros((2, n_kinds), jnp.float32)
    return {"inner": inner.init(), "mass": zeros, "share": zeros}

  def account(state, weights, mask, batch, step, axis_name):
    acc = _account(state, weights, mask, batch[kind_key], step, switch_step, n_kinds, axis_name)
    return acc

  def update(inputs: jaxweights.WeightInputs, state):
    w, inner_state = inner.update(inputs, state["inner"])
    acc = account(state, w, inputs.mask, inputs.batch, inputs.step, inputs.axis_name)
    return w, {"inner": inner_state, **acc}

  prepare = None
  if inner.prepare is not None:

    def prepare(ctx: jaxweights.PrepareContext):
      return inner.prepare(ctx._replace(state=ctx.state["inner"]))

  gradient = None
  if inner.gradient is not None:

    def gradient(ctx: jaxweights.GradientContext):
      out = inner.gradient(ctx._replace(state=ctx.state["inner"]))
      if out is None:  # declined: the step calls update, which accounts
        return None
      acc = account(ctx.state, out.weights, out.mask, ctx.batch, ctx.step, ctx.axis_name)
      return out._replace(state={"inner": out.state, **acc})

  return jaxweights.Weighting(init=init, update=update, prepare=prepare, gradient=gradient)


def mass_metrics(weighting_state, kinds) -> dict[str, jax.Array]:
  """Scalar entries ``mass_s<stage>_<kind>`` and ``share_s<stage>_<kind>`` (cumulative)."""
  out = {}
  for s in range(2):
    for k, name in enumerate(kinds):
      out[f"mass_s{s}_{name}"] = weighting_state["mass"][s, k]
      out[f"share_s{s}_{name}"] = weighting_state["share"][s, k]
  return out
