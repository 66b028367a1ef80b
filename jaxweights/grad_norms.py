"""Per-sample squared gradient norms: exact (vmap, ghost) and estimated (jvp).

For a per-sample loss ``l_i(theta)`` this module returns ``||grad_theta l_i||^2``
for every sample ``i`` of a batch, in total and per layer, without (for the ghost
method) ever forming a per-sample gradient.

Methods:

* ``"vmap"``: ``vmap(grad)`` over the samples, in chunks of ``chunk_size``
  (``jax.lax.map``) to bound memory. Exact; costs about B single-sample backward
  passes. The test oracle.
* ``"ghost"``: exact ghost norms from each layer's inputs ``A_i`` and the
  gradients ``G_i`` of the summed loss wrt its outputs, obtained in ONE backward
  pass by tapping the layers with ``Module.sow`` (inputs) and ``Module.perturb``
  (output gradients) under ``nnx.capture``. Per layer type:

  - ``nnx.Linear`` (any number of leading/sequence axes): kernel
    ``||A_i^T G_i||_F^2``, as ``<A_i A_i^T, G_i G_i^T>`` (cost ``T^2 (d + p)``) or
    by forming ``A_i^T G_i`` (cost ``T d p``), chosen per layer by cost; bias
    ``||sum_t G_i[t]||^2``.
  - ``nnx.Embed``: the gradient row of token ``v`` is the sum of ``G_i[t]`` over
    positions with id ``v``, so ``||.||^2 = sum_{t,s} [id_t = id_s] <G_t, G_s>``
    (repeated token ids handled).
  - ``nnx.LayerNorm`` (last-axis): scale ``||sum_t G_t * xhat_t||^2``, bias
    ``||sum_t G_t||^2``, with ``xhat`` recomputed from the tapped input.

  Parameters held by any other module raise a ``ValueError`` naming the module,
  or, with ``fallback="vmap"``, get exact ``vmap`` norms for just those
  parameters.
* ``"jvp"``: forward-mode estimate. For ``v ~ N(0, I)`` one ``jax.jvp`` gives
  every sample's ``g_i . v``; ``E[(g_i . v)^2] = ||g_i||^2``, so the mean over
  ``num_probes`` probes is unbiased with relative std ``sqrt(2 / num_probes)``.
  Memory does not grow with the batch. Returns the total only.

Assumptions (true for the project's models): samples do not interact in the
forward pass (no batch norm), and each tapped layer is called once per forward.

Padding: a sample masked out by the loss function's ``LossOutput.mask`` (or with
a non-finite loss) gets norm 0. Token masks inside the loss need nothing more:
masked tokens contribute no output gradient.

Under ``jax.shard_map`` pass ``axis_name``: the tapped quantities are made
device-varying so that ``check_vma`` does not sum per-sample gradients across
devices.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxweights._reduce import AxisName, as_mask, check_per_sample

PyTree = Any
Method = Literal["ghost", "vmap", "jvp"]
LayerSelector = Sequence[str] | Callable[[str], bool] | None


class GradNorms(NamedTuple):
  """Per-sample squared gradient norms.

  Attributes:
    total: ``[batch]`` float32, summed over the selected layers.
    by_layer: ``{layer path: [batch]}`` per selected layer (all of that layer's
      parameters), e.g. ``"blocks/0/attn/qkv"``. Empty for ``method="jvp"``.
  """

  total: jax.Array
  by_layer: dict[str, jax.Array]


# --- layer taps ------------------------------------------------------------------

_IN, _OUT = "ghost_in", "ghost_out"


class _TapLinear(nnx.Linear):

  def __call__(self, x, *args, **kwargs):
    self.sow(nnx.Intermediate, _IN, x)
    return self.perturb(_OUT, super().__call__(x, *args, **kwargs))


class _TapEmbed(nnx.Embed):

  def __call__(self, ids, *args, **kwargs):
    self.sow(nnx.Intermediate, _IN, ids)
    return self.perturb(_OUT, super().__call__(ids, *args, **kwargs))


class _TapLayerNorm(nnx.LayerNorm):

  def __call__(self, x, *args, **kwargs):
    if kwargs.get("mask") is not None:
      raise ValueError("ghost norms do not support LayerNorm(mask=...).")
    self.sow(nnx.Intermediate, _IN, x)
    return self.perturb(_OUT, super().__call__(x, *args, **kwargs))


_TAPS: dict[type, type] = {
    nnx.Linear: _TapLinear,
    nnx.Embed: _TapEmbed,
    nnx.LayerNorm: _TapLayerNorm,
}


def _path_str(path) -> str:
  return "/".join(str(p) for p in path)


def _layer_params(model: nnx.Module) -> dict[str, tuple[nnx.Module | None, list[str]]]:
  """Maps each parameter-owning module's path to (module, its param names)."""
  modules = {
      _path_str(path): node
      for path, node in nnx.iter_graph(model)
      if isinstance(node, nnx.Module)
  }
  owners: dict[str, tuple[Any, list[str]]] = {}
  for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    owner = _path_str(path[:-1])
    owners.setdefault(owner, (modules.get(owner), []))[1].append(str(path[-1]))
  return owners


