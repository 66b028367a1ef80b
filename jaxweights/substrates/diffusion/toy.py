"""Closed-form Gaussian mixtures: exact scores and samples for tests and toy
experiments."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  """An isotropic Gaussian mixture ``sum_k pi_k N(mu_k, s_k^2 I)``.

  Perturbed as ``x = a x0 + b z`` it stays a mixture with means ``a mu_k`` and
  variances ``a^2 s_k^2 + b^2``: so :meth:`log_prob` and :meth:`score` at any
  noise level are exact (VP: ``a = alpha(t), b = sigma(t)``; EDM: ``a = 1,
  b = s``).

  Attributes:
    weights: ``[K]`` mixture weights (normalised on construction).
    means: ``[K, D]`` component means.
    stds: ``[K]`` per-component standard deviations.

  Raises:
    ValueError: the shapes disagree, a weight is negative (or all are 0), or a
      standard deviation is not ``> 0``.

  Examples:
    >>> import numpy as np
    >>> from jaxweights import diffusion
    >>> gm = diffusion.GaussianMixture(weights=(1, 3), means=((-1.0, 0.0), (1.0, 0.0)), stds=(0.5, 0.5))
    >>> gm.weights, gm.dim
    ((0.25, 0.75), 2)
    >>> x, component = gm.sample(np.random.default_rng(0), 5)
    >>> x.shape, component.shape
    ((5, 2), (5,))
  """

  weights: tuple
  means: tuple
  stds: tuple

  def __post_init__(self) -> None:
    w = np.asarray(self.weights, np.float64)
    m = np.asarray(self.means, np.float64)
    s = np.asarray(self.stds, np.float64)
    if w.ndim != 1 or m.ndim != 2 or s.shape != w.shape or m.shape[0] != w.shape[0]:
      raise ValueError(f"need weights [K], means [K, D], stds [K]; got {w.shape}, {m.shape}, {s.shape}.")
    if np.any(w < 0) or w.sum() <= 0 or np.any(s <= 0):
      raise ValueError("weights must be >= 0 (not all 0) and stds > 0.")
    object.__setattr__(self, "weights", tuple((w / w.sum()).tolist()))
    object.__setattr__(self, "means", tuple(map(tuple, m.tolist())))
    object.__setattr__(self, "stds", tuple(s.tolist()))

  @property
  def dim(self) -> int:
    """The data dimension ``D``."""
    return len(self.means[0])

  def log_prob(self, x: jax.Array, a: jax.typing.ArrayLike = 1.0, b: jax.typing.ArrayLike = 0.0) -> jax.Array:
    """``[B]`` log density of ``x`` (``[B, D]``) perturbed by ``a x0 + b z``.

    Args:
      x: ``[B, D]`` points.
      a: the signal scale, a scalar or ``[B]``.
      b: the noise scale, a scalar or ``[B]``.

    Returns:
      ``[B]`` float32 log densities of the perturbed mixture.
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

  def score(self, x: jax.Array, a: jax.typing.ArrayLike = 1.0, b: jax.typing.ArrayLike = 0.0) -> jax.Array:
    """``[B, D]`` ``grad_x log p`` of the perturbed mixture.

    Args:
      x: ``[B, D]`` points.
      a: the signal scale, a scalar or ``[B]``.
      b: the noise scale, a scalar or ``[B]``.

    Returns:
      ``[B, D]`` float32 scores.
    """
    return jax.grad(lambda z: jnp.sum(self.log_prob(z, a, b)))(jnp.asarray(x, jnp.float32))

  def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws: ``(x float32 [n, D], component int32 [n])``.

    Args:
      rng: the numpy generator to draw from.
      n: the number of draws.

    Returns:
      ``(x, component)``: float32 ``[n, D]`` samples and int32 ``[n]`` indices
      of the component each came from.
    """
    k = rng.choice(len(self.weights), size=n, p=np.asarray(self.weights))
    mu, s = np.asarray(self.means)[k], np.asarray(self.stds)[k]
    x = mu + s[:, None] * rng.standard_normal((n, self.dim))
    return x.astype(np.float32), k.astype(np.int32)

  def with_weights(self, weights: Sequence[float]) -> GaussianMixture:
    """The same components with other mixture weights.

    Args:
      weights: ``[K]`` non-negative weights (normalised on construction).

    Returns:
      A new :class:`GaussianMixture`.
    """
    return GaussianMixture(tuple(weights), self.means, self.stds)

  def mix(self, other: GaussianMixture, fraction: float) -> GaussianMixture:
    """``fraction * other + (1 - fraction) * self`` (same components).

    Args:
      other: a mixture with the same means and standard deviations.
      fraction: the weight of ``other``, in ``[0, 1]``.

    Returns:
      A new :class:`GaussianMixture` with the interpolated weights.

    Raises:
      ValueError: the two mixtures have different components.
    """
    if self.means != other.means or self.stds != other.stds:
      raise ValueError("mix needs mixtures with the same components.")
    w = (1 - fraction) * np.asarray(self.weights) + fraction * np.asarray(other.weights)
    return self.with_weights(w)
