"""Diffusion substrate: VP-SDE and EDM perturbations, per-sample DSM, score nets, samplers.

Everything here is the plain (unweighted) machinery that TIW-DSM
(:mod:`jaxweights.density_ratio`) builds on. All functions are pure and jit-able.

Two coordinates for one noisy sample
------------------------------------
The VP-SDE (Song et al., 2021; beta_min 0.1, beta_max 20) perturbs a clean
``x0`` to ``x_t = alpha(t) x0 + sigma(t) z``. Dividing by ``alpha(t)`` gives the
EDM ("variance-exploding") coordinate ``x = x0 + s z`` with noise level
``s = sigma(t) / alpha(t) = sqrt(exp(int_0^t beta) - 1)`` (Karras et al., 2022).
Both score-model parameterisations below share that EDM coordinate:

* :class:`VPDiffusion`: epsilon prediction on ``x_t`` (loss weight
  ``lambda(t) = sigma(t)^2`` in score units), t uniform or importance-sampled.
* :class:`EDMDiffusion`: the EDM preconditioned denoiser ``D(x; s)``,
  ``s ~ LogNormal(P_mean, P_std)``, loss weight
  ``lambda(s) = (s^2 + sigma_d^2) / (s sigma_d)^2``, ``sigma_d = 0.5``.

A time-dependent discriminator always sees the VP sample ``x_t = alpha(t) x``
at VP time ``t`` (that is what it is trained on), whichever parameterisation
the score model uses.

The batch of a DSM step (the noise draw)
----------------------------------------
A DSM step needs a noise level and a Gaussian draw per sample, and TIW-DSM's
pre-pass must see *the same* noisy sample as the loss. The draw is therefore
part of the batch: a dict batch with

* ``"x"``: ``[B, ...]`` clean samples;
* ``"t"``: ``[B]`` VP times and ``"sigma"``: ``[B]`` the matching EDM levels;
* ``"noise"``: ``[B, ...]`` standard normal draws;
* optionally ``"score_correction"``: ``[B, ...]`` ``grad_x log w_t`` in the EDM
  coordinate, added to the regression target (see :func:`dsm_loss_fn`).

The draw is made on the device in a weighting's ``prepare`` pre-pass from the
step's ``ctx.key`` (:func:`perturb_batch`; :func:`dsm_weighting` is the plain DSM
step with that pre-pass). Each sample's draw is keyed by its *global* batch
index, so the same global batch gets the same draw on 1 device, under ``jit``
over 8 and under ``shard_map`` over 8. A batch that already carries ``t``,
``sigma`` and ``noise`` (drawn on the host, e.g. to share them between a plain
``weighting=None`` step and a TIW-DSM step in a benchmark) is left as it is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxweights import normalize
from jaxweights._reduce import AxisName
from jaxweights.train import LossOutput
from jaxweights.weighting import PrepareContext, WeightInputs, Weighting

PyTree = Any
DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]

T_SAMPLINGS = ("importance", "uniform")
PERTURBATION_KEYS = ("t", "sigma", "noise")
CORRECTION_KEY = "score_correction"


def is_concrete(x) -> bool:
  """True when ``x`` holds values at trace time (not a JAX tracer)."""
  return not isinstance(x, jax.core.Tracer)


def expand_to(v: jax.Array, x: jax.Array) -> jax.Array:
  """``[B]`` -> ``[B, 1, ..., 1]`` with ``x``'s rank (no implicit rank promotion)."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def _check_per_sample_levels(x: jax.Array, level: jax.Array, name: str) -> None:
  if level.ndim != 1 or x.ndim < 2 or level.shape[0] != x.shape[0]:
    raise ValueError(
        f"expected x of shape [B, ...] (rank >= 2) and {name} of shape [B]; got "
        f"x {x.shape} and {name} {level.shape}."
    )


# ----------------------------------------------------------------------------
# The VP-SDE.


