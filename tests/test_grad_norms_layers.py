"""Exact ghost norms for every stock NNX layer that holds parameters.

Each case wraps one layer (or a stock composite) between a fixed input map and a
per-sample loss; ghost norms must be captured exactly (``fallback="error"``) and
equal ``vmap`` norms at rel. 1e-5 in float32. The errors measured here are
printed by ``python -m tests.test_grad_norms_layers`` for the README table.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxweights as jw
from jaxweights import grad_norms as gn

RTOL = 1e-5


class Wrap(nnx.Module):
  """``layer`` applied to a ``[B, ...]`` input, then a sum-of-squares per sample."""

  def __init__(self, layer, fn=None):
    self.layer = layer
    self.fn = fn

  def __call__(self, x):
    return self.fn(self.layer, x) if self.fn else self.layer(x)


def loss(model, batch):
  y = model(batch["x"]).astype(jnp.float32)
  y = y.reshape(y.shape[0], -1)
  return jw.LossOutput(jnp.sum(jnp.tanh(y) * batch["t"][:, : y.shape[1]], -1))


def r():
  return nnx.Rngs(0)


CASES = {
  "Linear": (lambda: nnx.Linear(6, 5, rngs=r()), (4, 3, 6), None),
  "Linear_T1": (lambda: nnx.Linear(6, 5, rngs=r()), (4, 6), None),
  "LinearGeneral_out_heads": (lambda: nnx.LinearGeneral(6, (2, 3), rngs=r()), (4, 3, 6), None),
  "LinearGeneral_in_heads": (
    lambda: nnx.LinearGeneral((2, 3), 5, axis=(-2, -1), rngs=r()),
    (4, 3, 2, 3),
    None,
  ),
  "LinearGeneral_axis0": (lambda: nnx.LinearGeneral(3, 5, axis=1, rngs=r()), (4, 3, 6), None),
  "Einsum": (lambda: nnx.Einsum("btd,dhk->bthk", (6, 2, 3), (2, 3), rngs=r()), (4, 3, 6), None),
  "Conv1d": (lambda: nnx.Conv(2, 3, (3,), rngs=r()), (4, 7, 2), None),
  "Conv2d_stride_pad": (
    lambda: nnx.Conv(2, 4, (3, 3), strides=(2, 1), padding="VALID", rngs=r()),
    (4, 7, 6, 2),
    None,
  ),
  "Conv2d_dilation_groups": (
    lambda: nnx.Conv(4, 6, (2, 2), kernel_dilation=(2, 1), feature_group_count=2, rngs=r()),
    (4, 6, 5, 4),
    None,
  ),
  "ConvTranspose": (lambda: nnx.ConvTranspose(2, 3, (3,), rngs=r()), (4, 5, 2), None),
  "Embed": (lambda: nnx.Embed(5, 4, rngs=r()), "ids", None),
  "Embed_attend": (lambda: nnx.Embed(5, 4, rngs=r()), (4, 3, 4), lambda l, x: l.attend(x)),
  "LayerNorm": (lambda: nnx.LayerNorm(6, rngs=r()), (4, 3, 6), None),
  "RMSNorm": (lambda: nnx.RMSNorm(6, rngs=r()), (4, 3, 6), None),
  "GroupNorm": (lambda: nnx.GroupNorm(6, num_groups=3, rngs=r()), (4, 3, 6), None),
  "BatchNorm_eval": (lambda: nnx.BatchNorm(6, use_running_average=True, rngs=r()), (4, 3, 6), None),
  "MultiHeadAttention": (
    lambda: nnx.MultiHeadAttention(
      num_heads=2,
      in_features=6,
      qkv_features=4,
      decode=False,
      deterministic=True,
      normalize_qk=True,
      rngs=r(),
    ),
    (4, 3, 6),
    None,
  ),
}


def case(name):
  make, shape, fn = CASES[name]
  rng = np.random.default_rng(0)
  if shape == "ids":
    x = jnp.asarray(rng.integers(0, 5, (4, 6)))  # repeated ids within a sample
  else:
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  batch = {"x": x, "t": jnp.asarray(rng.normal(size=(4, 512)), jnp.float32)}
  return Wrap(make(), fn), batch


# Layers with a matmul parameter, where the Gram / direct choice exists.
OUTER = ("Linear", "LinearGeneral", "Embed", "MultiHeadAttention")


def errors(name, rules=None):
  model, batch = case(name)
  want = gn.per_sample_grad_norms(loss, model, batch, method="vmap")
  out = {}
  if rules is None:
    rules = ("auto", "ghost", "direct") if name.startswith(OUTER) else ("auto",)
  for rule in rules:
    got = gn.per_sample_grad_norms(loss, model, batch, fallback="error", linear_rule=rule)
    out[rule] = float(jnp.max(jnp.abs(got.total - want.total) / want.total))
  return out, got, want


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_is_exact(name):
  errs, got, want = errors(name)
  assert max(errs.values()) < RTOL, errs
  assert set(got.by_layer) == set(want.by_layer)


def test_bookkeeping_gradient_equals_autodiff_on_every_layer():
  for name in sorted(CASES):
    model, batch = case(name)
    capture = gn.ghost_capture(loss, model, batch)
    w = jnp.linspace(0.1, 1.0, 4)
    got = gn.bookkeeping_grads(model, capture, w)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    want = jax.grad(lambda p: jnp.sum(w * loss(nnx.merge(graphdef, p, rest), batch).loss))(params)
    for (pa, a), (pb, b) in zip(nnx.to_flat_state(got), nnx.to_flat_state(want)):
      assert pa == pb
      # atol: the attention key bias's gradient is a near-cancelling sum (~1e-3 from
      # terms ~1e-1); float32 rounding of that sum differs by ~4e-6 between the two orders.
      np.testing.assert_allclose(a.get_value(), b.get_value(), rtol=1e-5, atol=1e-5, err_msg=f"{name} {pa}")


def test_scanned_stack_of_every_kind_of_layer():
  """nnx.vmap-created stack run by nnx.scan: per-slice norms equal vmap."""

  class Block(nnx.Module):
    def __init__(self, rngs):
      self.norm = nnx.RMSNorm(6, rngs=rngs)
      self.conv = nnx.Conv(6, 6, (3,), rngs=rngs)
      self.lin = nnx.LinearGeneral(6, (2, 3), rngs=rngs)

    def __call__(self, x):
      return x + jnp.tanh(self.lin(self.conv(self.norm(x)))).reshape(x.shape)

  class Stack(nnx.Module):
    def __init__(self):
      @nnx.split_rngs(splits=3)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def create(rngs):
        return Block(rngs)

      self.blocks = create(nnx.Rngs(0))

    def __call__(self, x):
      @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
      def run(block, x):
        return block(x)

      return run(self.blocks, x)

  model = Stack()
  batch = {
    "x": jnp.asarray(np.random.default_rng(0).normal(size=(4, 5, 6)), jnp.float32),
    "t": jnp.asarray(np.random.default_rng(1).normal(size=(4, 512)), jnp.float32),
  }
  got = gn.per_sample_grad_norms(loss, model, batch, fallback="error")
  want = gn.per_sample_grad_norms(loss, model, batch, method="vmap")
  np.testing.assert_allclose(got.total, want.total, rtol=RTOL)
  assert got.stacked["blocks/conv"].shape == (3, 4)
  # slice l of the stack == the norm of the gradient wrt params[l] alone
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  b0 = jax.tree.map(lambda x: x[:1], batch)
  g = jax.grad(lambda p: loss(nnx.merge(graphdef, p, rest), b0).loss[0])(params)
  k = g["blocks"]["conv"]
  want1 = jnp.sum(k["kernel"][...][1] ** 2) + jnp.sum(k["bias"][...][1] ** 2)
  np.testing.assert_allclose(got.stacked["blocks/conv"][1, 0], want1, rtol=RTOL)


if __name__ == "__main__":
  import os

  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  print("| layer | max rel. error, auto | Gram | direct |")
  print("|---|---|---|---|")
  for name in sorted(CASES):
    e, _, _ = errors(name, ("auto", "ghost", "direct"))
    print(f"| {name} | {e['auto']:.1e} | {e['ghost']:.1e} | {e['direct']:.1e} |")
