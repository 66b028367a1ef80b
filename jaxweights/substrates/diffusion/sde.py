"""The VP-SDE and the two score-model parameterisations (VP epsilon prediction,
EDM preconditioning) with their per-sample DSM losses."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxweights.core.reductions import is_concrete

T_SAMPLINGS = ("importance", "uniform")


def expand_to(v: jax.Array, x: jax.Array) -> jax.Array:
  """``[B]`` -> ``[B, 1, ..., 1]`` with ``x``'s rank (no implicit rank promotion).

  Args:
    v: ``[B]`` per-sample values (any leading shape of rank ``<= x.ndim``).
    x: the ``[B, ...]`` array ``v`` should broadcast against.

  Returns:
    ``v`` reshaped to ``x.ndim`` dimensions with trailing size-1 axes.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxweights import diffusion
    >>> diffusion.expand_to(jnp.ones(4), jnp.zeros((4, 8, 8, 1))).shape
    (4, 1, 1, 1)
  """
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def _check_per_sample_levels(x: jax.Array, level: jax.Array, name: str) -> None:
  if level.ndim != 1 or x.ndim < 2 or level.shape[0] != x.shape[0]:
    raise ValueError(
      f"expected x of shape [B, ...] (rank >= 2) and {name} of shape [B]; got "
      f"x {x.shape} and {name} {level.shape}."
    )


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
    beta_min: ``beta(0)`` (0.1, as in Song et al., 2021).
    beta_max: ``beta(1)`` (20, as in Song et al., 2021).
    t_min: smallest training time (1e-5, as in Song et al., 2021).
    t_max: largest time (1).

  Raises:
    ValueError: not ``0 < beta_min < beta_max`` or not ``0 < t_min < t_max``.

  Examples:
    >>> from jaxweights import diffusion
    >>> sde = diffusion.VPSDE()
    >>> round(float(sde.alpha(0.0)), 4), round(float(sde.sigma(1.0)), 4)
    (1.0, 1.0)
    >>> round(float(sde.t_from_edm_sigma(sde.edm_sigma(0.5))), 4)
    0.5
  """

  beta_min: float = 0.1
  beta_max: float = 20.0
  t_min: float = 1e-5
  t_max: float = 1.0

  def __post_init__(self) -> None:
    if not 0.0 < self.beta_min < self.beta_max:
      raise ValueError(f"need 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}.")
    if not 0.0 < self.t_min < self.t_max:
      raise ValueError(f"need 0 < t_min < t_max, got {self.t_min}, {self.t_max}.")

  def _t(self, t, lo: float = 0.0) -> jax.Array:
    if is_concrete(t):
      arr = np.asarray(t, np.float64)
      tol = 1e-6  # float32 rounding of the end points
      if np.any(~np.isfinite(arr)) or np.any(arr < lo * (1 - tol)) or np.any(arr > self.t_max * (1 + tol)):
        raise ValueError(
          f"t must be in [{lo:g}, {self.t_max:g}] and finite, got min {arr.min():g}, max {arr.max():g}."
        )
    return jnp.clip(jnp.asarray(t, jnp.float32), lo, self.t_max)

  def check_t(self, t: jax.typing.ArrayLike) -> jax.Array:
    """``t`` as float32, validated against the training range ``[t_min, t_max]``.

    Concrete values outside raise ``ValueError``; traced values are clipped.

    Args:
      t: times, any shape.

    Returns:
      float32 times of ``t``'s shape, in ``[t_min, t_max]``.

    Raises:
      ValueError: a concrete time is non-finite or outside ``[t_min, t_max]``.
    """
    return self._t(t, self.t_min)

  def beta(self, t: jax.typing.ArrayLike) -> jax.Array:
    """The noise rate ``beta(t) = beta_min + t (beta_max - beta_min)``.

    Args:
      t: times in ``[0, t_max]``, any shape.

    Returns:
      float32 values of ``t``'s shape.

    Raises:
      ValueError: a concrete time is non-finite or outside ``[0, t_max]``.
    """
    return self.beta_min + self._t(t) * (self.beta_max - self.beta_min)

  def integral(self, t: jax.typing.ArrayLike) -> jax.Array:
    """``B(t) = int_0^t beta(u) du``.

    Args:
      t: times in ``[0, t_max]``, any shape.

    Returns:
      float32 values of ``t``'s shape.

    Raises:
      ValueError: a concrete time is non-finite or outside ``[0, t_max]``.
    """
    t = self._t(t)
    return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

  def alpha(self, t: jax.typing.ArrayLike) -> jax.Array:
    """The signal scale ``alpha(t) = exp(-B(t) / 2)``.

    Args:
      t: times in ``[0, t_max]``, any shape.

    Returns:
      float32 values of ``t``'s shape.

    Raises:
      ValueError: a concrete time is non-finite or outside ``[0, t_max]``.
    """
    return jnp.exp(-0.5 * self.integral(t))

  def sigma(self, t: jax.typing.ArrayLike) -> jax.Array:
    """The noise scale ``sigma(t) = sqrt(1 - exp(-B(t)))``.

    Args:
      t: times in ``[0, t_max]``, any shape.

    Returns:
      float32 values of ``t``'s shape.

    Raises:
      ValueError: a concrete time is non-finite or outside ``[0, t_max]``.
    """
    return jnp.sqrt(-jnp.expm1(-self.integral(t)))

  def edm_sigma(self, t: jax.typing.ArrayLike) -> jax.Array:
    """The EDM noise level ``sigma(t) / alpha(t) = sqrt(exp(B(t)) - 1)``.

    Args:
      t: times in ``[0, t_max]``, any shape.

    Returns:
      float32 values of ``t``'s shape.

    Raises:
      ValueError: a concrete time is non-finite or outside ``[0, t_max]``.
    """
    return jnp.sqrt(jnp.expm1(self.integral(t)))

  def t_from_edm_sigma(self, s: jax.typing.ArrayLike) -> jax.Array:
    """Inverse of :meth:`edm_sigma`: solves ``B(t) = log(1 + s^2)`` for ``t``.

    Levels beyond ``edm_sigma(t_max)`` map beyond ``t_max`` (no clipping here).

    Args:
      s: EDM noise levels ``>= 0``, any shape.

    Returns:
      float32 VP times of ``s``'s shape.
    """
    b = jnp.log1p(jnp.square(jnp.asarray(s, jnp.float32)))
    d = self.beta_max - self.beta_min
    # The positive root of d/2 t^2 + beta_min t - b = 0, in a cancellation-free form.
    return 2.0 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * d * b))

  def condition(self, t: jax.typing.ArrayLike) -> jax.Array:
    """The network's noise input ``log(edm_sigma(t)) / 4`` (EDM's ``c_noise``).

    Args:
      t: times in ``[0, t_max]``, any shape.

    Returns:
      float32 values of ``t``'s shape.

    Raises:
      ValueError: a concrete time is non-finite or outside ``[0, t_max]``.
    """
    return 0.25 * jnp.log(self.edm_sigma(t))

  def _log_expm1_b(self, t):
    return jnp.log(jnp.expm1(self.integral(t)))

  def t_density(self, t: jax.typing.ArrayLike, sampling: str = "importance") -> jax.Array:
    """The normalised density on ``[t_min, t_max]`` that :meth:`sample_t` draws from.

    ``"importance"``: ``p(t) = beta(t) / sigma(t)^2 / Z`` (note
    ``beta / sigma^2 = d/dt log(exp(B(t)) - 1)``, so ``Z`` is a difference of
    logs); ``"uniform"``: ``1 / (t_max - t_min)``.

    Args:
      t: times in ``[t_min, t_max]``, any shape.
      sampling: ``"importance"`` or ``"uniform"``.

    Returns:
      float32 densities of ``t``'s shape.

    Raises:
      ValueError: ``sampling`` is unknown, or a concrete time is outside
        ``[t_min, t_max]``.
    """
    _check_sampling(sampling)
    t = self.check_t(t)
    if sampling == "uniform":
      return jnp.full_like(t, 1.0 / (self.t_max - self.t_min))
    z = self._log_expm1_b(self.t_max) - self._log_expm1_b(self.t_min)
    return self.beta(t) / jnp.square(self.sigma(t)) / z

  def sample_t(self, key: jax.Array, shape: Sequence[int] = (), sampling: str = "importance") -> jax.Array:
    """Draws times on ``[t_min, t_max]``, ``"importance"`` (∝ β/σ²) or ``"uniform"``.

    Importance sampling inverts the CDF in closed form:
    ``L = log(exp(B(t)) - 1)`` is uniform between its end values, then
    ``B = softplus(L)`` and ``t`` solves the quadratic ``B(t) = B``.

    Args:
      key: PRNG key.
      shape: the shape of the draw.
      sampling: ``"importance"`` or ``"uniform"``.

    Returns:
      float32 times of shape ``shape`` in ``[t_min, t_max]``.

    Raises:
      ValueError: ``sampling`` is unknown.
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

  Raises:
    ValueError: ``t_sampling`` is unknown.
  """

  sde: VPSDE = VPSDE()
  t_sampling: str = "uniform"

  def __post_init__(self) -> None:
    _check_sampling(self.t_sampling)

  def sample_level(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One draw ``(t, s)``: VP time and the matching EDM level (scalars).

    Args:
      key: PRNG key.

    Returns:
      ``(t, s)``: float32 scalars, ``t`` drawn by ``t_sampling`` and
      ``s = sde.edm_sigma(t)``.
    """
    t = self.sde.sample_t(key, (), self.t_sampling)
    return t, self.sde.edm_sigma(t)

  def eps(self, model: nnx.Module, x: jax.Array, sigma: jax.Array) -> jax.Array:
    """The model's noise prediction at EDM-coordinate ``x`` and level ``sigma``.

    Args:
      model: the epsilon network ``model(x_t [B, ...], c [B]) -> [B, ...]``.
      x: ``[B, ...]`` noisy samples in the EDM coordinate.
      sigma: ``[B]`` EDM noise levels.

    Returns:
      ``[B, ...]`` predicted noise.
    """
    t = self.sde.t_from_edm_sigma(sigma)
    x_t = expand_to(self.sde.alpha(jnp.clip(t, 0.0, self.sde.t_max)), x) * x
    return model(x_t, 0.25 * jnp.log(sigma))

  def denoise(self, model: nnx.Module, x: jax.Array, sigma: jax.Array) -> jax.Array:
    """``D(x; s) = x - s eps_hat`` in the EDM coordinate.

    Args:
      model: the epsilon network.
      x: ``[B, ...]`` noisy samples in the EDM coordinate.
      sigma: ``[B]`` EDM noise levels.

    Returns:
      ``[B, ...]`` denoised samples.
    """
    return x - expand_to(sigma, x) * self.eps(model, x, sigma)

  def loss(
    self,
    model: nnx.Module,
    x0: jax.Array,
    t: jax.Array,
    sigma: jax.Array,
    noise: jax.Array,
    correction: jax.Array | None = None,
  ) -> jax.Array:
    """Per-sample DSM loss ``[B]`` (see the class docstring).

    Args:
      model: the network.
      x0: ``[B, ...]`` clean samples (rank >= 2).
      t: ``[B]`` VP times.
      sigma: ``[B]`` EDM noise levels matching ``t``.
      noise: ``[B, ...]`` standard normal draws.
      correction: optional ``[B, ...]`` score correction ``grad_x log w_t`` in
        the EDM coordinate (TIW-DSM); None is plain DSM.

    Returns:
      ``[B]`` float32 per-sample losses.

    Raises:
      ValueError: ``t`` is not ``[B]`` for ``x0`` of shape ``[B, ...]``.
    """
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

  Raises:
    ValueError: ``sigma_data`` or ``p_std`` is not ``> 0``.
  """

  sigma_data: float = 0.5
  p_mean: float = -1.2
  p_std: float = 1.2
  sde: VPSDE = VPSDE()

  def __post_init__(self) -> None:
    if not self.sigma_data > 0 or not self.p_std > 0:
      raise ValueError("sigma_data and p_std must be > 0.")

  def sample_level(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One draw ``(t, s)``: ``s`` log-normal, ``t`` its VP time clipped to the range.

    Args:
      key: PRNG key.

    Returns:
      ``(t, s)``: float32 scalars, ``log s ~ N(p_mean, p_std^2)`` and ``t`` in
      ``[sde.t_min, sde.t_max]``.
    """
    s = jnp.exp(self.p_mean + self.p_std * jax.random.normal(key, (), jnp.float32))
    t = jnp.clip(self.sde.t_from_edm_sigma(s), self.sde.t_min, self.sde.t_max)
    return t, s

  def loss_weight(self, sigma: jax.Array) -> jax.Array:
    """``lambda(s) = (s^2 + sd^2) / (s sd)^2``.

    Args:
      sigma: EDM noise levels ``> 0``, any shape.

    Returns:
      Loss weights of ``sigma``'s shape.
    """
    sd2 = self.sigma_data**2
    return (jnp.square(sigma) + sd2) / (jnp.square(sigma) * sd2)

  def denoise(self, model: nnx.Module, x: jax.Array, sigma: jax.Array) -> jax.Array:
    """The preconditioned denoiser ``D(x; s) = c_skip x + c_out F(c_in x, c_noise)``.

    Args:
      model: the raw network ``F(x [B, ...], c [B]) -> [B, ...]``.
      x: ``[B, ...]`` noisy samples in the EDM coordinate.
      sigma: ``[B]`` EDM noise levels.

    Returns:
      ``[B, ...]`` denoised samples.
    """
    s = expand_to(sigma, x)
    sd = self.sigma_data
    norm = jnp.sqrt(jnp.square(s) + sd * sd)
    c_skip = sd * sd / jnp.square(norm)
    c_out = s * sd / norm
    return c_skip * x + c_out * model(x / norm, 0.25 * jnp.log(sigma))

  def loss(
    self,
    model: nnx.Module,
    x0: jax.Array,
    t: jax.Array,
    sigma: jax.Array,
    noise: jax.Array,
    correction: jax.Array | None = None,
  ) -> jax.Array:
    """Per-sample DSM loss ``[B]`` (see the class docstring); ``t`` is unused.

    Args:
      model: the network.
      x0: ``[B, ...]`` clean samples (rank >= 2).
      t: ``[B]`` VP times (unused; the signature is shared with VPDiffusion).
      sigma: ``[B]`` EDM noise levels matching ``t``.
      noise: ``[B, ...]`` standard normal draws.
      correction: optional ``[B, ...]`` score correction ``grad_x log w_t`` in
        the EDM coordinate (TIW-DSM); None is plain DSM.

    Returns:
      ``[B]`` float32 per-sample losses.

    Raises:
      ValueError: ``sigma`` is not ``[B]`` for ``x0`` of shape ``[B, ...]``.
    """
    _check_per_sample_levels(x0, sigma, "sigma")
    s = expand_to(sigma, x0)
    target = x0 if correction is None else x0 + jnp.square(s) * correction
    d = self.denoise(model, x0 + s * noise, sigma)
    return self.loss_weight(sigma) * _mean_per_sample(jnp.square(d - target))


Diffusion = VPDiffusion | EDMDiffusion
