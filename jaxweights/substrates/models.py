"""Flax NNX models used by the experiments, the benchmarks and users.

``MLP`` and ``TransformerLM`` are built only from ``nnx.Linear``, ``nnx.Embed`` and
``nnx.LayerNorm`` (the experiments' models). ``Llama`` is a Llama-style decoder
from stock NNX layers (``RMSNorm``, ``LinearGeneral`` attention projections with
rotary embeddings, a SwiGLU MLP, a tied embedding, ``nnx.scan``-stacked blocks):
the shape of model users bring, and the bring-your-own-model benchmark.
Per-sample gradient norms are exact on all three (see ``grad_norms``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxweights.core.sharding import constrain_batch


class MLP(nnx.Module):
  """A ReLU multi-layer perceptron ``[batch, in] -> [batch, out]``.

  ``nnx.Linear`` layers (with bias) of sizes ``in_features -> *hidden ->
  out_features``, with a ReLU after every layer but the last.

  Args:
    in_features: input width.
    hidden: the hidden layers' widths (empty for a linear model).
    out_features: output width (e.g. the number of classes).
    rngs: the parameter initialisation streams.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxweights as jw
    >>> model = jw.MLP(4, [8], 2, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((3, 4))).shape
    (3, 2)
    >>> jw.count_params(model)  # (4 * 8 + 8) + (8 * 2 + 2)
    58
  """

  def __init__(
    self,
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    rngs: nnx.Rngs,
  ) -> None:
    sizes = [in_features, *hidden, out_features]
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the network.

    Args:
      x: ``[batch, in_features]`` float inputs.

    Returns:
      ``[batch, out_features]`` outputs (logits for a classifier).
    """
    for layer in self.layers[:-1]:
      x = jax.nn.relu(layer(x))
    return self.layers[-1](x)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Sizes of :class:`TransformerLM`.

  ``small()`` (4 layers x 256, vocab 4096) is the benchmark model; ``tiny()`` is
  the quick-experiment model.

  Attributes:
    vocab_size: number of token ids (embedding rows and output logits).
    d_model: width of the residual stream.
    n_layers: number of transformer blocks.
    n_heads: attention heads per block (must divide ``d_model``).
    d_ff: hidden width of each block's MLP.
    max_len: longest sequence (rows of the learned position embedding).
    dtype: compute dtype, ``"float32"``, ``"bfloat16"`` (mixed precision) or
      ``"float16"``; parameters stay float32.

  Raises:
    ValueError: a size is ``< 1``, ``n_heads`` does not divide ``d_model``, or
      ``dtype`` is not one of the three above.

  Examples:
    >>> import jaxweights as jw
    >>> cfg = jw.TransformerConfig.tiny(n_layers=1)
    >>> cfg.vocab_size, cfg.d_model, cfg.n_layers
    (1024, 96, 1)
  """

  vocab_size: int = 4096
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 4
  d_ff: int = 1024
  max_len: int = 256
  dtype: str = "float32"  # compute dtype ("bfloat16" for mixed precision); params stay float32

  @classmethod
  def small(cls, **kw: Any) -> TransformerConfig:
    """The benchmark model: 4 layers of width 256, 4 heads, vocab 4096.

    Args:
      **kw: field overrides.

    Returns:
      The config (the class defaults, updated with ``kw``).
    """
    return cls(**kw)

  @classmethod
  def tiny(cls, **kw: Any) -> TransformerConfig:
    """The quick-experiment model: 2 layers of width 96, 4 heads, vocab 1024, max_len 64.

    Args:
      **kw: field overrides.

    Returns:
      The config, updated with ``kw``.
    """
    base = dict(vocab_size=1024, d_model=96, n_layers=2, n_heads=4, d_ff=384, max_len=64)
    base.update(kw)
    return cls(**base)

  def __post_init__(self) -> None:
    if self.d_model % self.n_heads:
      raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}).")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}.")
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention with a fused QKV projection.

  Args:
    cfg: the model sizes (``d_model``, ``n_heads``, ``dtype``).
    rngs: the parameter initialisation streams.
  """

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs) -> None:
    self.n_heads = cfg.n_heads
    self.qkv = nnx.Linear(cfg.d_model, 3 * cfg.d_model, dtype=cfg.dtype, rngs=rngs)
    self.out = nnx.Linear(cfg.d_model, cfg.d_model, dtype=cfg.dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Attends causally within each sequence.

    Args:
      x: ``[batch, seq, d_model]`` inputs.

    Returns:
      ``[batch, seq, d_model]`` outputs.
    """
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
    heads = lambda z: z.reshape(b, t, self.n_heads, d // self.n_heads)
    y = jax.nn.dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
    return self.out(y.reshape(b, t, d))


class Block(nnx.Module):
  """A pre-LayerNorm transformer block: causal attention and a GELU MLP, with residuals.

  Args:
    cfg: the model sizes.
    rngs: the parameter initialisation streams.
  """

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs) -> None:
    self.ln1 = nnx.LayerNorm(cfg.d_model, dtype=cfg.dtype, rngs=rngs)
    self.attn = CausalSelfAttention(cfg, rngs=rngs)
    self.ln2 = nnx.LayerNorm(cfg.d_model, dtype=cfg.dtype, rngs=rngs)
    self.fc = nnx.Linear(cfg.d_model, cfg.d_ff, dtype=cfg.dtype, rngs=rngs)
    self.proj = nnx.Linear(cfg.d_ff, cfg.d_model, dtype=cfg.dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the block.

    Args:
      x: ``[batch, seq, d_model]`` residual stream.

    Returns:
      ``[batch, seq, d_model]`` residual stream.
    """
    x = x + self.attn(self.ln1(x))
    return x + self.proj(jax.nn.gelu(self.fc(self.ln2(x))))


class TransformerLM(nnx.Module):
  """A pre-LayerNorm decoder-only transformer: ``[batch, seq]`` ids -> logits.

  Learned absolute position embeddings, GELU MLPs, an untied output head.
  ``cfg.dtype="bfloat16"`` computes in bf16 with float32 parameters (mixed
  precision); the loss helpers cast logits to float32, so per-sample losses and
  the weights computed from them stay float32.

  Args:
    cfg: the model sizes and compute dtype.
    rngs: the parameter initialisation streams.
  """

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs) -> None:
    self.cfg = cfg
    self.tok = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, rngs=rngs)
    self.pos = nnx.Embed(cfg.max_len, cfg.d_model, dtype=cfg.dtype, rngs=rngs)
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.ln_f = nnx.LayerNorm(cfg.d_model, dtype=cfg.dtype, rngs=rngs)
    self.head = nnx.Linear(cfg.d_model, cfg.vocab_size, dtype=cfg.dtype, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Next-token logits.

    Args:
      tokens: ``[batch, seq]`` integer token ids, ``seq <= max_len``.

    Returns:
      ``[batch, seq, vocab_size]`` logits in the compute dtype.

    Raises:
      ValueError: ``tokens`` is not rank 2 or is longer than ``max_len``.
    """
    return self.head(self.ln_f(self.hidden_states(tokens)))

  def hidden_states(self, tokens: jax.Array, layer: int | None = None) -> jax.Array:
    """The residual stream ``[batch, seq, d_model]`` after block ``layer``.

    ``layer=None`` means after the last block (before the final LayerNorm); 0 is
    the embeddings. Q-probes read a late layer's state at the last token.

    Args:
      tokens: ``[batch, seq]`` integer token ids, ``seq <= max_len``.
      layer: the number of blocks to run, in ``[0, n_layers]``; None runs all.

    Returns:
      ``[batch, seq, d_model]`` hidden states in the compute dtype.

    Raises:
      ValueError: ``tokens`` is not rank 2 or is longer than ``max_len``, or
        ``layer`` is out of range.
    """
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [batch, seq], got shape {tokens.shape}.")
    n = self.cfg.n_layers if layer is None else layer
    if not 0 <= n <= self.cfg.n_layers:
      raise ValueError(f"layer must be in [0, {self.cfg.n_layers}], got {layer}.")
    b, t = tokens.shape
    if t > self.cfg.max_len:
      raise ValueError(f"sequence length {t} exceeds max_len {self.cfg.max_len}.")
    # Positions per sample (not one shared [seq] lookup) so every layer's output
    # gradient is per-sample, which exact ghost gradient norms need.
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    x = self.tok(tokens) + self.pos(positions)
    for block in self.blocks[:n]:
      x = block(x)
    return x


def count_params(model: nnx.Module) -> int:
  """Number of scalar parameters in ``model``.

  Args:
    model: any NNX module.

  Returns:
    The total size of its ``nnx.Param`` leaves (other variables, such as RNG
    state or batch statistics, do not count).

  Examples:
    >>> from flax import nnx
    >>> import jaxweights as jw
    >>> jw.count_params(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))  # 3 * 2 + 2
    8
  """
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# --- Llama-style decoder ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Sizes and options of :class:`Llama`.

  Attributes:
    vocab_size: number of token ids (embedding rows and output logits).
    d_model: width of the residual stream.
    n_layers: number of blocks.
    n_heads: attention heads; ``d_model / n_heads`` must be even.
    d_ff: hidden width of the SwiGLU MLP.
    max_len: longest sequence accepted.
    tied: the output head is the token embedding (``embed.attend``).
    scan: stack the blocks with ``nnx.vmap`` and run them with ``nnx.scan``
      (compile time flat in depth; parameters get a leading layer axis).
    dropout: dropout rate after attention and MLP (0 = none).
    rope_base: rotary embedding base.
    dtype: compute dtype; parameters stay float32.
    remat: recompute each block's activations in the backward pass
      (``nnx.remat``): memory of one block instead of all, for a second forward.

  Raises:
    ValueError: a size is ``< 1``, the heads are not of even size, or
      ``dropout`` is outside ``[0, 1)``.
  """

  vocab_size: int = 4096
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 4
  d_ff: int = 688
  max_len: int = 256
  tied: bool = True
  scan: bool = True
  dropout: float = 0.0
  rope_base: float = 10000.0
  dtype: str = "float32"
  remat: bool = False

  def __post_init__(self) -> None:
    if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
      raise ValueError(
        f"d_model ({self.d_model}) must split into n_heads ({self.n_heads}) heads "
        "of even size (rotary embeddings rotate pairs)."
      )
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")


