"""Q-probe (Li et al., ICML 2024): softmax reweighting of k sampled completions.

A probe ``Q(x, a) = theta^T phi(x, a) + b`` on embeddings ``phi`` of (prompt,
completion) pairs; at inference ``k`` completions ``a_1..a_k ~ pi_base(.|x)``
are drawn and one is selected with probability

    p_i = softmax(Q(x, a_i) / beta)    over the k candidates of the prompt,

the argmax at ``beta = 0``. The weights ``p`` are ``>= 0``, sum to 1 over each
prompt's real candidates and are under ``stop_gradient``
(:func:`qprobe_weights`). As ``k -> inf`` the selection distribution tends to
``pi_base(a|x) exp(Q / beta) / Z``, the maximiser of
``E[Q] - beta KL(pi || pi_base)`` (:func:`tilted_distribution`).

Array conventions: candidates are grouped per prompt as ``[prompts, k, ...]``;
a boolean ``mask [prompts, k]`` marks real candidates (prompts may have fewer).

Training objectives (per-sample / per-group losses for the composition layer):
``mse_loss`` (L_Q), ``bce_loss`` (L_CE), ``pg_loss`` (L_PG: one prompt's group,
reward minus a constant baseline, softmax over the group), ``bradley_terry_loss``
and ``hinge_loss`` for preference pairs. :func:`train_probe` trains a probe with
AdamW through :func:`jaxweights.make_train_step`, re-forming the PG groups every
epoch, never mixing prompts within a group.

References:
  Li, Jelassi, Zhang, Kakade, Wattenberg, Brandfonbrener. "Q-Probe: A
  Lightweight Approach to Reward Maximization for Language Models." ICML 2024.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxweights.core.reductions import concrete_scalar
from jaxweights.core.step import LossOutput, init_train_state, make_train_step

#: The probe's training objective (see :func:`train_probe`).
Objective = Literal["mse", "ce", "pg", "bt", "hinge"]


class Probe(nnx.Module):
  """``Q(phi) = theta^T phi + b`` (``hidden=()``) or an MLP: ``[..., d] -> [...]``.

  Args:
    features: the embedding size ``d``.
    hidden: hidden layer sizes of a ReLU MLP probe (default: linear).
    rngs: the initialisation PRNG streams.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxweights as jw
    >>> probe = jw.Probe(4, rngs=nnx.Rngs(0))
    >>> probe(jnp.ones((2, 3, 4))).shape  # [prompts, k, d] -> [prompts, k]
    (2, 3)
  """

  def __init__(self, features: int, hidden: Sequence[int] = (), *, rngs: nnx.Rngs):
    sizes = [features, *hidden, 1]
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

  def __call__(self, phi: jax.Array) -> jax.Array:
    """Probe values of embeddings.

    Args:
      phi: ``[..., d]`` embeddings, e.g. ``[prompts, k, d]``.

    Returns:
      ``[...]`` probe values ``Q``.
    """
    x = phi
    for layer in self.layers[:-1]:
      x = jax.nn.relu(layer(x))
    return self.layers[-1](x)[..., 0]


# --- selection ---------------------------------------------------------------------------


def _check_groups(q, mask, name="q"):
  q = jnp.asarray(q)
  if q.ndim != 2:
    raise ValueError(f"{name} must be [prompts, k], got shape {q.shape}.")
  if not jnp.issubdtype(q.dtype, jnp.floating):
    raise TypeError(f"{name} must be floating point, got dtype {q.dtype}.")
  if q.shape[1] < 2:
    raise ValueError(f"need k >= 2 candidates per prompt to reweight, got k = {q.shape[1]}.")
  mask = jnp.ones(q.shape, bool) if mask is None else jnp.asarray(mask, bool)
  if mask.shape != q.shape:
    raise ValueError(f"mask shape {mask.shape} does not match {name} {q.shape}.")
  return q, mask


def _check_beta(beta):
  """``0 <= beta < inf``: a concrete value raises otherwise (numpy and jax scalars
  included); a traced negative or NaN beta is treated as 0 (argmax), never as a
  selection of the worst candidate."""
  value = concrete_scalar(beta, "beta")
  if value is not None and not 0 <= value < float("inf"):
    raise ValueError(f"beta must be >= 0 (0 = argmax), got {value}.")
  return value


def qprobe_weights(
  q: jax.Array, beta: jax.typing.ArrayLike = 0.1, mask: jax.Array | None = None
) -> jax.Array:
  """``softmax(q / beta)`` over each prompt's candidates; one-hot argmax at ``beta = 0``.

  Candidates with a non-finite ``q`` are treated as masked. A traced ``beta``
  that is negative or NaN gives the argmax, as ``beta = 0`` does.

  Args:
    q: ``[prompts, k]`` float probe values, ``k >= 2``.
    beta: temperature ``>= 0`` (0: argmax), a Python, numpy or jax scalar, or traced.
    mask: optional ``[prompts, k]`` booleans marking the real candidates.

  Returns:
    ``[prompts, k]`` float32 weights under ``stop_gradient``, ``>= 0``, summing
    to 1 over each prompt's real candidates (all 0 for a prompt with none).

  Raises:
    ValueError: ``q`` is not ``[prompts, k >= 2]``, ``mask`` has another shape,
      or a concrete ``beta`` is negative, infinite or NaN.
    TypeError: ``q`` is not floating point.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> q = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    >>> mask = jnp.array([[True, True, True], [True, True, False]])
    >>> w = jw.qprobe_weights(q, beta=1.0, mask=mask)
    >>> w.shape, [round(float(x), 4) for x in w.sum(axis=1)]
    ((2, 3), [1.0, 1.0])
    >>> [round(float(x), 4) for x in w[1]]
    [0.5, 0.5, 0.0]
    >>> jw.qprobe_weights(q, beta=0.0)[0].tolist()  # argmax
    [0.0, 0.0, 1.0]
  """
  q, mask = _check_groups(q, mask)
  value = _check_beta(beta)
  q = jax.lax.stop_gradient(q.astype(jnp.float32))
  mask = mask & jnp.isfinite(q)
  idx = jnp.argmax(jnp.where(mask, q, -jnp.inf), axis=1)
  argmax = jax.nn.one_hot(idx, q.shape[1]) * mask.any(axis=1, keepdims=True)
  if value == 0:
    return argmax
  b = jnp.asarray(beta, jnp.float32)
  positive = b > 0  # a traced beta <= 0 or NaN: argmax, as beta = 0
  big = jnp.finfo(jnp.float32).max
  z = jnp.where(mask, jnp.clip(q / jnp.where(positive, b, 1.0), -big, big), -jnp.inf)
  top = jnp.max(z, axis=1, keepdims=True)
  e = jnp.where(mask, jnp.exp(z - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
  s = e.sum(axis=1, keepdims=True)
  soft = jnp.where(s > 0, e / jnp.where(s > 0, s, 1.0), 0.0)
  return soft if value is not None else jnp.where(positive, soft, argmax)


def select(
  key: jax.Array, q: jax.Array, beta: jax.typing.ArrayLike = 0.1, mask: jax.Array | None = None
) -> jax.Array:
  """Draws one candidate index per prompt from :func:`qprobe_weights` -> ``[prompts]``.

  Args:
    key: PRNG key.
    q: ``[prompts, k]`` float probe values.
    beta: temperature ``>= 0`` (0: the argmax).
    mask: optional ``[prompts, k]`` booleans marking the real candidates.

  Returns:
    ``[prompts]`` int32 indices into the ``k`` candidates.

  Raises:
    ValueError: as :func:`qprobe_weights`.
    TypeError: ``q`` is not floating point.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> q = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    >>> jw.q_probe.select(jax.random.key(0), q, beta=0.0).tolist()
    [2, 0]
    >>> jw.q_probe.select(jax.random.key(0), q, beta=1.0).shape
    (2,)
  """
  w = qprobe_weights(q, beta, mask)
  return jax.random.categorical(key, jnp.log(jnp.maximum(w, 1e-30)), axis=1)


def expected_reward(
  q: jax.Array, rewards: jax.Array, beta: jax.typing.ArrayLike = 0.1, mask: jax.Array | None = None
) -> jax.Array:
  """The exact expected reward ``sum_i p_i r_i`` per prompt -> ``[prompts]``.

  Candidates with ``p_i = 0`` (masked, NaN probe value) are ignored; a NaN/inf
  reward of a selectable candidate propagates to that prompt's value.

  Args:
    q: ``[prompts, k]`` float probe values.
    rewards: ``[prompts, k]`` rewards of the candidates.
    beta: temperature ``>= 0`` (0: the argmax's reward).
    mask: optional ``[prompts, k]`` booleans marking the real candidates.

  Returns:
    ``[prompts]`` float32 expected rewards under :func:`qprobe_weights`.

  Raises:
    ValueError: ``rewards`` has another shape than ``q``, or as :func:`qprobe_weights`.
    TypeError: as :func:`qprobe_weights`.
  """
  q, mask = _check_groups(q, mask)
  rewards = jnp.asarray(rewards)
  if rewards.shape != q.shape:
    raise ValueError(f"rewards shape {rewards.shape} does not match q {q.shape}.")
  rewards = rewards.astype(jnp.float32)
  w = qprobe_weights(q, beta, mask)
  # A candidate that cannot be selected contributes nothing, even a NaN reward;
  # a non-finite reward of a selectable candidate propagates (bad data is not hidden).
  return jnp.sum(jnp.where(w > 0, w * rewards, 0.0), axis=1)


def tilted_distribution(log_pi_base: jax.Array, q: jax.Array, beta: float) -> jax.Array:
  """``pi_base exp(q / beta) / Z`` over a discrete action set (the k -> inf limit).

  Args:
    log_pi_base: ``[..., A]`` log-probabilities of the base policy.
    q: ``[..., A]`` probe values of the actions.
    beta: temperature ``> 0``.

  Returns:
    ``[..., A]`` probabilities summing to 1 over the last axis.

  Raises:
    ValueError: ``beta <= 0`` or NaN.
  """
  if not beta > 0:
    raise ValueError(f"beta must be > 0 for the tilted distribution, got {beta}.")
  return jax.nn.softmax(jnp.asarray(log_pi_base) + jnp.asarray(q) / beta)


# --- objectives --------------------------------------------------------------------------


def mse_loss(q: jax.Array, r: jax.Array) -> jax.Array:
  """L_Q per sample: ``(Q - r)^2``.

  Args:
    q: ``[N]`` probe values.
    r: ``[N]`` rewards.

  Returns:
    ``[N]`` squared errors.
  """
  return jnp.square(q - r)


def bce_loss(q: jax.Array, r: jax.Array) -> jax.Array:
  """L_CE per sample: ``BCE(sigmoid(Q), r)``.

  Args:
    q: ``[N]`` probe values (logits).
    r: ``[N]`` rewards in ``[0, 1]`` (targets).

  Returns:
    ``[N]`` binary cross-entropies.
  """
  return optax.sigmoid_binary_cross_entropy(q, r)


def pg_loss(
  q: jax.Array, r: jax.Array, *, baseline: float = 0.0, beta: float = 1.0, mask: jax.Array | None = None
) -> jax.Array:
  """L_PG per group: ``-sum_i softmax(Q / beta)_i (r_i - baseline)``.

  Args:
    q: ``[groups, k]`` probe values of k samples of ONE prompt per group.
    r: ``[groups, k]`` rewards.
    baseline: a constant ``c``; it changes the loss value, not its gradient
      (the softmax weights sum to 1).
    beta: training temperature (the paper trains at 1).
    mask: optional ``[groups, k]``.

  Returns:
    ``[groups]`` losses (differentiable wrt ``q``).

  Raises:
    ValueError: ``q`` is not ``[groups, k >= 2]``, ``mask`` has another shape,
      or ``beta <= 0``.
    TypeError: ``q`` is not floating point.
  """
  q, mask = _check_groups(q, mask)
  if not beta > 0:
    raise ValueError(f"beta must be > 0, got {beta}.")
  logits = jnp.where(mask, q / beta, -jnp.inf)
  p = jax.nn.softmax(logits, axis=1)
  return -jnp.sum(jnp.where(mask, p * (r - baseline), 0.0), axis=1)


def bradley_terry_loss(q_chosen: jax.Array, q_rejected: jax.Array) -> jax.Array:
  """``-log sigmoid(Q_w - Q_l)`` per pair.

  Args:
    q_chosen: ``[P]`` probe values of the preferred completions.
    q_rejected: ``[P]`` probe values of the rejected ones.

  Returns:
    ``[P]`` losses.
  """
  return -jax.nn.log_sigmoid(q_chosen - q_rejected)


def hinge_loss(q_chosen: jax.Array, q_rejected: jax.Array, margin: float = 1.0) -> jax.Array:
  """``max(0, margin - (Q_w - Q_l))`` per pair.

  Args:
    q_chosen: ``[P]`` probe values of the preferred completions.
    q_rejected: ``[P]`` probe values of the rejected ones.
    margin: the margin the preferred one should win by.

  Returns:
    ``[P]`` losses.
  """
  return jax.nn.relu(margin - (q_chosen - q_rejected))


# --- groups and training -------------------------------------------------------------------


def pg_groups(prompt_ids: jax.typing.ArrayLike, group_size: int, *, seed: int, epoch: int) -> np.ndarray:
  """Disjoint groups of ``group_size`` samples, each from ONE prompt, re-permuted per epoch.

  Args:
    prompt_ids: ``[N]`` the prompt each sample belongs to.
    group_size: samples per group (>= 2).
    seed: the permutation seed.
    epoch: the epoch; the permutation is a pure function of ``(seed, epoch)``.

  Returns:
    ``[groups, group_size]`` int64 sample indices; a prompt's leftover samples
    (fewer than ``group_size``) sit out this epoch.

  Raises:
    ValueError: a prompt has fewer than ``group_size`` samples, or group_size < 2.
  """
  prompt_ids = np.asarray(prompt_ids)
  if group_size < 2:
    raise ValueError(f"group_size must be >= 2, got {group_size}.")
  rng = np.random.default_rng((seed, epoch))
  groups = []
  for p in np.unique(prompt_ids):
    idx = np.flatnonzero(prompt_ids == p)
    if len(idx) < group_size:
      raise ValueError(f"prompt {p} has {len(idx)} samples, fewer than group_size={group_size}.")
    idx = rng.permutation(idx)
    n = len(idx) // group_size * group_size
    groups.append(idx[:n].reshape(-1, group_size))
  groups = np.concatenate(groups)
  return groups[rng.permutation(len(groups))]


class ProbeResult(NamedTuple):
  """What :func:`train_probe` returns.

  Attributes:
    probe: the trained :class:`Probe`.
    history: the mean training loss of each epoch.
  """

  probe: Probe
  history: list[float]


def train_probe(
  features: jax.typing.ArrayLike,
  rewards: jax.typing.ArrayLike,
  prompt_ids: jax.typing.ArrayLike | None = None,
  *,
  objective: Objective = "pg",
  pairs: jax.typing.ArrayLike | None = None,
  hidden: Sequence[int] = (),
  epochs: int = 150,
  learning_rate: float = 5e-5,
  weight_decay: float = 0.0,
  batch_size: int = 1000,
  group_size: int = 10,
  baseline: float = 0.0,
  train_beta: float = 1.0,
  seed: int = 0,
) -> ProbeResult:
  """Trains a probe with AdamW through the composition layer.

  Args:
    features: ``[N, d]`` embeddings.
    rewards: ``[N]`` rewards (``{0, 1}`` for MSE/CE; any real for PG).
    prompt_ids: ``[N]``; required for ``"pg"``.
    objective: ``"mse"``, ``"ce"``, ``"pg"``, ``"bt"`` or ``"hinge"``.
    pairs: ``[P, 2]`` (chosen, rejected) indices for ``"bt"``/``"hinge"``.
    hidden: hidden sizes for an MLP probe (default: linear).
    epochs: passes over the data (PG groups re-formed every epoch).
    learning_rate: AdamW's learning rate.
    weight_decay: AdamW's weight decay, applied as given (the authors' code
      passes it under a misspelt argument name, so their runs used AdamW's
      default of 0.01 whatever was asked).
    batch_size: samples per step (groups per step = batch_size // group_size).
    group_size: PG group size.
    baseline: PG's constant baseline.
    train_beta: PG's training temperature.
    seed: initialisation and shuffling.

  Returns:
    A :class:`ProbeResult`: the trained probe and the mean training loss per epoch.

  Raises:
    ValueError: ``features`` not ``[N, d]`` or not finite, ``rewards`` not
      ``[N]``, an unknown ``objective``, ``epochs`` or ``batch_size < 1``,
      ``"pg"`` without ``prompt_ids`` (or a prompt with fewer than
      ``group_size`` samples), or ``"bt"``/``"hinge"`` without ``pairs``.
  """
  features = np.asarray(features, np.float32)
  rewards = np.asarray(rewards, np.float32)
  if features.ndim != 2 or rewards.shape != features.shape[:1]:
    raise ValueError(f"expected features [N, d] and rewards [N], got {features.shape}, {rewards.shape}.")
  if not np.isfinite(features).all():
    raise ValueError("features contain NaN or inf.")
  if objective not in ("mse", "ce", "pg", "bt", "hinge"):
    raise ValueError(f"unknown objective {objective!r}.")
  if epochs < 1 or batch_size < 1:
    raise ValueError("epochs and batch_size must be >= 1.")
  probe = Probe(features.shape[1], hidden, rngs=nnx.Rngs(seed))
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)
  graphdef, state = init_train_state(probe, tx, seed=seed)

  if objective in ("mse", "ce"):
    per = mse_loss if objective == "mse" else bce_loss
    loss_fn = lambda m, b: LossOutput(per(m(b["x"]), b["r"]), b["mask"])
    units = np.arange(len(features))[:, None]
  elif objective == "pg":
    if prompt_ids is None:
      raise ValueError("objective='pg' needs prompt_ids.")
    loss_fn = lambda m, b: LossOutput(
      pg_loss(m(b["x"]), b["r"], baseline=baseline, beta=train_beta), b["mask"]
    )
    units = None
  else:
    if pairs is None:
      raise ValueError(f"objective={objective!r} needs pairs.")
    per = bradley_terry_loss if objective == "bt" else hinge_loss
    loss_fn = lambda m, b: LossOutput(per(m(b["x"][:, 0]), m(b["x"][:, 1])), b["mask"])
    units = np.asarray(pairs)
  step = make_train_step(graphdef, loss_fn, tx)
  per_step = batch_size if objective != "pg" else max(1, batch_size // group_size)

  history = []
  for epoch in range(epochs):
    if objective == "pg":
      units = pg_groups(prompt_ids, group_size, seed=seed, epoch=epoch)
    order = np.random.default_rng((seed, epoch, 1)).permutation(len(units))
    losses = []
    for start in range(0, len(order), per_step):
      idx = units[order[start : start + per_step]]
      pad = per_step - len(idx)  # fixed shapes: one compilation
      mask = np.r_[np.ones(len(idx), bool), np.zeros(pad, bool)]
      idx = np.concatenate([idx, np.zeros((pad, idx.shape[1]), idx.dtype)])
      x, r = features[idx], rewards[idx]
      if objective in ("mse", "ce"):
        x, r = x[:, 0], r[:, 0]
      state, metrics = step(state, {"x": x, "r": r, "mask": mask})
      losses.append(metrics["loss_mean"])
    history.append(float(np.mean(jax.device_get(losses))))
  return ProbeResult(nnx.merge(graphdef, state.params, state.model_vars), history)