@dataclasses.dataclass(frozen=True)
class VPSDE:
  """The variance-preserving SDE ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dw``.

  ``beta(t) = beta_min + t (beta_max - beta_min)``,
  ``alpha(t) = exp(-B(t)/2)``, ``sigma(t)^2 = 1 - exp(-B(t))`` with
  ``B(t) = int_0^t beta``.

  Times: ``alpha``/``sigma`` accept any ``t`` in ``[0, t_max]``; the training
  range (what :meth:`sample_t` draws and a discriminator is trained on) is
  ``[t_min, t_max]``. Concrete times outside ``[0, t_max]`` raise; traced ones
  are clipped into it.

  Attributes:
    beta_min: ``beta(0)`` (authors: 0.1).
    beta_max: ``beta(1)`` (authors: 20).
    t_min: smallest training time (authors: 1e-5).
    t_max: largest time (1).
  """

  beta_min: float = 0.1
  beta_max: float = 20.0
  t_min: float = 1e-5
  t_max: float = 1.0

  def __post_init__(self):
    if not 0.0 < self.beta_min < self.beta_max:
      raise ValueError(
          f"need 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}."
      )
    if not 0.0 < self.t_min < self.t_max:
      raise ValueError(f"need 0 < t_min < t_max, got {self.t_min}, {self.t_max}.")

  def _t(self, t, lo: float = 0.0) -> jax.Array:
    if is_concrete(t):
      arr = np.asarray(t, np.float64)
      tol = 1e-6  # float32 rounding of the end points
      if (np.any(~np.isfinite(arr)) or np.any(arr < lo * (1 - tol))
          or np.any(arr > self.t_max * (1 + tol))):
        raise ValueError(
            f"t must be in [{lo:g}, {self.t_max:g}] and finite, got min "
            f"{arr.min():g}, max {arr.max():g}."
        )
    return jnp.clip(jnp.asarray(t, jnp.float32), lo, self.t_max)

  def check_t(self, t) -> jax.Array:
    """``t`` as float32, validated against the training range ``[t_min, t_max]``.

    Concrete values outside raise ``ValueError``; traced values are clipped.
    """
    return self._t(t, self.t_min)

  def beta(self, t) -> jax.Array:
    return self.beta_min + self._t(t) * (self.beta_max - self.beta_min)

  def integral(self, t) -> jax.Array:
    """``B(t) = int_0^t beta(u) du``."""
    t = self._t(t)
    return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

  def alpha(self, t) -> jax.Array:
    return jnp.exp(-0.5 * self.integral(t))

  def sigma(self, t) -> jax.Array:
    return jnp.sqrt(-jnp.expm1(-self.integral(t)))

  def edm_sigma(self, t) -> jax.Array:
    """The EDM noise level ``sigma(t) / alpha(t) = sqrt(exp(B(t)) - 1)``."""
    return jnp.sqrt(jnp.expm1(self.integral(t)))

  def t_from_edm_sigma(self, s) -> jax.Array:
    """Inverse of :meth:`edm_sigma`: solves ``B(t) = log(1 + s^2)`` for ``t``.

    Levels beyond ``edm_sigma(t_max)`` map beyond ``t_max`` (no clipping here).
    """
    b = jnp.log1p(jnp.square(jnp.asarray(s, jnp.float32)))
    d = self.beta_max - self.beta_min
    # The positive root of d/2 t^2 + beta_min t - b = 0, in a cancellation-free form.
    return 2.0 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * d * b))

  def condition(self, t) -> jax.Array:
    """The network's noise input ``log(edm_sigma(t)) / 4`` (EDM's ``c_noise``)."""
    return 0.25 * jnp.log(self.edm_sigma(t))

  def _log_expm1_b(self, t):
    return jnp.log(jnp.expm1(self.integral(t)))

  def t_density(self, t, sampling: str = "importance") -> jax.Array:
    """The normalised density on ``[t_min, t_max]`` that :meth:`sample_t` draws from.

    ``"importance"``: ``p(t) = beta(t) / sigma(t)^2 / Z`` (note
    ``beta / sigma^2 = d/dt log(exp(B(t)) - 1)``, so ``Z`` is a difference of
    logs); ``"uniform"``: ``1 / (t_max - t_min)``.
    """
    _check_sampling(sampling)
    t = self.check_t(t)
    if sampling == "uniform":
      return jnp.full_like(t, 1.0 / (self.t_max - self.t_min))
    z = self._log_expm1_b(self.t_max) - self._log_expm1_b(self.t_min)
    return self.beta(t) / jnp.square(self.sigma(t)) / z

  def sample_t(self, key: jax.Array, shape: Sequence[int] = (),
               sampling: str = "importance") -> jax.Array:
    """Draws times on ``[t_min, t_max]``, ``"importance"`` (∝ β/σ²) or ``"uniform"``.

    Importance sampling inverts the CDF in closed form:
    ``L = log(exp(B(t)) - 1)`` is uniform between its end values, then
    ``B = softplus(L)`` and ``t`` solves the quadratic ``B(t) = B``.
    """
    _check_sampling(sampling)
    u = jax.random.uniform(key, tuple(shape), jnp.float32)
    if sampling == "uniform":
      return self.t_min + u * (self.t_max - self.t_min)
    lo, hi = self._log_expm1_b(self.t_min), self._log_expm1_b(self.t_max)
    b = jax.nn.softplus(lo + u * (hi - lo))
    d = self.beta_max - self.beta_min
    t = 2.0 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * d * b))
    return jnp.clip(t, self.t_min, self.t_max)


