"""Time-dependent density ratios and TIW-DSM (Kim et al., ICLR 2024).

Setting: a large biased set ``D_bias`` and a small unbiased reference ``D_ref``
(from ``p_data``). A time-dependent discriminator ``d(x_t, t)`` is trained with
BCE on balanced batches (reference tiled) of perturbed reference (label 1) vs
perturbed biased samples (label 0) at the same ``t`` (importance-sampled,
``∝ beta(t)/sigma(t)^2``). Then

* ``r_t = d / (1 - d)`` estimates ``p_data^t / p_bias^t`` (``d`` clipped to
  ``[eps, 1 - eps]``, ``eps = 1e-5``: a discriminator output of exactly 0 or 1
  gives a finite ratio and, where clipped, a zero score correction);
* when the score model is trained on a mixture with reference fraction ``pi``
  (``D_obs = D_bias ∪ D_ref``: ``pi = |D_ref| / |D_obs|``) the ratio to the
  training distribution is ``w_t = r_t / (pi r_t + 1 - pi)`` (``pi = 0``: D_bias
  only; the authors' ``w = 2 d`` is the special case ``pi = 1/2``);
* ``grad_x log w_t`` is ``jax.grad`` of ``log w_t`` with respect to the *input*
  ``x`` (never the discriminator's parameters); both are under
  ``stop_gradient``.

TIW-DSM (the paper's objective, Theorem 1) minimises
``E w_t(x_t) || s(x_t, t) - grad log p(x_t | x_0) - grad log w_t(x_t) ||^2``
over ``x_0 ~ D_obs``, whose minimiser is ``grad log p_data^t``. In the EDM
denoiser form the target is ``x_0 + s^2 grad_x log w_t`` (EDM coordinate) and
the per-sample weight ``w_t lambda(s)``. The authors' public code instead uses
``-s^2 grad_x d`` (wrong sign, and the gradient of ``d`` rather than of
``log w``) and broadcasts the weights into their batch mean; neither is copied
here (tests: ``test_correction_sign_not_negative_grad_d``,
``test_per_sample_weights_not_collapsed_to_batch_mean``).

On the composition layer (:func:`tiw_dsm_weighting`): the frozen discriminator's
parameters are the :class:`~jaxweights.Weighting`'s state (they checkpoint with
the run); ``prepare`` draws the noise (``ctx.key``, keyed by global sample
index: see :mod:`jaxweights.substrates.diffusion`) unless the batch carries it, and adds
``"ratio"`` (``w_t``) and ``"score_correction"`` (``grad_x log w_t``) for the
batch's ``(x_t, t)``; :func:`jaxweights.substrates.diffusion.dsm_loss_fn` reads the
correction; ``update`` returns ``w_t`` self-normalised to sum to 1 over the
valid samples of the global batch, under ``stop_gradient`` (so the step
minimises ``sum_i w_i l_i / sum_j w_j``).

References:
  Kim, Na, Park, Jang, Kim, Kang, Moon. "Training Unbiased Diffusion Models From
  Biased Dataset." ICLR 2024.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxweights.core import normalize
from jaxweights.core.contract import PrepareContext, Weighting, WeightInputs
from jaxweights.core.reductions import is_concrete
from jaxweights.core.step import LossFn, LossOutput, init_train_state, make_train_step
from jaxweights.substrates.data import batch_indices
from jaxweights.substrates.diffusion import (
  CORRECTION_KEY,
  VPSDE,
  Diffusion,
  NoiseEmbedding,
  VPDiffusion,
  draw_perturbation,
  expand_to,
  perturb_batch,
)

PyTree = Any
#: The batch key under which ``prepare`` stores the ``[batch]`` ratios ``w_t``.
RATIO_KEY = "ratio"
#: The default clip margin of discriminator probabilities, ``[eps, 1 - eps]``.
DEFAULT_EPS = 1e-5


# ----------------------------------------------------------------------------
# The discriminator.


class TimeDiscriminator(nnx.Module):
  """``(x_t [B, ...], c [B]) -> logits [B]``: a SiLU MLP with a noise embedding.

  ``c`` is the noise condition ``log(edm_sigma(t)) / 4`` (:meth:`VPSDE.condition`).
  Inputs of any trailing shape are flattened. No layer mixes samples, so
  ``grad`` of the summed log-ratio wrt the input is the per-sample gradient.

  Args:
    features: the flattened sample size (``prod`` of ``x_t.shape[1:]``).
    hidden: width of the hidden layers.
    depth: number of residual blocks, ``>= 1``.
    embed_dim: size of the sinusoidal noise embedding.
    rngs: the initialisation PRNG streams.

  Raises:
    ValueError: ``depth < 1``.
  """

  def __init__(
    self, features: int, hidden: int = 128, depth: int = 2, embed_dim: int = 32, *, rngs: nnx.Rngs
  ):
    if depth < 1:
      raise ValueError(f"depth must be >= 1, got {depth}.")
    self.embed = NoiseEmbedding(embed_dim, hidden, rngs=rngs)
    self.inp = nnx.Linear(features, hidden, rngs=rngs)
    self.blocks = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs) for _ in range(depth)])
    self.emb_proj = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs) for _ in range(depth)])
    self.out = nnx.Linear(hidden, 1, rngs=rngs)

  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    """The log-odds ``log(d / (1 - d))`` that each sample is from the reference set.

    Args:
      x: ``[B, ...]`` noisy samples (VP coordinate).
      c: ``[B]`` noise conditions (:meth:`VPSDE.condition` of the VP times).

    Returns:
      ``[B]`` logits.
    """
    h = self.inp(jnp.reshape(x, (x.shape[0], -1)))
    e = jax.nn.silu(self.embed(c))
    for block, proj in zip(self.blocks, self.emb_proj):
      h = h + block(jax.nn.silu(h + proj(e)))
    return self.out(jax.nn.silu(h))[:, 0]


class RatioModel(NamedTuple):
  """A frozen log-odds model: ``apply(params, x_t, t) -> logits [B]``.

  ``logits`` are ``log(d / (1 - d))`` of a discriminator (reference = 1) at VP
  time ``t`` on VP-coordinate ``x_t``; an oracle may return the true
  ``log p_data^t / p_bias^t`` instead. ``params`` become the weighting state.

  Attributes:
    apply: ``apply(params, x_t [B, ...], t [B]) -> [B]`` logits; it must not mix
      samples (the score correction is the gradient of the summed log-ratio).
    params: the pytree passed to ``apply`` (frozen; the weighting's state).
  """

  apply: Callable[[PyTree, jax.Array, jax.Array], jax.Array]
  params: PyTree

  @classmethod
  def from_module(
    cls, module_or_graphdef: nnx.Module | nnx.GraphDef, params: PyTree | None = None, sde: VPSDE = VPSDE()
  ) -> RatioModel:
    """Wraps a :class:`TimeDiscriminator` (or its ``(graphdef, state)``).

    A module is split whole (``nnx.split``), so non-parameter variables (e.g. a
    fixed input projection) travel in ``params`` too.

    Args:
      module_or_graphdef: a ``(x_t, c) -> logits [B]`` NNX module, or its graph
        definition when ``params`` is given.
      params: the module's state when a graph definition is passed.
      sde: the VP-SDE whose :meth:`~VPSDE.condition` maps times to ``c``.

    Returns:
      A :class:`RatioModel` calling the module on ``(x_t, sde.condition(t))``.
    """
    if params is None:
      graphdef, params = nnx.split(module_or_graphdef)
    else:
      graphdef = module_or_graphdef

    def apply(p, x_t, t):
      return nnx.merge(graphdef, p)(x_t, sde.condition(t))

    return cls(apply, params)


# ----------------------------------------------------------------------------
# Ratios.


def _check_eps(eps: float) -> float:
  if not 0.0 < eps < 0.5:
    raise ValueError(f"eps must be in (0, 0.5), got {eps}.")
  return float(eps)


def _check_fraction(ref_fraction) -> float:
  if not 0.0 <= float(ref_fraction) <= 1.0:
    raise ValueError(f"ref_fraction (pi) must be in [0, 1], got {ref_fraction}.")
  return float(ref_fraction)


def log_ratio_from_prob(d: jax.Array, *, ref_fraction: float = 0.0, eps: float = DEFAULT_EPS) -> jax.Array:
  """``log w`` from discriminator probabilities ``d`` (reference = 1).

  ``d`` is clipped to ``[eps, 1 - eps]``, so 0 and 1 give finite ratios
  (``log r`` within ``±log((1 - eps)/eps)``, ±11.5 at the default). Then
  ``r = d/(1-d)`` and ``w = r / (pi r + 1 - pi)`` (``pi = ref_fraction``; 0
  gives ``w = r``).

  Args:
    d: probabilities in ``[0, 1]`` (any shape). Concrete values outside (or NaN)
      raise ``ValueError``.
    ref_fraction: ``pi`` in ``[0, 1]``.
    eps: clip margin in ``(0, 0.5)``.

  Returns:
    ``log w``, like ``d``, float32.

  Raises:
    ValueError: concrete ``d`` outside ``[0, 1]`` or NaN, ``ref_fraction``
      outside ``[0, 1]``, or ``eps`` outside ``(0, 0.5)``.
  """
  eps = _check_eps(eps)
  pi = _check_fraction(ref_fraction)
  if is_concrete(d):
    arr = np.asarray(d, np.float64)
    if np.any(~(arr >= 0.0)) or np.any(~(arr <= 1.0)):
      raise ValueError("discriminator probabilities must be in [0, 1] (and not NaN).")
  d = jnp.clip(jnp.asarray(d, jnp.float32), eps, 1.0 - eps)
  log_r = jnp.log(d) - jnp.log1p(-d)
  return mixture_log_ratio(log_r, pi)


def log_ratio_from_logits(
  logits: jax.Array, *, ref_fraction: float = 0.0, eps: float = DEFAULT_EPS
) -> jax.Array:
  """``log w`` from logits ``log(d/(1-d))`` (``d = sigmoid(logits)``, clipped as above).

  Args:
    logits: discriminator log-odds (any shape); clipped to
      ``±log((1 - eps) / eps)``, which equals clipping ``d`` to ``[eps, 1 - eps]``.
    ref_fraction: ``pi`` in ``[0, 1]``.
    eps: clip margin in ``(0, 0.5)``.

  Returns:
    ``log w``, like ``logits``, float32.

  Raises:
    ValueError: ``ref_fraction`` outside ``[0, 1]`` or ``eps`` outside ``(0, 0.5)``.
  """
  eps = _check_eps(eps)
  pi = _check_fraction(ref_fraction)
  bound = float(np.log1p(-eps) - np.log(eps))
  # clip(sigmoid(z), eps, 1-eps) = sigmoid(clip(z, ±bound)), without rounding d.
  log_r = jnp.clip(jnp.asarray(logits, jnp.float32), -bound, bound)
  return mixture_log_ratio(log_r, pi)


def mixture_log_ratio(log_r: jax.Array, ref_fraction: float) -> jax.Array:
  """``log [r / (pi r + 1 - pi)]`` from ``log r`` (stable: a ``logaddexp``).

  Args:
    log_r: ``log r``, the log density ratio to the biased distribution (any shape).
    ref_fraction: ``pi`` in ``[0, 1]``: 0 returns ``log_r``, 1 returns zeros.

  Returns:
    ``log w``, like ``log_r``: the log ratio to the training mixture.

  Raises:
    ValueError: ``ref_fraction`` outside ``[0, 1]``.
  """
  pi = _check_fraction(ref_fraction)
  if pi == 0.0:
    return log_r
  if pi == 1.0:
    return jnp.zeros_like(log_r)
  return log_r - jnp.logaddexp(np.log(pi) + log_r, np.log1p(-pi))


def ratio_from_prob(d: jax.Array, *, ref_fraction: float = 0.0, eps: float = DEFAULT_EPS) -> jax.Array:
  """``w = r / (pi r + 1 - pi)``, ``r = d/(1-d)``, from probabilities ``d``.

  The density ratio of the reference distribution to the score model's
  training mixture, from a discriminator's probability ``d`` that a sample is
  from the reference set. Unnormalised (the weightings normalise it per batch).

  Args:
    d: probabilities in ``[0, 1]`` (any shape), clipped to ``[eps, 1 - eps]``.
    ref_fraction: ``pi`` in ``[0, 1]``, the share of the reference set in the
      training data (0: the biased set only, ``w = r``; 1/2: ``w = 2 d``).
    eps: clip margin in ``(0, 0.5)``.

  Returns:
    ``w``, like ``d``, float32, ``> 0``.

  Raises:
    ValueError: concrete ``d`` outside ``[0, 1]`` or NaN, ``ref_fraction``
      outside ``[0, 1]``, or ``eps`` outside ``(0, 0.5)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> d = jnp.array([0.5, 0.8, 0.2])
    >>> [round(float(w), 4) for w in jw.ratio_from_prob(d)]
    [1.0, 4.0, 0.25]
    >>> [round(float(w), 4) for w in jw.ratio_from_prob(d, ref_fraction=0.5)]  # w = 2 d
    [1.0, 1.6, 0.4]
  """
  return jnp.exp(log_ratio_from_prob(d, ref_fraction=ref_fraction, eps=eps))


def _check_t_range(t_range, sde: VPSDE):
  if t_range is None:
    return None
  lo, hi = (float(v) for v in t_range)
  if not sde.t_min <= lo < hi <= sde.t_max:
    raise ValueError(f"t_range must satisfy {sde.t_min:g} <= lo < hi <= {sde.t_max:g}, got {t_range}.")
  return lo, hi


def ratio_and_correction(
  ratio_model: RatioModel,
  params: PyTree,
  x: jax.Array,
  t: jax.Array,
  *,
  sde: VPSDE = VPSDE(),
  ref_fraction: float = 0.0,
  eps: float = DEFAULT_EPS,
  coordinate: str = "edm",
  t_range: Sequence[float] | None = None,
  with_correction: bool = True,
) -> tuple[jax.Array, jax.Array | None]:
  """``w_t(x)`` and ``grad_x log w_t(x)``, both under ``stop_gradient``.

  The gradient is taken wrt the input ``x`` (one VJP with a ones cotangent,
  i.e. ``jax.grad`` of the summed ``log w``: samples do not interact), never
  wrt ``params``.

  Args:
    ratio_model: the frozen log-odds model.
    params: its parameters.
    x: ``[B, ...]`` noisy samples, in the EDM coordinate (``x0 + s z``; the model
      sees ``alpha(t) x``) or, with ``coordinate="vp"``, the VP sample ``x_t``.
    t: ``[B]`` VP times in ``[t_min, t_max]`` (concrete values outside raise;
      traced ones are clipped).
    sde: the VP-SDE of the discriminator.
    ref_fraction: ``pi`` of the score model's training mixture.
    eps: clip margin of ``d``.
    coordinate: ``"edm"`` or ``"vp"``: the coordinate of ``x`` and of the gradient.
    t_range: optional ``(lo, hi)``: the correction is 0 for ``t`` outside.
    with_correction: False skips the gradient (returns None for it).

  Returns:
    ``(w [B], grad [B, ...] | None)``, float32, under ``stop_gradient``; ``w``
    is unnormalised.

  Raises:
    ValueError: a bad ``coordinate``, ``t_range``, ``ref_fraction`` or ``eps``;
      shapes other than ``x [B, ...]`` and ``t [B]``; concrete ``t`` outside
      ``[t_min, t_max]``; or logits of another shape than ``[B]``.
  """
  if coordinate not in ("edm", "vp"):
    raise ValueError(f"coordinate must be 'edm' or 'vp', got {coordinate!r}.")
  x = jnp.asarray(x, jnp.float32)
  t = jnp.asarray(t, jnp.float32)
  if x.ndim < 2 or t.shape != x.shape[:1]:
    raise ValueError(f"expected x [B, ...] and t [B]; got x {x.shape} and t {t.shape}.")
  t = sde.check_t(t)
  t_range = _check_t_range(t_range, sde)
  scale = expand_to(sde.alpha(t), x) if coordinate == "edm" else None

  def log_w(z):
    logits = ratio_model.apply(params, z if scale is None else scale * z, t)
    if jnp.shape(logits) != t.shape:
      raise ValueError(f"the ratio model returned logits of shape {jnp.shape(logits)}; expected {t.shape}.")
    return log_ratio_from_logits(logits, ref_fraction=ref_fraction, eps=eps)

  if not with_correction:
    return jax.lax.stop_gradient(jnp.exp(log_w(x))), None
  # One forward and one backward: the per-sample values and the input gradient
  # of their sum (samples do not interact, so it is per-sample).
  values, vjp = jax.vjp(log_w, x)
  (grad,) = vjp(jnp.ones_like(values))
  if t_range is not None:
    inside = (t >= t_range[0]) & (t <= t_range[1])
    grad = jnp.where(expand_to(inside, grad), grad, 0.0)
  return jax.lax.stop_gradient(jnp.exp(values)), jax.lax.stop_gradient(grad)


# ----------------------------------------------------------------------------
# Weightings on the composition layer.


def _self_normalised(inputs: WeightInputs, w: jax.Array) -> jax.Array:
  return normalize.sum_to_one(w, inputs.mask, axis_name=inputs.axis_name)


def tiw_dsm_weighting(
  ratio_model: RatioModel,
  diffusion: Diffusion = VPDiffusion(),
  *,
  ref_fraction: float = 0.0,
  weight: bool = True,
  correction: bool = True,
  t_range: Sequence[float] | None = None,
  eps: float = DEFAULT_EPS,
) -> Weighting:
  """TIW-DSM (and its ablations) as a :class:`~jaxweights.Weighting`.

  Pair it with :func:`jaxweights.substrates.diffusion.dsm_loss_fn` of the same
  ``diffusion``. State: the ratio model's (frozen) parameters.

  ``prepare`` draws ``t``, ``sigma``, ``noise`` (unless the batch has them) and
  adds ``"ratio"`` ``[B]`` = ``w_t(x_t)`` and, with ``correction``,
  ``"score_correction"`` ``[B, ...]`` = ``grad_x log w_t`` (EDM coordinate),
  all under ``stop_gradient``. ``update`` returns ``w_t`` normalised to sum to 1
  over the valid global batch (``weight=True``) or uniform weights.

  Args:
    ratio_model: the frozen time-dependent discriminator (or an oracle).
    diffusion: the score model's parameterisation (and VP-SDE).
    ref_fraction: ``pi`` = share of the reference set in the score model's
      training data (``w = r / (pi r + 1 - pi)``).
    weight: use ``w_t`` as the per-sample weight (False: correction-only ablation).
    correction: add ``grad log w_t`` to the target (False: weight-only ablation;
      the input gradient is then not computed).
    t_range: optional ``(lo, hi)`` in VP time; the correction is 0 outside
      (``grad log w`` is noisy at small ``t``). The weight is kept.
    eps: clip margin of ``d``.

  Returns:
    A :class:`~jaxweights.Weighting` whose state is ``ratio_model.params`` and
    whose ``update`` returns ``[B]`` float32 weights under ``stop_gradient``,
    summing to 1 over the valid samples of the global batch.

  Raises:
    ValueError: ``weight`` and ``correction`` both False (plain DSM), or a bad
      ``ref_fraction``, ``eps`` or ``t_range``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> oracle = jw.RatioModel(lambda params, x_t, t: jnp.zeros(t.shape), params=())  # w_t = 1
    >>> weighting = jw.tiw_dsm_weighting(oracle, jw.diffusion.VPDiffusion(), t_range=(0.05, 1.0))
    >>> weighting.init(), weighting.prepare is not None
    ((), True)
  """
  if not (weight or correction):
    raise ValueError(
      "tiw_dsm with weight=False and correction=False is plain DSM: "
      "use jaxweights.substrates.diffusion.dsm_weighting."
    )
  _check_fraction(ref_fraction)
  _check_eps(eps)
  _check_t_range(t_range, diffusion.sde)

  def init():
    return ratio_model.params

  def prepare(ctx: PrepareContext):
    batch = perturb_batch(diffusion, ctx.batch, ctx.key, axis_name=ctx.axis_name)
    x = batch["x"] + expand_to(batch["sigma"], batch["x"]) * batch["noise"]
    w, grad = ratio_and_correction(
      ratio_model,
      ctx.state,
      x,
      batch["t"],
      sde=diffusion.sde,
      ref_fraction=ref_fraction,
      eps=eps,
      t_range=t_range,
      with_correction=correction,
    )
    out = {**batch, RATIO_KEY: w}
    if correction:
      out[CORRECTION_KEY] = grad
    return out

  def update(inputs: WeightInputs, state):
    if weight:
      return _self_normalised(inputs, inputs.batch[RATIO_KEY]), state
    return normalize.uniform(inputs.mask, axis_name=inputs.axis_name), state

  return Weighting(init=init, update=update, prepare=prepare)


def iw_dsm_weighting(
  ratio_model: RatioModel,
  diffusion: Diffusion = VPDiffusion(),
  *,
  ref_fraction: float = 0.0,
  eps: float = DEFAULT_EPS,
) -> Weighting:
  """IW-DSM: plain DSM weighted by a time-independent ratio ``w(x_0)``.

  The ratio model (a discriminator trained at ``t = t_min`` only, see
  :func:`train_discriminator` with ``time_independent=True``) is evaluated on the
  clean sample at ``t_min``; no score correction. This is the time-independent
  baseline of Kim et al. (ICLR 2024).

  Args:
    ratio_model: the frozen time-independent discriminator (or an oracle).
    diffusion: the score model's parameterisation (and VP-SDE).
    ref_fraction: ``pi`` = share of the reference set in the score model's
      training data (``w = r / (pi r + 1 - pi)``).
    eps: clip margin of ``d``.

  Returns:
    A :class:`~jaxweights.Weighting` whose state is ``ratio_model.params``;
    ``prepare`` adds ``"ratio"`` ``[B]`` = ``w(x_0)`` to the batch and
    ``update`` returns it normalised to sum to 1 over the valid samples of the
    global batch, under ``stop_gradient``.

  Raises:
    ValueError: ``ref_fraction`` outside ``[0, 1]`` or ``eps`` outside ``(0, 0.5)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxweights as jw
    >>> oracle = jw.RatioModel(lambda params, x_t, t: jnp.zeros(t.shape), params=())  # w = 1
    >>> weighting = jw.iw_dsm_weighting(oracle)
    >>> weighting.init()
    ()
  """
  _check_fraction(ref_fraction)
  _check_eps(eps)
  sde = diffusion.sde

  def prepare(ctx: PrepareContext):
    batch = perturb_batch(diffusion, ctx.batch, ctx.key, axis_name=ctx.axis_name)
    x0 = batch["x"]
    t0 = jnp.full(x0.shape[:1], sde.t_min, jnp.float32)
    w, _ = ratio_and_correction(
      ratio_model, ctx.state, x0, t0, sde=sde, ref_fraction=ref_fraction, eps=eps, with_correction=False
    )
    return {**batch, RATIO_KEY: w}

  def update(inputs: WeightInputs, state):
    return _self_normalised(inputs, inputs.batch[RATIO_KEY]), state

  return Weighting(init=lambda: ratio_model.params, update=update, prepare=prepare)


# ----------------------------------------------------------------------------
# Training the discriminator (through the same composition layer).


def discriminator_loss_fn(sde: VPSDE = VPSDE()) -> LossFn:
  """Per-sample BCE ``loss_fn(model, batch)`` on ``alpha(t) x + sigma(t) noise``.

  Batch: ``x`` ``[B, ...]``, ``label`` ``[B]`` (1 = reference, 0 = biased),
  ``t`` ``[B]``, ``noise`` like ``x`` (drawn by :func:`discriminator_weighting`).

  Args:
    sde: the VP-SDE of the perturbation.

  Returns:
    ``loss_fn(model, batch) -> LossOutput`` with ``[B]`` BCE losses of the
    model's logits ``model(x_t, sde.condition(t))``.
  """

  def loss_fn(model, batch):
    x, t = batch["x"], batch["t"]
    x_t = expand_to(sde.alpha(t), x) * x + expand_to(sde.sigma(t), x) * batch["noise"]
    logits = model(x_t, sde.condition(t))
    return LossOutput(optax.sigmoid_binary_cross_entropy(logits, batch["label"]))

  return loss_fn


@dataclasses.dataclass(frozen=True)
class _DiscriminatorLevels:
  """``sample_level`` for the discriminator: t importance/uniform, or fixed t_min."""

  sde: VPSDE
  t_sampling: str
  time_independent: bool

  def sample_level(self, key):
    if self.time_independent:
      t = jnp.asarray(self.sde.t_min, jnp.float32)
    else:
      t = self.sde.sample_t(key, (), self.t_sampling)
    return t, self.sde.edm_sigma(t)


def discriminator_weighting(
  sde: VPSDE = VPSDE(), *, t_sampling: str = "importance", time_independent: bool = False
) -> Weighting:
  """Uniform weights; ``prepare`` draws ``t`` (shared by rows ``i`` and ``i + B/2``) and noise.

  The batch is ``[reference half; biased half]`` (:func:`discriminator_batch`),
  so every reference row is paired with a biased row at the same ``t``.

  Args:
    sde: the VP-SDE of the perturbation.
    t_sampling: ``"importance"`` (``∝ beta(t) / sigma(t)^2``) or ``"uniform"``.
    time_independent: draw ``t = t_min`` for every row (for IW-DSM).

  Returns:
    A stateless :class:`~jaxweights.Weighting` with uniform weights (``1 /
    n_valid``) whose ``prepare`` adds ``"t"`` ``[B]`` and ``"noise"`` (like
    ``x``) to the batch.

  Raises:
    ValueError: an unknown ``t_sampling``.
  """
  levels = _DiscriminatorLevels(sde, t_sampling, time_independent)
  if not time_independent:
    VPDiffusion(sde, t_sampling)  # validates t_sampling

  def prepare(ctx: PrepareContext):
    draw = draw_perturbation(levels, ctx.key, ctx.batch["x"], axis_name=ctx.axis_name, pair_halves=True)
    return {**ctx.batch, "t": draw["t"], "noise": draw["noise"]}

  def update(inputs: WeightInputs, state):
    return normalize.uniform(inputs.mask, axis_name=inputs.axis_name), state

  return Weighting(init=tuple, update=update, prepare=prepare)


def discriminator_batch(
  x_ref: np.ndarray, x_bias: np.ndarray, *, seed: int, step: int, batch_size: int
) -> dict[str, np.ndarray]:
  """A balanced batch ``[batch/2 reference; batch/2 biased]`` (the reference is tiled).

  Both halves are epoch-wise permutations (:func:`jaxweights.substrates.data.batch_indices`),
  a pure function of ``(seed, step)``.

  Args:
    x_ref: ``[N_ref, ...]`` reference samples.
    x_bias: ``[N_bias, ...]`` biased samples.
    seed: the permutation seed.
    step: the step whose batch to return.
    batch_size: the batch size, even.

  Returns:
    ``{"x": [batch_size, ...] float32, "label": [batch_size] float32}``, labels
    1 for the reference half and 0 for the biased half.

  Raises:
    ValueError: ``batch_size`` is odd.
  """
  if batch_size % 2:
    raise ValueError(f"batch_size must be even, got {batch_size}.")
  half = batch_size // 2
  i_ref = batch_indices(len(x_ref), half, seed=seed, step=step)
  i_bias = batch_indices(len(x_bias), half, seed=seed + 1, step=step)
  x = np.concatenate([x_ref[i_ref], x_bias[i_bias]]).astype(np.float32)
  label = np.concatenate([np.ones(half, np.float32), np.zeros(half, np.float32)])
  return {"x": x, "label": label}


@functools.lru_cache(maxsize=16)
def _discriminator_step(graphdef, sde, t_sampling, time_independent, learning_rate):
  """One compiled step per architecture and setting, reused across calls (seeds)."""
  tx = optax.adam(learning_rate)
  weighting = discriminator_weighting(sde, t_sampling=t_sampling, time_independent=time_independent)
  return tx, weighting, make_train_step(graphdef, discriminator_loss_fn(sde), tx, weighting)


def train_discriminator(
  model: nnx.Module,
  x_ref: np.ndarray,
  x_bias: np.ndarray,
  *,
  num_steps: int,
  batch_size: int = 256,
  learning_rate: float = 3e-4,
  sde: VPSDE = VPSDE(),
  t_sampling: str = "importance",
  time_independent: bool = False,
  seed: int = 0,
  log_every: int = 0,
) -> tuple[RatioModel, list[dict]]:
  """Trains a discriminator (Adam, BCE, balanced batches) and freezes it.

  Args:
    model: e.g. :class:`TimeDiscriminator` (``(x, c) -> logits [B]``).
    x_ref: ``[N_ref, ...]`` float32 reference (unbiased) samples.
    x_bias: ``[N_bias, ...]`` float32 biased samples, of the same sample shape.
    num_steps: Adam steps.
    batch_size: global batch (half reference, half biased).
    learning_rate: Adam's (authors: 3e-4).
    sde: VP-SDE of the perturbation.
    t_sampling: ``"importance"`` (authors) or ``"uniform"``.
    time_independent: train at ``t = t_min`` only (for IW-DSM).
    seed: PRNG seed (noise draws and batch order).
    log_every: record the step metrics every this many steps (0: never).

  Returns:
    ``(RatioModel, history)``: the frozen discriminator and, every
    ``log_every`` steps, ``{"step": int, "bce": float}``.

  Raises:
    ValueError: ``num_steps < 0``, an empty set, sample shapes that differ, or
      an odd ``batch_size``.
  """
  if num_steps < 0:
    raise ValueError(f"num_steps must be >= 0, got {num_steps}.")
  x_ref, x_bias = np.asarray(x_ref, np.float32), np.asarray(x_bias, np.float32)
  if x_ref.shape[1:] != x_bias.shape[1:] or len(x_ref) == 0 or len(x_bias) == 0:
    raise ValueError(
      f"x_ref and x_bias must be non-empty with equal sample shapes, got {x_ref.shape} and {x_bias.shape}."
    )
  graphdef = nnx.graphdef(model)
  tx, weighting, step = _discriminator_step(graphdef, sde, t_sampling, time_independent, float(learning_rate))
  _, state = init_train_state(model, tx, weighting, seed=seed)
  history = []
  for i in range(num_steps):
    state, metrics = step(state, discriminator_batch(x_ref, x_bias, seed=seed, step=i, batch_size=batch_size))
    if log_every and ((i + 1) % log_every == 0 or i + 1 == num_steps):
      history.append({"step": i + 1, "bce": float(metrics["loss_mean"])})
  frozen = nnx.merge(graphdef, jax.lax.stop_gradient(state.params), state.model_vars)
  return RatioModel.from_module(frozen, sde=sde), history