def rotary(x: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding of ``x`` ``[batch, seq, heads, head_dim]`` (half-split pairs).

  Position ``p`` rotates the pair ``(x[..., i], x[..., i + head_dim / 2])`` by the
  angle ``p * base^(-i / (head_dim / 2))`` (Su et al., 2021, *RoFormer*).

  Args:
    x: ``[batch, seq, heads, head_dim]`` queries or keys, ``head_dim`` even.
    base: the frequency base.

  Returns:
    ``[batch, seq, heads, head_dim]`` rotated values in ``x``'s dtype (computed
    in float32).
  """
  t, d = x.shape[1], x.shape[-1]
  inv = base ** (-jnp.arange(0, d // 2, dtype=jnp.float32) / (d // 2))
  ang = jnp.arange(t, dtype=jnp.float32)[:, None] * inv[None, :]  # [seq, d/2]
  cos, sin = jnp.cos(ang)[None, :, None, :], jnp.sin(ang)[None, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).astype(x.dtype)


class LlamaBlock(nnx.Module):
  """RMSNorm -> rotary causal attention (stock ``nnx.LinearGeneral`` projections)
  -> RMSNorm -> SwiGLU MLP, with residuals.

  Args:
    cfg: the model sizes and options.
    rngs: the parameter initialisation and dropout streams.
  """

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs) -> None:
    h, hd = cfg.n_heads, cfg.d_model // cfg.n_heads
    kw = dict(use_bias=False, dtype=cfg.dtype, rngs=rngs)
    self.base = cfg.rope_base
    self.attn_norm = nnx.RMSNorm(cfg.d_model, dtype=cfg.dtype, rngs=rngs)
    self.q = nnx.LinearGeneral(cfg.d_model, (h, hd), **kw)
    self.k = nnx.LinearGeneral(cfg.d_model, (h, hd), **kw)
    self.v = nnx.LinearGeneral(cfg.d_model, (h, hd), **kw)
    self.o = nnx.LinearGeneral((h, hd), cfg.d_model, axis=(-2, -1), **kw)
    self.mlp_norm = nnx.RMSNorm(cfg.d_model, dtype=cfg.dtype, rngs=rngs)
    self.gate = nnx.Linear(cfg.d_model, cfg.d_ff, **kw)
    self.up = nnx.Linear(cfg.d_model, cfg.d_ff, **kw)
    self.down = nnx.Linear(cfg.d_ff, cfg.d_model, **kw)
    self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the block.

    Args:
      x: ``[batch, seq, d_model]`` residual stream.

    Returns:
      ``[batch, seq, d_model]`` residual stream.
    """
    x = constrain_batch(x)
    h = self.attn_norm(x)
    q, k = rotary(self.q(h), self.base), rotary(self.k(h), self.base)
    y = jax.nn.dot_product_attention(q, k, self.v(h), is_causal=True)
    x = x + self.drop(self.o(y))
    h = self.mlp_norm(x)
    return x + self.drop(self.down(jax.nn.silu(self.gate(h)) * self.up(h)))