def _selected(path: str, layers: LayerSelector) -> bool:
  if layers is None:
    return True
  if callable(layers):
    return bool(layers(path))
  return any(path == p or path.startswith(p.rstrip("/") + "/") for p in layers)


def _supported(module) -> bool:
  if type(module) not in _TAPS:
    return False
  if isinstance(module, nnx.LayerNorm):
    return module.reduction_axes in (-1, (-1,)) and module.feature_axes in (-1, (-1,))
  return True


# --- public API --------------------------------------------------------------------


def per_sample_grad_norms(
    loss_fn: Callable[[Any, PyTree], Any],
    model: nnx.Module,
    batch: PyTree,
    *,
    method: Method = "ghost",
    layers: LayerSelector = None,
    chunk_size: int | None = None,
    num_probes: int = 16,
    key: jax.Array | None = None,
    fallback: Literal["error", "vmap"] = "error",
    linear_rule: Literal["auto", "ghost", "direct"] = "auto",
    microbatches: int | None = None,
    axis_name: AxisName = None,
) -> GradNorms:
  """Per-sample squared gradient norms of ``loss_fn(model, batch).loss``.

  Args:
    loss_fn: ``loss_fn(model, batch) -> LossOutput`` with ``[batch]`` losses (the
      same function the train step uses).
    model: an NNX model; it is not modified.
    batch: a pytree whose leaves all have the batch as leading axis.
    method: ``"ghost"`` (exact, one backward pass), ``"vmap"`` (exact oracle) or
      ``"jvp"`` (unbiased estimate).
    layers: which layers count (PRESENCE's K): None for all, a list of path
      prefixes such as ``["blocks/0"]``, or a predicate on the path string.
    chunk_size: samples per vectorised chunk for ``"vmap"`` (default: all).
    num_probes: Gaussian probes for ``"jvp"``.
    key: PRNG key for ``"jvp"``.
    fallback: for ``"ghost"``, what to do with parameters of unsupported
      modules: ``"error"`` or exact ``"vmap"`` norms for just those parameters.
    linear_rule: for ``"ghost"``, force the Gram (``"ghost"``) or the
      outer-product (``"direct"``) form for dense layers; ``"auto"`` picks the
      cheaper one per layer.
    microbatches: if given, score contiguous groups instead of samples: the
      squared norm of each group's summed gradient (PRESENCE's microbatch mode).
      The (local) batch size must be divisible by it.
    axis_name: the data axis when called under ``jax.shard_map``.

  Returns:
    :class:`GradNorms` with ``[batch]`` (or ``[microbatches]``) float32 squared
    norms.
  """
  if microbatches is not None and microbatches < 1:
    raise ValueError(f"microbatches must be >= 1, got {microbatches}.")
  if method not in ("ghost", "vmap", "jvp"):
    raise ValueError(f"method must be 'ghost', 'vmap' or 'jvp', got {method!r}.")
  if fallback not in ("error", "vmap"):
    raise ValueError(f"fallback must be 'error' or 'vmap', got {fallback!r}.")
  owners = _layer_params(model)
  chosen = [p for p in owners if _selected(p, layers)]
  if not chosen:
    raise ValueError(
        f"layers={layers!r} selects no parameters; layers with parameters are: "
        f"{sorted(owners)}."
    )
  if method == "vmap":
    return _vmap_norms(loss_fn, model, batch, chosen, chunk_size, axis_name, microbatches)
  if method == "jvp":
    if key is None:
      raise ValueError("method='jvp' needs a PRNG key.")
    if num_probes < 1:
      raise ValueError(f"num_probes must be >= 1, got {num_probes}.")
    return _jvp_norms(loss_fn, model, batch, chosen, num_probes, key, microbatches)

  unsupported = [p for p in chosen if not _supported(owners[p][0])]
  if unsupported and fallback == "error":
    names = ", ".join(f"'{p}' ({type(owners[p][0]).__name__})" for p in unsupported)
    raise ValueError(
        f"ghost norms do not support the layer(s) {names}; supported: "
        f"{', '.join(t.__name__ for t in _TAPS)} (LayerNorm over the last axis). "
        "Pass fallback='vmap' to use exact vmap norms for those parameters."
    )
  tapped = [p for p in chosen if p not in unsupported]
  result = None
  if tapped:
    capture = ghost_capture(loss_fn, model, batch, tapped, axis_name=axis_name)
    result = ghost_norms_from_capture(capture, linear_rule=linear_rule, microbatches=microbatches)
  if unsupported:
    extra = _vmap_norms(loss_fn, model, batch, unsupported, chunk_size, axis_name, microbatches)
    if result is None:
      return extra
    by_layer = {**result.by_layer, **extra.by_layer}
    return GradNorms(result.total + extra.total, by_layer)
  return result


