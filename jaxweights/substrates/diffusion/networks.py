"""Score networks: a noise-conditional MLP for low-dimensional data and a
small UNet for images."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def sinusoidal_embedding(c: jax.Array, dim: int, max_freq: float = 100.0) -> jax.Array:
  """``[B]`` -> ``[B, dim]`` sin/cos features at geometric frequencies in ``[1, max_freq]``.

  Args:
    c: ``[B]`` float noise conditions (e.g. ``log(sigma) / 4``).
    dim: number of features, even: ``dim / 2`` sines then ``dim / 2`` cosines.
    max_freq: the highest frequency (the lowest is 1).

  Returns:
    ``[B, dim]`` float32 features.

  Raises:
    ValueError: ``dim`` is odd.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxweights import diffusion
    >>> e = diffusion.sinusoidal_embedding(jnp.zeros(3), 8)
    >>> e.shape, e[0].tolist()
    ((3, 8), [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
  """
  if dim % 2:
    raise ValueError(f"embedding dim must be even, got {dim}.")
  freqs = jnp.exp(jnp.linspace(0.0, math.log(max_freq), dim // 2, dtype=jnp.float32))
  arg = jnp.asarray(c, jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


class NoiseEmbedding(nnx.Module):
  """Sinusoidal features of the noise condition ``c`` followed by a 2-layer MLP.

  Args:
    dim: number of sinusoidal features (even).
    out: output width.
    rngs: the parameter initialisation streams.
  """

  def __init__(self, dim: int, out: int, *, rngs: nnx.Rngs) -> None:
    self.dim = dim
    self.fc1 = nnx.Linear(dim, out, rngs=rngs)
    self.fc2 = nnx.Linear(out, out, rngs=rngs)

  def __call__(self, c: jax.Array) -> jax.Array:
    """Embeds the noise conditions.

    Args:
      c: ``[B]`` float noise conditions.

    Returns:
      ``[B, out]`` embeddings.
    """
    return self.fc2(jax.nn.silu(self.fc1(sinusoidal_embedding(c, self.dim))))


class ScoreMLP(nnx.Module):
  """A residual SiLU MLP ``(x [B, ...], c [B]) -> [B, ...]`` (any trailing shape).

  The noise embedding is added to every hidden block. Used for 2-D toy data and
  as the quick score network for flattened 8x8 digits.

  Args:
    features: number of input (and output) features per sample: the product
      of the trailing shape.
    hidden: hidden width.
    depth: number of residual blocks (>= 1).
    embed_dim: number of sinusoidal features of the noise condition.
    rngs: the parameter initialisation streams.

  Raises:
    ValueError: ``depth < 1``.
  """

  def __init__(
    self, features: int, hidden: int = 128, depth: int = 3, embed_dim: int = 32, *, rngs: nnx.Rngs
  ) -> None:
    if depth < 1:
      raise ValueError(f"depth must be >= 1, got {depth}.")
    self.features = features
    self.embed = NoiseEmbedding(embed_dim, hidden, rngs=rngs)
    self.inp = nnx.Linear(features, hidden, rngs=rngs)
    self.blocks = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs) for _ in range(depth)])
    self.emb_proj = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs) for _ in range(depth)])
    self.out = nnx.Linear(hidden, features, rngs=rngs)

  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    """The network's output for noisy inputs at noise conditions ``c``.

    Args:
      x: ``[B, ...]`` float inputs with ``features`` elements per sample.
      c: ``[B]`` float noise conditions.

    Returns:
      An array of ``x``'s shape ``[B, ...]``.
    """
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

  Args:
    image_shape: ``(H, W, C)`` with even ``H`` and ``W``.
    channels: channels at full resolution (twice that at half resolution).
    embed_dim: number of sinusoidal features of the noise condition.
    rngs: the parameter initialisation streams.

  Raises:
    ValueError: ``H`` or ``W`` is odd.
  """

  def __init__(
    self, image_shape: Sequence[int] = (8, 8, 1), channels: int = 32, embed_dim: int = 32, *, rngs: nnx.Rngs
  ) -> None:
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
    """The network's output for noisy images at noise conditions ``c``.

    Args:
      x: ``[B, H, W, C]`` (or flat ``[B, H*W*C]``) float images.
      c: ``[B]`` float noise conditions.

    Returns:
      An array of ``x``'s shape.
    """
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
