"""Samplers: Heun (EDM) and Euler-Maruyama (VP reverse SDE), and the
score / denoiser functions they call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxweights.substrates.diffusion.sde import VPSDE, Diffusion, expand_to

PyTree = Any
DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def karras_sigmas(
  num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> jax.Array:
  """EDM's ``num_steps`` decreasing levels from ``sigma_max`` to ``sigma_min``, then 0.

  ``s_i = (sigma_max^(1/rho) + i / (num_steps - 1) (sigma_min^(1/rho) -
  sigma_max^(1/rho)))^rho`` (Karras et al., 2022, Eq. 5).

  Args:
    num_steps: number of nonzero levels (>= 1; with 1, only ``sigma_max``).
    sigma_min: the last nonzero level (> 0).
    sigma_max: the first level (> ``sigma_min``).
    rho: the schedule's curvature (EDM: 7).

  Returns:
    float32 ``[num_steps + 1]`` decreasing levels ending in 0.

  Raises:
    ValueError: ``num_steps < 1`` or not ``0 < sigma_min < sigma_max``.

  Examples:
    >>> from jaxweights import diffusion
    >>> s = diffusion.karras_sigmas(4)
    >>> s.shape
    (5,)
    >>> round(float(s[0]), 3), round(float(s[-2]), 3), float(s[-1])
    (80.0, 0.002, 0.0)
    >>> bool((s[1:] < s[:-1]).all())
    True
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if not 0 < sigma_min < sigma_max:
    raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
  i = jnp.arange(num_steps, dtype=jnp.float32) / max(num_steps - 1, 1)
  inv = 1.0 / rho
  s = (sigma_max**inv + i * (sigma_min**inv - sigma_max**inv)) ** rho
  return jnp.concatenate([s, jnp.zeros((1,), jnp.float32)])


def heun_sampler(
  denoise_fn: DenoiseFn,
  key: jax.Array,
  shape: Sequence[int],
  *,
  num_steps: int = 18,
  sigma_min: float = 0.002,
  sigma_max: float = 80.0,
  rho: float = 7.0,
) -> jax.Array:
  """Deterministic Heun integration of the probability-flow ODE (EDM Algorithm 1).

  ``dx/ds = (x - D(x; s)) / s`` from ``x ~ N(0, sigma_max^2 I)`` down to 0 in the
  EDM coordinate; ``2 num_steps - 1`` denoiser calls.

  Args:
    denoise_fn: ``D(x [B, ...], s [B]) -> [B, ...]`` (see :func:`denoiser`).
    key: PRNG key of the initial draw.
    shape: ``(B, ...)``.
    num_steps: number of noise levels (see :func:`karras_sigmas`).
    sigma_min: the last nonzero level.
    sigma_max: the first level (the initial draw's standard deviation).
    rho: the schedule's curvature.

  Returns:
    ``[B, ...]`` float32 samples in the EDM (data) coordinate.

  Raises:
    ValueError: invalid schedule arguments (see :func:`karras_sigmas`).
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


def euler_maruyama_sampler(
  score_fn: ScoreFn,
  sde: VPSDE,
  key: jax.Array,
  shape: Sequence[int],
  *,
  num_steps: int = 500,
  t_end: float = 1e-3,
) -> jax.Array:
  """Euler-Maruyama on the reverse VP-SDE from ``t_max`` to ``t_end``.

  ``x <- x + [beta/2 x + beta s(x, t)] dt + sqrt(beta dt) z``; the last step
  returns the mean (no noise). ``x`` is in the VP coordinate (``x_0`` scale at
  ``t_end``).

  Args:
    score_fn: ``s(x_t [B, ...], t [B]) -> [B, ...]`` (see :func:`vp_score_fn`).
    sde: the VP-SDE (its ``beta`` and ``t_max``).
    key: PRNG key of the initial draw and the per-step noise.
    shape: ``(B, ...)``.
    num_steps: number of Euler-Maruyama steps (>= 1).
    t_end: the final time, in ``(0, t_max)``.

  Returns:
    ``[B, ...]`` float32 samples in the VP coordinate at ``t_end``.

  Raises:
    ValueError: ``num_steps < 1`` or ``t_end`` outside ``(0, t_max)``.
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
  """The VP score ``s(x_t, t) = (D(x_t / alpha; s) - x_t / alpha) / (alpha s^2)``.

  Here ``alpha = alpha(t)`` and ``s = sde.edm_sigma(t)``: the score of the VP
  marginal from an EDM-coordinate denoiser.

  Args:
    denoise_fn: ``D(x [B, ...], s [B]) -> [B, ...]`` in the EDM coordinate.
    sde: the VP-SDE that maps ``t`` to ``alpha(t)`` and ``s``.

  Returns:
    ``score(x_t [B, ...], t [B]) -> [B, ...]`` for
    :func:`euler_maruyama_sampler`.
  """

  def score(x_t, t):
    alpha, s = sde.alpha(t), sde.edm_sigma(t)
    a, ss = expand_to(alpha, x_t), expand_to(s, x_t)
    x = x_t / a
    return (denoise_fn(x, s) - x) / (a * jnp.square(ss))

  return score


def denoiser(diffusion: Diffusion, graphdef: nnx.GraphDef, params: PyTree, rest: PyTree = None) -> DenoiseFn:
  """``D(x, s)`` of a trained model from its split state (for the samplers).

  Args:
    diffusion: the parameterisation the model was trained with.
    graphdef: the model's graph definition (``nnx.split``).
    params: the model's ``nnx.Param`` state.
    rest: the model's other state, if any.

  Returns:
    ``denoise_fn(x [B, ...], sigma [B]) -> [B, ...]``, the denoiser in the EDM
    coordinate (``diffusion.denoise`` of the merged model).
  """

  def denoise_fn(x, sigma):
    model = nnx.merge(graphdef, params) if rest is None else nnx.merge(graphdef, params, rest)
    return diffusion.denoise(model, x, sigma)

  return denoise_fn