def _valid(out) -> jax.Array:
  losses = check_per_sample(out.loss, "loss_fn(...).loss")
  return as_mask(out.mask, losses) & jnp.isfinite(losses)


def _masked_sum(out) -> tuple[jax.Array, jax.Array]:
  valid = _valid(out)
  return jnp.sum(jnp.where(valid, out.loss, 0.0)), valid


def _varying(tree, axis_name):
  if axis_name is None:
    return tree
  return jax.tree.map(lambda x: jax.lax.pcast(x, axis_name, to="varying"), tree)


# --- ghost -------------------------------------------------------------------------


class LayerCapture(NamedTuple):
  """One tapped layer's inputs and output gradients (per sample)."""

  module: nnx.Module
  inputs: jax.Array   # [B, ..., d] activations (token ids for Embed)
  out_grads: jax.Array  # [B, ..., p] d(sum_i l_i) / d(output), float32


class GhostCapture(NamedTuple):
  """What one tapped forward + backward pass yields.

  Attributes:
    layers: ``{path: LayerCapture}`` for every tapped layer.
    losses: ``[batch]`` per-sample losses (0 where invalid), not differentiable.
    valid: ``[batch]`` booleans (mask & finite).
    aux: the loss function's aux output.
  """

  layers: dict[str, LayerCapture]
  losses: jax.Array
  valid: jax.Array
  aux: PyTree


def ghost_capture(loss_fn, model, batch, paths, *, axis_name: AxisName = None) -> GhostCapture:
  """Runs ``loss_fn`` once with ``paths`` tapped; returns activations and output grads.

  The backward pass differentiates ``sum_i l_i`` (valid samples only) wrt zero
  perturbations added to each tapped layer's output, so ``out_grads[i]`` is
  sample ``i``'s own output gradient. No parameter gradient is formed.
  """
  graphdef, state = nnx.split(model)
  wanted = set(paths)

  def tapped_model():
    m = nnx.merge(graphdef, state)
    for path, node in nnx.iter_graph(m):
      if isinstance(node, nnx.Module) and _path_str(path) in wanted:
        if type(node) not in _TAPS:
          raise ValueError(f"layer '{_path_str(path)}' ({type(node).__name__}) cannot be tapped.")
        node.__class__ = _TAPS[type(node)]
    return m

  def run(m, b):
    return loss_fn(m, b)

  shapes = jax.eval_shape(
      lambda: nnx.capture(run, nnx.Perturbation)(tapped_model(), batch)[1]
  )
  zeros = _varying(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), axis_name)

  def summed(perturbations):
    out, inter = nnx.capture(run, nnx.Intermediate, init=perturbations)(tapped_model(), batch)
    total, valid = _masked_sum(out)
    return total, (inter, valid, out)

  grads, (inter, valid, out) = jax.grad(summed, has_aux=True)(zeros)
  grads_flat = {_path_str(p[:-1]): v.get_value() for p, v in nnx.to_flat_state(grads)}
  inter_flat = {_path_str(p[:-1]): v.get_value() for p, v in nnx.to_flat_state(inter)}
  modules = {_path_str(p): n for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Module)}
  layers = {}
  for path in paths:
    if path not in grads_flat:
      raise ValueError(f"layer '{path}' has parameters but was not called by loss_fn.")
    inputs = inter_flat[path]
    if len(inputs) != 1:
      raise ValueError(
          f"layer '{path}' was called {len(inputs)} times in one forward pass; ghost "
          "norms need each tapped layer called once (use method='vmap')."
      )
    layers[path] = LayerCapture(modules[path], inputs[0], grads_flat[path].astype(jnp.float32))
  losses = jax.lax.stop_gradient(jnp.where(valid, out.loss, 0.0))
  return GhostCapture(layers, losses, valid, jax.lax.stop_gradient(out.aux))