def _check_sampling(sampling: str) -> None:
  if sampling not in T_SAMPLINGS:
    raise ValueError(f"t sampling must be one of {T_SAMPLINGS}, got {sampling!r}.")


# ----------------------------------------------------------------------------
# Score-model parameterisations and their per-sample DSM losses.


def _mean_per_sample(sq: jax.Array) -> jax.Array:
  return jnp.mean(jnp.reshape(sq, (sq.shape[0], -1)), axis=1)


@dataclasses.dataclass(frozen=True)
class VPDiffusion:
  """Epsilon prediction on the VP-SDE: ``model(x_t, c) -> eps_hat``, ``c = log(s)/4``.

  Per-sample loss (``lambda(t) = sigma(t)^2`` in score units, so it is the
  plain epsilon MSE): ``mean((eps_hat - (eps - s * corr))^2)`` where ``s`` is the
  EDM level and ``corr = grad_x log w_t`` in the EDM coordinate. In VP units
  that is the score target ``-eps/sigma(t) + grad_{x_t} log w_t``.

  Attributes:
    sde: the VP-SDE.
    t_sampling: ``"uniform"`` (default for the score model) or ``"importance"``.
  """

  sde: VPSDE = VPSDE()
  t_sampling: str = "uniform"

  def __post_init__(self):
    _check_sampling(self.t_sampling)

  def sample_level(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One draw ``(t, s)``: VP time and the matching EDM level (scalars)."""
    t = self.sde.sample_t(key, (), self.t_sampling)
    return t, self.sde.edm_sigma(t)

  def eps(self, model: nnx.Module, x: jax.Array, sigma: jax.Array) -> jax.Array:
    """The model's noise prediction at EDM-coordinate ``x`` and level ``sigma``."""
    t = self.sde.t_from_edm_sigma(sigma)
    x_t = expand_to(self.sde.alpha(jnp.clip(t, 0.0, self.sde.t_max)), x) * x
    return model(x_t, 0.25 * jnp.log(sigma))

  def denoise(self, model: nnx.Module, x: jax.Array, sigma: jax.Array) -> jax.Array:
    """``D(x; s) = x - s eps_hat`` in the EDM coordinate."""
    return x - expand_to(sigma, x) * self.eps(model, x, sigma)

  def loss(self, model: nnx.Module, x0: jax.Array, t: jax.Array, sigma: jax.Array,
           noise: jax.Array, correction: jax.Array | None = None) -> jax.Array:
    """Per-sample DSM loss ``[B]`` (see the class docstring)."""
    _check_per_sample_levels(x0, t, "t")
    s = expand_to(sigma, x0)
    alpha = expand_to(self.sde.alpha(t), x0)
    x_t = alpha * (x0 + s * noise)
    target = noise if correction is None else noise - s * correction
    eps_hat = model(x_t, 0.25 * jnp.log(sigma))
    return _mean_per_sample(jnp.square(eps_hat - target))


@dataclasses.dataclass(frozen=True)
class EDMDiffusion:
  """The EDM preconditioned denoiser (Karras et al., 2022).

  ``D(x; s) = c_skip x + c_out F(c_in x, c_noise)`` with ``c_skip =
  sd^2/(s^2+sd^2)``, ``c_out = s sd / sqrt(s^2+sd^2)``, ``c_in =
  1/sqrt(s^2+sd^2)``, ``c_noise = log(s)/4``. Per-sample loss:
  ``lambda(s) mean((D(x0 + s n; s) - (x0 + s^2 corr))^2)`` with
  ``lambda(s) = (s^2 + sd^2)/(s sd)^2``: the denoiser form of the score target
  ``-n/s + corr``.

  Attributes:
    sigma_data: ``sd`` (0.5).
    p_mean: mean of ``log s`` (-1.2).
    p_std: std of ``log s`` (1.2).
    sde: the VP-SDE that maps ``s`` to the discriminator's time ``t``.
  """

  sigma_data: float = 0.5
  p_mean: float = -1.2
  p_std: float = 1.2
  sde: VPSDE = VPSDE()

  def __post_init__(self):
    if not self.sigma_data > 0 or not self.p_std > 0:
      raise ValueError("sigma_data and p_std must be > 0.")

  def sample_level(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One draw ``(t, s)``: ``s`` log-normal, ``t`` its VP time clipped to the range."""
    s = jnp.exp(self.p_mean + self.p_std * jax.random.normal(key, (), jnp.float32))
    t = jnp.clip(self.sde.t_from_edm_sigma(s), self.sde.t_min, self.sde.t_max)
    return t, s

  def loss_weight(self, sigma: jax.Array) -> jax.Array:
    """``lambda(s) = (s^2 + sd^2) / (s sd)^2``."""
    sd2 = self.sigma_data**2
    return (jnp.square(sigma) + sd2) / (jnp.square(sigma) * sd2)

  def denoise(self, model: nnx.Module, x: jax.Array, sigma: jax.Array) -> jax.Array:
    s = expand_to(sigma, x)
    sd = self.sigma_data
    norm = jnp.sqrt(jnp.square(s) + sd * sd)
    c_skip = sd * sd / jnp.square(norm)
    c_out = s * sd / norm
    return c_skip * x + c_out * model(x / norm, 0.25 * jnp.log(sigma))

  def loss(self, model: nnx.Module, x0: jax.Array, t: jax.Array, sigma: jax.Array,
           noise: jax.Array, correction: jax.Array | None = None) -> jax.Array:
    """Per-sample DSM loss ``[B]`` (see the class docstring); ``t`` is unused."""
    _check_per_sample_levels(x0, sigma, "sigma")
    s = expand_to(sigma, x0)
    target = x0 if correction is None else x0 + jnp.square(s) * correction
    d = self.denoise(model, x0 + s * noise, sigma)
    return self.loss_weight(sigma) * _mean_per_sample(jnp.square(d - target))


Diffusion = VPDiffusion | EDMDiffusion


def check_perturbed_batch(batch) -> None:
  """Raises a clear ``ValueError`` unless ``batch`` is a dict with a full draw."""
  if not isinstance(batch, dict):
    raise ValueError(f"a DSM batch must be a dict, got {type(batch).__name__}.")
  missing = [k for k in ("x",) + PERTURBATION_KEYS if k not in batch]
  if missing:
    raise ValueError(
        f"the DSM batch lacks {missing}: draw the noise with a weighting's "
        "prepare pass (jaxweights.diffusion.dsm_weighting, density_ratio.tiw_dsm, ...) "
        "or add 't', 'sigma' and 'noise' to the batch (diffusion.perturb_batch)."
    )
  x = jnp.asarray(batch["x"])
  if jnp.shape(batch["noise"]) != x.shape:
    raise ValueError(f"noise shape {jnp.shape(batch['noise'])} != x shape {x.shape}.")
  for k in ("t", "sigma"):
    if jnp.shape(batch[k]) != x.shape[:1]:
      raise ValueError(f"{k} must have shape {x.shape[:1]}, got {jnp.shape(batch[k])}.")
  corr = batch.get(CORRECTION_KEY)
  if corr is not None and jnp.shape(corr) != x.shape:
    raise ValueError(
        f"{CORRECTION_KEY} shape {jnp.shape(corr)} != x shape {x.shape}."
    )


def dsm_loss_fn(diffusion: Diffusion) -> Callable[[nnx.Module, dict], LossOutput]:
  """``loss_fn(model, batch) -> LossOutput`` of per-sample DSM for the train step.

  Reads ``x``, ``t``, ``sigma``, ``noise`` and, when present,
  ``score_correction`` (TIW-DSM's ``grad_x log w_t``; absent = plain DSM).
  """

  def loss_fn(model, batch):
    check_perturbed_batch(batch)
    corr = batch.get(CORRECTION_KEY)
    if corr is not None:
      corr = jax.lax.stop_gradient(corr)
    return LossOutput(diffusion.loss(model, batch["x"], batch["t"], batch["sigma"],
                                     batch["noise"], corr))

  return loss_fn


# ----------------------------------------------------------------------------
# The noise draw (keyed by global sample index).


def global_indices(n_local: int, axis_name: AxisName = None) -> jax.Array:
  """Global batch positions of this device's ``n_local`` rows (``arange`` off shard_map)."""
  idx = jnp.arange(n_local, dtype=jnp.int32)
  if axis_name is None:
    return idx
  return jax.lax.axis_index(axis_name).astype(jnp.int32) * n_local + idx


def global_batch_size(n_local: int, axis_name: AxisName = None) -> int:
  return n_local if axis_name is None else n_local * jax.lax.axis_size(axis_name)


def draw_perturbation(
    diffusion: Diffusion,
    key: jax.Array,
    x: jax.Array,
    *,
    axis_name: AxisName = None,
    pair_halves: bool = False,
) -> dict[str, jax.Array]:
  """Draws ``t``, ``sigma`` (``[B]``) and ``noise`` (like ``x``) per sample.

  Sample ``i``'s draw depends only on ``key`` and its global index ``i``, so it
  does not depend on how the batch is split over devices.

  Args:
    diffusion: the parameterisation whose :meth:`sample_level` draws the levels.
    key: a PRNG key (e.g. ``PrepareContext.key``).
    x: ``[B, ...]`` this device's clean samples.
    axis_name: the ``shard_map`` data axis, else None.
    pair_halves: give global rows ``i`` and ``i + B/2`` the same level (a
      discriminator batch ``[reference; biased]`` at equal times). Needs an
      even global batch.

  Returns:
    ``{"t": [B], "sigma": [B], "noise": [B, ...]}`` (float32).
  """
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"x must be [B, ...] with rank >= 2, got shape {x.shape}.")
  idx = global_indices(x.shape[0], axis_name)
  level_idx = idx
  if pair_halves:
    n = global_batch_size(x.shape[0], axis_name)
    if n % 2:
      raise ValueError(f"pair_halves needs an even global batch, got {n}.")
    level_idx = idx % (n // 2)
  level_key, noise_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  t, sigma = jax.vmap(lambda i: diffusion.sample_level(jax.random.fold_in(level_key, i)))(
      level_idx)
  noise = jax.vmap(
      lambda i: jax.random.normal(jax.random.fold_in(noise_key, i), x.shape[1:], jnp.float32)
  )(idx)
  return {"t": t, "sigma": sigma, "noise": noise}


def perturb_batch(diffusion: Diffusion, batch: dict, key: jax.Array, *,
                  axis_name: AxisName = None, pair_halves: bool = False) -> dict:
  """Adds a noise draw (:func:`draw_perturbation`) to a dict batch lacking one.

  A batch that already has all of ``t``, ``sigma`` and ``noise`` is returned as
  is; one with only some of them raises (a half-given draw is a bug).
  """
  if not isinstance(batch, dict) or "x" not in batch:
    raise ValueError("a DSM batch must be a dict with the clean samples under 'x'.")
  present = [k for k in PERTURBATION_KEYS if k in batch]
  if len(present) == len(PERTURBATION_KEYS):
    check_perturbed_batch(batch)
    return batch
  if present:
    raise ValueError(
        f"the batch has {present} but not all of {PERTURBATION_KEYS}: give the "
        "whole draw or none of it."
    )
  draw = draw_perturbation(diffusion, key, batch["x"], axis_name=axis_name,
                           pair_halves=pair_halves)
  return {**batch, **draw}


def dsm_weighting(diffusion: Diffusion) -> Weighting:
  """The plain DSM step: uniform weights, noise drawn in ``prepare`` from ``ctx.key``."""

  def prepare(ctx: PrepareContext):
    return perturb_batch(diffusion, ctx.batch, ctx.key, axis_name=ctx.axis_name)

  def update(inputs: WeightInputs, state):
    return normalize.uniform(inputs.mask, axis_name=inputs.axis_name), state

  return Weighting(init=tuple, update=update, prepare=prepare)


# ----------------------------------------------------------------------------
# Networks.


def sinusoidal_embedding(c: jax.Array, dim: int, max_freq: float = 100.0) -> jax.Array:
  """``[B]`` -> ``[B, dim]`` sin/cos features at geometric frequencies in ``[1, max_freq]``."""
  if dim % 2:
    raise ValueError(f"embedding dim must be even, got {dim}.")
  freqs = jnp.exp(jnp.linspace(0.0, math.log(max_freq), dim // 2, dtype=jnp.float32))
  arg = jnp.asarray(c, jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


class NoiseEmbedding(nnx.Module):
  """Sinusoidal features of the noise condition ``c`` followed by a 2-layer MLP."""

  def __init__(self, dim: int, out: int, *, rngs: nnx.Rngs):
    self.dim = dim
    self.fc1 = nnx.Linear(dim, out, rngs=rngs)
    self.fc2 = nnx.Linear(out, out, rngs=rngs)

  def __call__(self, c: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.silu(self.fc1(sinusoidal_embedding(c, self.dim))))


class ScoreMLP(nnx.Module):
  """A residual SiLU MLP ``(x [B, ...], c [B]) -> [B, ...]`` (any trailing shape).

  The noise embedding is added to every hidden block. Used for 2-D toy data and
  as the quick score network for flattened 8x8 digits.
  """

  def __init__(self, features: int, hidden: int = 128, depth: int = 3,
               embed_dim: int = 32, *, rngs: nnx.Rngs):
    if depth < 1:
      raise ValueError(f"depth must be >= 1, got {depth}.")
    self.features = features
    self.embed = NoiseEmbedding(embed_dim, hidden, rngs=rngs)
    self.inp = nnx.Linear(features, hidden, rngs=rngs)
    self.blocks = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs) for _ in range(depth)])
    self.emb_proj = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs) for _ in range(depth)])
    self.out = nnx.Linear(hidden, features, rngs=rngs)

  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    shape = x.shape
    h = self.inp(jnp.reshape(x, (shape[0], -1)))
    e = jax.nn.silu(self.embed(c))
    for block, proj in zip(self.blocks, self.emb_proj):
      h = h + block(jax.nn.silu(h + proj(e)))
    return jnp.reshape(self.out(jax.nn.silu(h)), shape)


