"""The discriminator on frozen noise-conditional features, and its choice on a validation split.

The authors' discriminator is a small head on the features of a frozen,
pretrained, noise-conditional classifier (ADM's encoder): it sees ``(x_t, t)``
through a representation learned elsewhere, not raw pixels. The analogue here:
a noise-conditional network pretrained without labels on the data a user has
(plain DSM on ``D_obs``; :func:`pretrain_encoder`), frozen; the discriminator is
a small :class:`~jaxweights.TimeDiscriminator` head on its last hidden layer
(:class:`FeatureDiscriminator`).

The head's size and training length are chosen on a validation split of the
reference and biased sets (:func:`select_discriminator`: the balanced held-out
BCE of perturbed samples), never on the test digits the metrics use.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxweights import density_ratio as dr
from jaxweights import diffusion as df


class FrozenFeatures(nnx.Variable):
  """Arrays of the frozen feature map: not ``nnx.Param``, so the optimiser leaves them."""


def score_mlp_features(p: dict, x: jax.Array, c: jax.Array, embed_dim: int) -> jax.Array:
  """The last hidden layer of a :class:`~jaxweights.diffusion.ScoreMLP` (``silu(h)``, before ``out``).

  Args:
    p: the network's pure state dict (``nnx.to_pure_dict``).
    x: ``[B, ...]`` inputs.
    c: ``[B]`` noise conditions.
    embed_dim: the network's number of sinusoidal features.

  Returns:
    ``[B, hidden]`` features.
  """
  lin = lambda q, v: v @ q["kernel"] + q["bias"][None, :]
  h = lin(p["inp"], jnp.reshape(x, (x.shape[0], -1)))
  e = jax.nn.silu(
    lin(p["embed"]["fc2"], jax.nn.silu(lin(p["embed"]["fc1"], df.sinusoidal_embedding(c, embed_dim))))
  )
  for i in sorted(p["blocks"]):
    h = h + lin(p["blocks"][i], jax.nn.silu(h + lin(p["emb_proj"][i], e)))
  return jax.nn.silu(h)


class FeatureDiscriminator(nnx.Module):
  """``(x_t, c) -> logits [B]``: a TimeDiscriminator head on frozen ScoreMLP features.

  Args:
    encoder: the pure state dict of a trained ScoreMLP (frozen here).
    embed_dim: that network's ``embed_dim``.
    hidden: the head's width.
    depth: the head's number of residual blocks.
    rngs: the head's initialisation streams.
  """

  def __init__(self, encoder: dict, embed_dim: int, hidden: int, depth: int, *, rngs: nnx.Rngs):
    self.encoder = FrozenFeatures(jax.tree.map(jnp.asarray, encoder))
    self.embed_dim = embed_dim
    width = int(np.shape(encoder["inp"]["bias"])[0])
    self.head = dr.TimeDiscriminator(width, hidden=hidden, depth=depth, embed_dim=16, rngs=rngs)

  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    return self.head(score_mlp_features(self.encoder.get_value(), x, c, self.embed_dim), c)


def split_fit_validation(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Disjoint ``(fit, validation)`` index arrays; at least one of each."""
  idx = rng.permutation(n)
  n_val = min(n - 1, max(1, int(round(fraction * n))))
  return idx[n_val:], idx[:n_val]


def validation_bce(
  model: dr.RatioModel,
  x_ref: np.ndarray,
  x_bias: np.ndarray,
  *,
  time_independent: bool,
  draws: int,
  seed: int,
  sde: df.VPSDE = df.VPSDE(),
) -> float:
  """Balanced BCE on held-out samples: (reference mean + biased mean) / 2.

  Each sample is perturbed ``draws`` times at ``t`` drawn as in training
  (importance-sampled, or ``t_min`` for the time-independent discriminator);
  the draws are fixed by ``seed`` so candidates are compared on the same noise.
  """
  key = jax.random.PRNGKey(seed)

  def bce(x, label, k):
    x = jnp.asarray(np.repeat(x, draws, axis=0))
    kt, kn = jax.random.split(k)
    if time_independent:
      t = jnp.full((x.shape[0],), sde.t_min, jnp.float32)
    else:
      t = sde.sample_t(kt, (x.shape[0],), "importance")
    noise = jax.random.normal(kn, x.shape, jnp.float32)
    x_t = df.expand_to(sde.alpha(t), x) * x + df.expand_to(sde.sigma(t), x) * noise
    logits = model.apply(model.params, x_t, t)
    return float(jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full(logits.shape, label))))

  k1, k2 = jax.random.split(key)
  return 0.5 * (bce(x_ref, 1.0, k1) + bce(x_bias, 0.0, k2))


def select_discriminator(
  disc_fn,
  candidates: Sequence[Sequence[int]],
  x_ref: np.ndarray,
  x_bias: np.ndarray,
  *,
  time_independent: bool,
  validation_fraction: float,
  batch_size: int,
  learning_rate: float,
  draws: int,
  seed: int,
) -> tuple[int, list[float]]:
  """The candidate ``(hidden, depth, num_steps)`` with the lowest validation BCE.

  Trains every candidate on the fit part of both sets and scores it on the
  validation part (:func:`validation_bce`).

  Returns:
    ``(index of the chosen candidate, validation BCE of every candidate)``.
  """
  rng = np.random.default_rng((seed, 11))
  ref_fit, ref_val = split_fit_validation(len(x_ref), validation_fraction, rng)
  bias_fit, bias_val = split_fit_validation(len(x_bias), validation_fraction, rng)
  scores = []
  for hidden, depth, num_steps in candidates:
    model, _ = dr.train_discriminator(
      disc_fn(seed, hidden, depth),
      x_ref[ref_fit],
      x_bias[bias_fit],
      num_steps=int(num_steps),
      batch_size=batch_size,
      learning_rate=learning_rate,
      time_independent=time_independent,
      seed=seed,
    )
    scores.append(
      validation_bce(
        model, x_ref[ref_val], x_bias[bias_val], time_independent=time_independent, draws=draws, seed=seed
      )
    )
  return int(np.argmin(scores)), scores