def _group_rows(x, groups: int | None):
  """``[B, T, ...]`` -> ``[groups, (B / groups) * T, ...]``: a microbatch is one row."""
  if groups is None:
    return x
  if x.shape[0] % groups:
    raise ValueError(f"batch size {x.shape[0]} is not divisible into {groups} microbatches.")
  return x.reshape(groups, -1, *x.shape[2:])


def ghost_norms_from_capture(
    capture: GhostCapture, *, linear_rule: str = "auto", microbatches: int | None = None
) -> GradNorms:
  """Squared gradient norms per sample (or per microbatch) from a capture."""
  by_layer = {}
  for path, (module, a, g) in capture.layers.items():
    if isinstance(module, nnx.Embed):
      ids, g = _as_seq(a, features=False), _as_seq(g)
      sq = _embed_sq(_group_rows(ids, microbatches), _group_rows(g, microbatches))
    else:
      a, g = _group_rows(_as_seq(a), microbatches), _group_rows(_as_seq(g), microbatches)
      if isinstance(module, nnx.Linear):
        sq = _linear_sq(a, g, module.bias is not None, linear_rule)
      else:
        sq = _layernorm_sq(a, g, module)
    by_layer[path] = sq
  if microbatches is None:
    by_layer = {k: jnp.where(capture.valid, v, 0.0) for k, v in by_layer.items()}
  return GradNorms(sum(by_layer.values()), by_layer)


def bookkeeping_grads(model: nnx.Module, capture: GhostCapture, weights: jax.Array) -> PyTree:
  """The gradient of ``sum_i w_i l_i`` wrt all parameters, from a capture.

  Book-keeping (Bu et al.): ``dW = A^T diag(w) G`` per layer, from the stored
  activations and output gradients, so a norm-dependent weighting costs no second
  backward pass. Every parameter of ``model`` must belong to a tapped layer.

  Returns:
    An ``nnx.State`` of gradients with the structure of ``nnx.state(model, nnx.Param)``.
  """
  params = nnx.state(model, nnx.Param)
  flat = list(nnx.to_flat_state(params))
  weights = jax.lax.stop_gradient(jnp.where(capture.valid, weights, 0.0)).astype(jnp.float32)
  grads = {}
  for path, (module, a, g) in capture.layers.items():
    gw = g * weights.reshape((-1,) + (1,) * (g.ndim - 1))
    if isinstance(module, nnx.Embed):
      ids = a.reshape(-1)
      rows = gw.reshape(-1, gw.shape[-1])
      grads[(path, "embedding")] = jnp.zeros(module.embedding.shape, jnp.float32).at[ids].add(rows)
      continue
    a2 = a.reshape(-1, a.shape[-1]).astype(jnp.float32)
    g2 = gw.reshape(-1, gw.shape[-1])
    if isinstance(module, nnx.Linear):
      grads[(path, "kernel")] = a2.T @ g2
      if module.bias is not None:
        grads[(path, "bias")] = g2.sum(0)
    else:
      mean = a2.mean(-1, keepdims=True)
      var = jnp.mean(jnp.square(a2 - mean), -1, keepdims=True)
      xhat = (a2 - mean) * jax.lax.rsqrt(var + module.epsilon)
      if module.scale is not None:
        grads[(path, "scale")] = (g2 * xhat).sum(0)
      if module.bias is not None:
        grads[(path, "bias")] = g2.sum(0)
  out = []
  for p, v in flat:
    key = (_path_str(p[:-1]), str(p[-1]))
    if key not in grads:
      raise ValueError(
          f"parameter '{'/'.join(key)}' is not in a tapped layer; book-keeping needs "
          "every parameter in a Linear, Embed or LayerNorm."
      )
    out.append((p, v.replace(grads[key].astype(v.get_value().dtype))))
  return nnx.from_flat_state(out)


def _as_seq(x, features: bool = True):
  """Reshapes ``[B, ..., d]`` to ``[B, T, d]`` (or ``[B, ...]`` ids to ``[B, T]``)."""
  b = x.shape[0]
  return x.reshape(b, -1, x.shape[-1]) if features else x.reshape(b, -1)


def _linear_sq(a, g, has_bias: bool, rule: str) -> jax.Array:
  a = _as_seq(a.astype(jnp.float32))
  g = _as_seq(g)
  t, d, p = a.shape[1], a.shape[2], g.shape[2]
  if t == 1:
    kernel = jnp.sum(a[:, 0] ** 2, -1) * jnp.sum(g[:, 0] ** 2, -1)
  else:
    use_gram = t * (d + p) < d * p if rule == "auto" else rule == "ghost"
    if use_gram:
      aa = jnp.einsum("btd,bsd->bts", a, a)
      gg = jnp.einsum("btp,bsp->bts", g, g)
      kernel = jnp.sum(aa * gg, axis=(1, 2))
    else:
      kernel = jnp.sum(jnp.einsum("btd,btp->bdp", a, g) ** 2, axis=(1, 2))
  if has_bias:
    kernel = kernel + jnp.sum(jnp.sum(g, axis=1) ** 2, axis=-1)
  return kernel