class _ResBlock(nnx.Module):

  def __init__(self, cin: int, cout: int, emb: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.GroupNorm(cin, num_groups=min(8, cin), rngs=rngs)
    self.conv1 = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
    self.proj = nnx.Linear(emb, cout, rngs=rngs)
    self.norm2 = nnx.GroupNorm(cout, num_groups=min(8, cout), rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), rngs=rngs)
    self.skip = nnx.Conv(cin, cout, (1, 1), rngs=rngs) if cin != cout else None

  def __call__(self, x, e):
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = h + self.proj(e)[:, None, None, :]
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    return h + (x if self.skip is None else self.skip(x))


class ScoreUNet(nnx.Module):
  """A two-level U-Net for small images ``[B, H, W, C]`` (or flat ``[B, H*W*C]``).

  ``H x W`` -> (residual block) -> stride-2 conv to ``H/2 x W/2`` at twice the
  channels -> two residual blocks -> nearest upsampling, skip concatenation,
  residual block -> ``C`` channels. GroupNorm acts per sample, so per-sample
  losses stay per-sample.
  """

  def __init__(self, image_shape: Sequence[int] = (8, 8, 1), channels: int = 32,
               embed_dim: int = 32, *, rngs: nnx.Rngs):
    h, w, c = image_shape
    if h % 2 or w % 2:
      raise ValueError(f"image height and width must be even, got {image_shape}.")
    self.image_shape = tuple(image_shape)
    ch, emb = channels, 4 * channels
    self.embed = NoiseEmbedding(embed_dim, emb, rngs=rngs)
    self.conv_in = nnx.Conv(c, ch, (3, 3), rngs=rngs)
    self.down = _ResBlock(ch, ch, emb, rngs=rngs)
    self.downsample = nnx.Conv(ch, 2 * ch, (3, 3), strides=(2, 2), rngs=rngs)
    self.mid1 = _ResBlock(2 * ch, 2 * ch, emb, rngs=rngs)
    self.mid2 = _ResBlock(2 * ch, 2 * ch, emb, rngs=rngs)
    self.up = _ResBlock(3 * ch, ch, emb, rngs=rngs)
    self.norm_out = nnx.GroupNorm(ch, num_groups=min(8, ch), rngs=rngs)
    self.conv_out = nnx.Conv(ch, c, (3, 3), rngs=rngs)

  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    shape = x.shape
    b = shape[0]
    x = jnp.reshape(x, (b,) + self.image_shape)
    e = jax.nn.silu(self.embed(c))
    h0 = self.down(self.conv_in(x), e)
    h = self.mid2(self.mid1(self.downsample(h0), e), e)
    h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
    h = self.up(jnp.concatenate([h, h0], axis=-1), e)
    out = self.conv_out(jax.nn.silu(self.norm_out(h)))
    return jnp.reshape(out, shape)