class Llama(nnx.Module):
  """A Llama-style decoder: ``[batch, seq]`` ids -> ``[batch, seq, vocab]`` logits.

  RMSNorm, rotary attention and a SwiGLU MLP built from stock NNX layers; tied
  input/output embeddings (``cfg.tied``) and ``nnx.scan``-stacked blocks
  (``cfg.scan``) by default. Every parameter's per-sample gradient norm is exact
  under ``method="ghost"`` (the tied embedding gets the norm of the sum of its
  lookup and head gradients; stacked blocks get per-layer-slice norms).

  Args:
    cfg: the model sizes and options.
    rngs: the parameter initialisation and dropout streams.
  """

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs) -> None:
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, rngs=rngs)
    if cfg.scan:

      @nnx.split_rngs(splits=cfg.n_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def create(rngs):
        return LlamaBlock(cfg, rngs=rngs)

      self.blocks = create(rngs)
    else:
      self.blocks = nnx.List([LlamaBlock(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.norm = nnx.RMSNorm(cfg.d_model, dtype=cfg.dtype, rngs=rngs)
    if not cfg.tied:
      self.head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False, dtype=cfg.dtype, rngs=rngs)

  def hidden_states(self, tokens: jax.Array) -> jax.Array:
    """The residual stream ``[batch, seq, d_model]`` after the last block.

    Args:
      tokens: ``[batch, seq]`` integer token ids, ``seq <= max_len``.

    Returns:
      ``[batch, seq, d_model]`` hidden states (before the final RMSNorm).

    Raises:
      ValueError: ``tokens`` is not rank 2 or is longer than ``max_len``.
    """
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [batch, seq], got shape {tokens.shape}.")
    if tokens.shape[1] > self.cfg.max_len:
      raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_len {self.cfg.max_len}.")
    x = constrain_batch(self.embed(tokens))
    apply = nnx.remat(lambda block, x: block(x)) if self.cfg.remat else (lambda block, x: block(x))
    if self.cfg.scan:

      @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
      def run(block, x):
        return apply(block, x)

      return constrain_batch(run(self.blocks, x))
    for block in self.blocks:
      x = apply(block, x)
    return constrain_batch(x)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Next-token logits.

    Args:
      tokens: ``[batch, seq]`` integer token ids, ``seq <= max_len``.

    Returns:
      ``[batch, seq, vocab_size]`` logits in the compute dtype.

    Raises:
      ValueError: ``tokens`` is not rank 2 or is longer than ``max_len``.
    """
    h = self.norm(self.hidden_states(tokens))
    return constrain_batch(self.embed.attend(h) if self.cfg.tied else self.head(h))