def _embed_sq(ids, g) -> jax.Array:
  ids = _as_seq(ids, features=False)
  g = _as_seq(g)
  same = ids[:, :, None] == ids[:, None, :]
  gg = jnp.einsum("btd,bsd->bts", g, g)
  return jnp.sum(jnp.where(same, gg, 0.0), axis=(1, 2))


def _layernorm_sq(x, g, module: nnx.LayerNorm) -> jax.Array:
  x = _as_seq(x.astype(jnp.float32))
  g = _as_seq(g)
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
  xhat = (x - mean) * jax.lax.rsqrt(var + module.epsilon)
  sq = jnp.zeros(x.shape[0], jnp.float32)
  if module.scale is not None:
    sq = sq + jnp.sum(jnp.sum(g * xhat, axis=1) ** 2, -1)
  if module.bias is not None:
    sq = sq + jnp.sum(jnp.sum(g, axis=1) ** 2, -1)
  return sq


# --- vmap and jvp ------------------------------------------------------------------


def _split_selected(model, paths):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  wanted = set(paths)
  flat = list(nnx.to_flat_state(params))
  sel = [(p, v.get_value()) for p, v in flat if _path_str(p[:-1]) in wanted]
  other = [(p, v.get_value()) for p, v in flat if _path_str(p[:-1]) not in wanted]

  def rebuild(sel_values):
    values = dict(other)
    values.update(zip([p for p, _ in sel], sel_values))
    new = nnx.from_flat_state(
        [(p, v.replace(values[p])) for p, v in flat]
    )
    return nnx.merge(graphdef, new, rest)

  sel_paths = [_path_str(p[:-1]) for p, _ in sel]
  return [v for _, v in sel], sel_paths, rebuild


def _group(sq_leaves, sel_paths, paths):
  by_layer = {p: 0.0 for p in paths}
  for sq, p in zip(sq_leaves, sel_paths):
    by_layer[p] = by_layer[p] + sq
  return by_layer


def _vmap_norms(loss_fn, model, batch, paths, chunk_size, axis_name, microbatches=None) -> GradNorms:
  sel, sel_paths, rebuild = _split_selected(model, paths)
  sel = _varying(sel, axis_name)
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
  if microbatches is None:
    groups = jax.tree.map(lambda x: x[:, None], batch)  # [B, 1, ...]: one sample a group
  else:
    _group_rows(jax.tree.leaves(batch)[0], microbatches)  # checks divisibility
    groups = jax.tree.map(
        lambda x: x.reshape(microbatches, x.shape[0] // microbatches, *x.shape[1:]), batch)
  b = jax.tree.leaves(groups)[0].shape[0]

  def one(group):
    def loss(values):
      out = loss_fn(rebuild(values), group)
      total, valid = _masked_sum(out)
      return total, jnp.any(valid)

    grads, valid = jax.grad(loss, has_aux=True)(sel)
    sq = [jnp.where(valid, jnp.sum(jnp.square(g.astype(jnp.float32))), 0.0) for g in grads]
    return sq

  sq_leaves = jax.lax.map(one, groups, batch_size=min(chunk_size or b, b))
  by_layer = _group(sq_leaves, sel_paths, paths)
  return GradNorms(sum(by_layer.values()), by_layer)


def _jvp_norms(loss_fn, model, batch, paths, num_probes, key, microbatches=None) -> GradNorms:
  sel, _, rebuild = _split_selected(model, paths)

  def projections(probe_key):
    keys = jax.random.split(probe_key, len(sel))
    tangent = [jax.random.normal(k, v.shape, jnp.float32).astype(v.dtype) for k, v in zip(keys, sel)]

    def losses(values):
      out = loss_fn(rebuild(values), batch)
      return jnp.where(_valid(out), out.loss, 0.0)

    _, jv = jax.jvp(losses, (sel,), (tangent,))
    jv = jv.astype(jnp.float32)
    if microbatches is not None:
      jv = _group_rows(jv[:, None], microbatches).sum(axis=1)
    return jnp.square(jv)

  sq = jax.lax.map(projections, jax.random.split(key, num_probes))
  return GradNorms(jnp.mean(sq, axis=0), {})