# ----------------------------------------------------------------------------
# Samplers.


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0) -> jax.Array:
  """EDM's ``num_steps`` decreasing levels from ``sigma_max`` to ``sigma_min``, then 0."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if not 0 < sigma_min < sigma_max:
    raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
  i = jnp.arange(num_steps, dtype=jnp.float32) / max(num_steps - 1, 1)
  inv = 1.0 / rho
  s = (sigma_max**inv + i * (sigma_min**inv - sigma_max**inv)) ** rho
  return jnp.concatenate([s, jnp.zeros((1,), jnp.float32)])


def heun_sampler(denoise_fn: DenoiseFn, key: jax.Array, shape: Sequence[int], *,
                 num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 rho: float = 7.0) -> jax.Array:
  """Deterministic Heun integration of the probability-flow ODE (EDM Algorithm 1).

  ``dx/ds = (x - D(x; s)) / s`` from ``x ~ N(0, sigma_max^2 I)`` down to 0 in the
  EDM coordinate; ``2 num_steps - 1`` denoiser calls.

  Args:
    denoise_fn: ``D(x [B, ...], s [B]) -> [B, ...]``.
    key: PRNG key of the initial draw.
    shape: ``(B, ...)``.

  Returns:
    ``[B, ...]`` samples.
  """
  sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho)
  b = shape[0]
  x = sigmas[0] * jax.random.normal(key, tuple(shape), jnp.float32)

  def body(i, x):
    s, s_next = sigmas[i], sigmas[i + 1]
    d = (x - denoise_fn(x, jnp.full((b,), s))) / s
    x_euler = x + (s_next - s) * d
    safe_next = jnp.maximum(s_next, sigma_min)
    d2 = (x_euler - denoise_fn(x_euler, jnp.full((b,), safe_next))) / safe_next
    x_heun = x + (s_next - s) * 0.5 * (d + d2)
    return jnp.where(s_next > 0, x_heun, x_euler)

  return jax.lax.fori_loop(0, num_steps, body, x)


def euler_maruyama_sampler(score_fn: ScoreFn, sde: VPSDE, key: jax.Array,
                           shape: Sequence[int], *, num_steps: int = 500,
                           t_end: float = 1e-3) -> jax.Array:
  """Euler-Maruyama on the reverse VP-SDE from ``t_max`` to ``t_end``.

  ``x <- x + [beta/2 x + beta s(x, t)] dt + sqrt(beta dt) z``; the last step
  returns the mean (no noise). ``x`` is in the VP coordinate (``x_0`` scale at
  ``t_end``).

  Args:
    score_fn: ``s(x_t [B, ...], t [B]) -> [B, ...]`` (see :func:`vp_score_fn`).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if not 0 < t_end < sde.t_max:
    raise ValueError(f"t_end must be in (0, t_max), got {t_end}.")
  ts = jnp.linspace(sde.t_max, t_end, num_steps + 1, dtype=jnp.float32)
  b = shape[0]
  key, k0 = jax.random.split(key)
  x = jax.random.normal(k0, tuple(shape), jnp.float32)

  def body(i, carry):
    x, key = carry
    t, dt = ts[i], ts[i] - ts[i + 1]
    beta = sde.beta(t)
    mean = x + (0.5 * beta * x + beta * score_fn(x, jnp.full((b,), t))) * dt
    key, k = jax.random.split(key)
    last = i == num_steps - 1
    noise = jnp.where(last, 0.0, jnp.sqrt(beta * dt)) * jax.random.normal(k, x.shape)
    return mean + noise, key

  x, _ = jax.lax.fori_loop(0, num_steps, body, (x, key))
  return x


def vp_score_fn(denoise_fn: DenoiseFn, sde: VPSDE) -> ScoreFn:
  """The VP score ``s(x_t, t) = (D(x_t / alpha; s) - x_t / alpha) / (alpha s^2)``."""

  def score(x_t, t):
    alpha, s = sde.alpha(t), sde.edm_sigma(t)
    a, ss = expand_to(alpha, x_t), expand_to(s, x_t)
    x = x_t / a
    return (denoise_fn(x, s) - x) / (a * jnp.square(ss))

  return score


def denoiser(diffusion: Diffusion, graphdef: nnx.GraphDef, params: PyTree,
             rest: PyTree = None) -> DenoiseFn:
  """``D(x, s)`` of a trained model from its split state (for the samplers)."""

  def denoise_fn(x, sigma):
    model = nnx.merge(graphdef, params) if rest is None else nnx.merge(graphdef, params, rest)
    return diffusion.denoise(model, x, sigma)

  return denoise_fn


# ----------------------------------------------------------------------------
# Closed-form Gaussian mixtures (tests, toy experiments).


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  """An isotropic Gaussian mixture ``sum_k pi_k N(mu_k, s_k^2 I)``.

  Perturbed as ``x = a x0 + b z`` it stays a mixture with means ``a mu_k`` and
  variances ``a^2 s_k^2 + b^2``: so :meth:`log_prob` and :meth:`score` at any
  noise level are exact (VP: ``a = alpha(t), b = sigma(t)``; EDM: ``a = 1,
  b = s``).

  Attributes:
    weights: ``[K]`` mixture weights (normalised on construction).
    means: ``[K, D]``.
    stds: ``[K]`` per-component standard deviations.
  """

  weights: tuple
  means: tuple
  stds: tuple

  def __post_init__(self):
    w = np.asarray(self.weights, np.float64)
    m = np.asarray(self.means, np.float64)
    s = np.asarray(self.stds, np.float64)
    if w.ndim != 1 or m.ndim != 2 or s.shape != w.shape or m.shape[0] != w.shape[0]:
      raise ValueError(
          f"need weights [K], means [K, D], stds [K]; got {w.shape}, {m.shape}, {s.shape}."
      )
    if np.any(w < 0) or w.sum() <= 0 or np.any(s <= 0):
      raise ValueError("weights must be >= 0 (not all 0) and stds > 0.")
    object.__setattr__(self, "weights", tuple((w / w.sum()).tolist()))
    object.__setattr__(self, "means", tuple(map(tuple, m.tolist())))
    object.__setattr__(self, "stds", tuple(s.tolist()))

  @property
  def dim(self) -> int:
    return len(self.means[0])

  def log_prob(self, x: jax.Array, a=1.0, b=0.0) -> jax.Array:
    """``[B]`` log density of ``x`` (``[B, D]``) perturbed by ``a x0 + b z``.

    ``a``, ``b``: scalars or ``[B]``.
    """
    x = jnp.asarray(x, jnp.float32)
    a = jnp.broadcast_to(jnp.asarray(a, jnp.float32), x.shape[:1])[:, None]
    b = jnp.broadcast_to(jnp.asarray(b, jnp.float32), x.shape[:1])[:, None]
    mu = jnp.asarray(self.means, jnp.float32)  # [K, D]
    var = jnp.square(a) * jnp.square(jnp.asarray(self.stds, jnp.float32))[None, :] + jnp.square(b)
    d2 = jnp.sum(jnp.square(x[:, None, :] - a[:, :, None] * mu[None]), axis=-1)  # [B, K]
    logn = -0.5 * d2 / var - 0.5 * self.dim * jnp.log(2 * jnp.pi * var)
    log_w = jnp.log(jnp.asarray(self.weights, jnp.float32))[None, :]
    return jax.nn.logsumexp(logn + log_w, axis=-1)

  def score(self, x: jax.Array, a=1.0, b=0.0) -> jax.Array:
    """``[B, D]`` ``grad_x log p`` of the perturbed mixture."""
    return jax.grad(lambda z: jnp.sum(self.log_prob(z, a, b)))(jnp.asarray(x, jnp.float32))

  def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws: ``(x float32 [n, D], component int32 [n])``."""
    k = rng.choice(len(self.weights), size=n, p=np.asarray(self.weights))
    mu, s = np.asarray(self.means)[k], np.asarray(self.stds)[k]
    x = mu + s[:, None] * rng.standard_normal((n, self.dim))
    return x.astype(np.float32), k.astype(np.int32)

  def with_weights(self, weights) -> "GaussianMixture":
    return GaussianMixture(tuple(weights), self.means, self.stds)

  def mix(self, other: "GaussianMixture", fraction: float) -> "GaussianMixture":
    """``fraction * other + (1 - fraction) * self`` (same components)."""
    if self.means != other.means or self.stds != other.stds:
      raise ValueError("mix needs mixtures with the same components.")
    w = (1 - fraction) * np.asarray(self.weights) + fraction * np.asarray(other.weights)
    return self.with_weights(w)
