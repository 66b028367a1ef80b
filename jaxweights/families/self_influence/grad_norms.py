"""Per-sample squared gradient norms: exact (ghost, vmap) and estimated (jvp).

For a per-sample loss ``l_i(theta)`` this module returns ``||grad_theta l_i||^2``
for every sample ``i`` of a batch, in total and per layer, without (for the ghost
method) forming the whole per-sample gradient of the model. These are the
self-influence scores of PRESENCE (Thakkar et al., EMNLP 2023; see
:mod:`jaxweights.families.self_influence.presence`). The norms are returned as
they are (float32, unnormalised, not under ``stop_gradient``); the weighting
normalises them.

The ghost method rests on one identity: a matmul ``y_t = W^T x_t`` (``t`` over a
sample's tokens) has the per-sample gradient ``dW_i = sum_t x_t g_t^T = X_i^T D_i``,
with ``X_i`` the ``[T, d1]`` inputs and ``D_i`` the ``[T, d2]`` output gradients
``g_t = dl_i / dy_t``, so ``||dW_i||^2 = <X_i X_i^T, D_i D_i^T>`` (Gram
matrices, cost ``T^2 (d1 + d2)`` instead of ``T d1 d2``; Goodfellow 2015, Li et
al. 2022), and the weighted gradient ``sum_i w_i X_i^T D_i`` comes from the
same stored ``X`` and ``D`` (book-keeping, Bu et al. 2023).

Methods:

* ``"vmap"``: ``vmap(grad)`` over the samples, in chunks of ``chunk_size``
  (``jax.lax.map``) to bound memory. Exact; costs about B single-sample backward
  passes. The test oracle.
* ``"ghost"``: exact norms from every parameter-holding *leaf* layer's inputs and
  the gradients of the summed loss wrt its outputs, obtained in ONE backward pass
  by tapping the layers (``Module.sow`` for inputs, ``Module.perturb`` for output
  gradients, under ``nnx.capture``). Any leaf layer is tapped, stock or not;
  each of its parameters' per-sample gradient is then formed per layer:

  - matrices that enter linearly through a matmul (``nnx.Linear`` and
    ``nnx.LinearGeneral`` kernels, ``nnx.Embed`` both as a lookup and through
    ``attend`` as a tied output head): the per-sample gradient is a sum of outer
    products ``sum_t u_t v_t^T``; its squared norm is taken either from Gram
    matrices ``<U U^T, V V^T>`` (cost ``T^2 (d1 + d2)``) or by forming
    ``U^T V`` (cost ``T d1 d2``), the cheaper per layer. A lookup's ``u`` is a
    one-hot row, so repeated token ids are exact.
  - every other parameter (``nnx.Conv``, ``nnx.Einsum``, ``nnx.LayerNorm``,
    ``nnx.RMSNorm``, ``nnx.GroupNorm``, biases, a user's own leaf layer): the
    layer is re-applied to each sample's captured input (``vmap`` of the
    layer-local ``vjp``), which forms the per-sample gradient of that layer only.

  A parameter that several calls or several layers use (tied embeddings, a
  layer called twice, one ``Param`` shared by two layers) gets the norm of the
  SUM of its per-use gradients: cross terms between outer-product uses come from
  Gram matrices, otherwise the per-use gradients are formed and added. Layers
  stacked with ``nnx.scan``/``nnx.vmap`` are tapped inside the loop; their
  captures carry the stack axis and the norms are exact per layer slice
  (``GradNorms.stacked``).

  What cannot be tapped exactly is detected, never guessed: a parameter read
  outside its layer's call (found by dead-code analysis of the tangent jaxpr
  with the tapped uses under ``stop_gradient``), a layer called on an input
  whose leading axis is not the batch (e.g. shared positions
  ``pos(jnp.arange(T))``; found by tracing at twice the batch size), a layer
  that is not a leaf or holds random streams. Those parameters alone get exact
  ``vmap`` norms (``fallback="vmap"``, the default) or raise a ``ValueError``
  naming them and the reason (``fallback="error"``). :func:`ghost_plan` lists
  the decision per parameter.
* ``"jvp"``: forward-mode estimate. For ``v ~ N(0, I)`` one ``jax.jvp`` gives
  every sample's ``g_i . v``; ``E[(g_i . v)^2] = ||g_i||^2``, so the mean over
  ``num_probes`` probes is unbiased with relative std ``sqrt(2 / num_probes)``.
  Memory does not grow with the batch. Returns the total only.

Samples must not interact in the forward pass: a model that normalises with
batch statistics (``BatchNorm`` in training mode) has no per-sample gradient, and
every method refuses it with an error (use ``nnx.view(model,
use_running_average=True)``). Random streams (dropout) are fine: the ghost and
jvp methods use this forward pass's masks; ``vmap`` draws each sample's masks
from the model's streams folded with the sample index.

Padding: a sample masked out by the loss function's ``LossOutput.mask`` (or with
a non-finite loss) gets norm 0. Token masks inside the loss need nothing more.

Under ``jax.shard_map`` pass ``axis_name``: the tapped quantities are made
device-varying so that ``check_vma`` does not sum per-sample gradients across
devices.

References:
  Goodfellow. "Efficient Per-Example Gradient Computations." arXiv:1510.01799, 2015.
  Li, Tramèr, Liang, Hashimoto. "Large Language Models Can Be Strong
  Differentially Private Learners." ICLR 2022 (ghost norms of sequence layers).
  Bu, Mao, Xu. "Scalable and Efficient Training of Large Convolutional Neural
  Networks with Differential Privacy." NeurIPS 2022 (the cheaper of the Gram and
  the direct form, per layer).
  Bu, Wang, Zha, Karypis. "Differentially Private Optimization on Large Model at
  Small Cost." ICML 2023 (book-keeping).
  Thakkar, Bolukbasi, Ganapathy, Vashishth, Chandar, Talukdar. "Self-Influence
  Guided Data Reweighting for Language Model Pre-training." EMNLP 2023.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxweights.core.reductions import AxisName, as_mask, check_per_sample

PyTree = Any
#: How the norms are computed: exact ``"ghost"`` or ``"vmap"``, or the ``"jvp"`` estimate.
Method = Literal["ghost", "vmap", "jvp"]
#: Which layers count: path prefixes (``["blocks/0"]``), a predicate on the layer
#: path, or None for all.
LayerSelector = Sequence[str] | Callable[[str], bool] | None


class GradNorms(NamedTuple):
  """Per-sample squared gradient norms.

  Attributes:
    total: ``[batch]`` float32, summed over the selected layers.
    by_layer: ``{layer path: [batch]}`` per selected layer (all of that layer's
      parameters), e.g. ``"blocks/0/attn/qkv"``. Empty for ``method="jvp"``.
    stacked: ``{layer path: [layers, batch]}`` per-slice norms of layers stacked
      with ``nnx.scan``/``nnx.vmap`` (ghost only); ``by_layer`` holds their sum.
  """

  total: jax.Array
  by_layer: dict[str, jax.Array]
  stacked: dict[str, jax.Array] = {}  # noqa: RUF012  (never mutated: read-only result)


def _path_str(path) -> str:
  return "/".join(str(p) for p in path)


# --- model analysis --------------------------------------------------------------


class _Param(NamedTuple):
  path: str  # canonical path, e.g. "blocks/0/fc/kernel" (first path of a shared Param)
  owner: str  # canonical path of the module that owns it first
  shape: tuple


class _Model(NamedTuple):
  params: dict[str, _Param]  # canonical path -> info (nnx.state order)
  modules: dict[str, nnx.Module]  # canonical module path -> module
  own: dict[str, dict[str, str]]  # module path -> {attribute: canonical param path}
  leaves: set[str]  # module paths that can be tapped


def _analyse(model: nnx.Module) -> _Model:
  canon: dict[int, str] = {}
  modules: dict[str, nnx.Module] = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Param) and id(node) not in canon:
      canon[id(node)] = _path_str(path)
    elif isinstance(node, nnx.Module) and _path_str(path) not in modules:
      modules[_path_str(path)] = node
  params = {}
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    p = _path_str(path)
    params[p] = _Param(p, _path_str(path[:-1]), tuple(v.get_value().shape))
  own: dict[str, dict[str, str]] = {}
  leaves = set()
  seen = set()
  for mpath, module in modules.items():
    if id(module) in seen:
      continue
    seen.add(id(module))
    attrs = {k: canon[id(v)] for k, v in vars(module).items() if isinstance(v, nnx.Param) and id(v) in canon}
    if attrs:
      own[mpath] = attrs
    inner = [n for p, n in nnx.iter_graph(module) if p and isinstance(n, (nnx.Module, nnx.RngStream))]
    if attrs and not inner:
      leaves.add(mpath)
  return _Model(params, modules, own, leaves)


def _check_independent(model: nnx.Module) -> None:
  """Refuses models whose samples interact (batch statistics in training mode)."""
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, nnx.Module):
      continue
    has_stats = any(isinstance(v, nnx.BatchStat) for v in vars(node).values())
    if has_stats and not getattr(node, "use_running_average", True):
      raise ValueError(
        f"layer '{_path_str(path)}' ({type(node).__name__}) normalises with batch "
        "statistics in training mode, so samples interact and per-sample "
        "gradients are not defined. Compute norms on "
        "nnx.view(model, use_running_average=True), or use a model without "
        "batch normalisation (LayerNorm, GroupNorm, RMSNorm)."
      )


def _selected(path: str, layers: LayerSelector) -> bool:
  if layers is None:
    return True
  if callable(layers):
    return bool(layers(path))
  return any(path == p or path.startswith(p.rstrip("/") + "/") for p in layers)


# --- taps ------------------------------------------------------------------------

_IN, _OUT, _MARK = "ghost_in__", "ghost_out__", "ghost_mark__"


class _TapMode(NamedTuple):
  mode: str  # "capture" | "check"
  counts: dict  # id(module) -> {method: calls so far}


_TAP = contextvars.ContextVar("jaxweights_ghost_tap", default=None)
_TAP_CLASSES: dict[type, type] = {}
_TAPPED_METHODS = ("__call__", "attend")


class _Untappable(Exception):
  pass


def _tap_class(cls: type) -> type:
  if cls not in _TAP_CLASSES:
    ns = {}
    for name in _TAPPED_METHODS:
      if callable(getattr(cls, name, None)):
        ns[name] = _make_tap(name, getattr(cls, name))
    _TAP_CLASSES[cls] = type(f"Tapped{cls.__name__}", (cls,), ns)
  return _TAP_CLASSES[cls]


def _make_tap(name: str, orig: Callable) -> Callable:
  def tapped(self, *args, **kwargs):
    tap = _TAP.get()
    if tap is None:
      return orig(self, *args, **kwargs)
    calls = tap.counts.setdefault(id(self), {})
    k = calls.get(name, 0)
    calls[name] = k + 1
    tag = f"{name.strip('_')}__{k}"
    own = {a: v for a, v in vars(self).items() if isinstance(v, nnx.Param)}
    if tap.mode == "check":
      saved = {a: v.get_value() for a, v in own.items()}
      for a, v in own.items():
        v.set_value(jax.lax.stop_gradient(saved[a]))
      try:
        return orig(self, *args, **kwargs)
      finally:
        for a, v in own.items():
          v.set_value(saved[a])
    kw = {a: v for a, v in kwargs.items() if v is not None}
    for leaf in jax.tree.leaves((args, kw)):
      if not isinstance(leaf, (jax.Array, np.ndarray)):
        raise _Untappable(
          f"{type(self).__name__}.{name} was called with a non-array argument ({type(leaf).__name__})"
        )
    self.sow(nnx.Intermediate, _IN + tag, (args, kw))
    self.sow(
      nnx.Intermediate,
      _MARK + tag,
      {a: jnp.zeros((0, *v.get_value().shape), jnp.int8) for a, v in own.items()},
    )
    out = orig(self, *args, **kwargs)
    if not isinstance(out, jax.Array):
      raise _Untappable(f"{type(self).__name__}.{name} returned {type(out).__name__}, not an array")
    return self.perturb(_OUT + tag, out)

  tapped.__name__ = name
  return tapped


@contextlib.contextmanager
def _tapping(mode: str):
  token = _TAP.set(_TapMode(mode, {}))
  try:
    yield
  finally:
    _TAP.reset(token)


def _tapped_model(graphdef, state, paths) -> nnx.Module:
  m = nnx.merge(graphdef, state, copy=True)
  for path, node in nnx.iter_graph(m):
    if isinstance(node, nnx.Module) and _path_str(path) in paths:
      node.__class__ = _tap_class(type(node))
  return m


# --- capture ---------------------------------------------------------------------


class Call(NamedTuple):
  """One tapped call of one layer.

  Attributes:
    module: canonical path of the layer.
    method: ``"__call__"`` or ``"attend"``.
    index: which call of that method (0, 1, ...) in the forward pass.
    args: the positional arguments, ``[*stack, batch, ...]`` arrays.
    kwargs: array keyword arguments.
    out_grad: ``[*stack, batch, ...]`` float32 gradient of the summed valid loss
      wrt the call's output (each sample's own rows).
    nstack: number of leading stack axes (``nnx.scan``/``nnx.vmap`` layers).
  """

  module: str
  method: str
  index: int
  args: tuple
  kwargs: dict
  out_grad: jax.Array
  nstack: int


class GhostCapture(NamedTuple):
  """What one tapped forward + backward pass yields.

  Attributes:
    calls: every tapped call, in order of layer path.
    exact: canonical paths of the parameters whose every use was captured.
    fallback: ``{parameter path: reason}`` for those that were not.
    losses: ``[batch]`` per-sample losses (0 where invalid), not differentiable.
    valid: ``[batch]`` booleans (mask & finite).
    aux: the loss function's aux output.
    model_vars: the model's non-parameter state after the pass.
  """

  calls: list[Call]
  exact: tuple[str, ...]
  fallback: dict[str, str]
  losses: jax.Array
  valid: jax.Array
  aux: PyTree
  model_vars: PyTree


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


def _flat(state) -> dict[str, Any]:
  return {_path_str(p): v.get_value() for p, v in nnx.to_flat_state(state)}


def _parse(name: str):
  """``ghost_out__call__0`` -> (``"__call__"``, 0)."""
  body = name.split("__", 1)[1]
  method, index = body.rsplit("__", 1)
  method = "__call__" if method == "call" else method
  return method, int(index)


def _untapped_uses(loss_fn, graphdef, params, rest, batch, taps) -> set[str]:
  """Parameters the loss reaches other than through their own tapped layer call.

  The tapped calls use their own parameters under ``stop_gradient``; a parameter
  whose tangent still reaches the loss (dead-code analysis of the JVP jaxpr,
  through ``scan``/``jit``/``cond`` bodies) is used somewhere else.
  """
  from jax._src.interpreters import partial_eval as pe  # pylint: disable=g-import-not-at-top

  flat = list(nnx.to_flat_state(params))
  values = [v.get_value() for _, v in flat]

  def forward(vals):
    p = nnx.from_flat_state([(k, v.replace(x)) for (k, v), x in zip(flat, vals)])
    with _tapping("check"):
      out = loss_fn(_tapped_model(graphdef, nnx.merge_state(p, rest), taps), batch)
    return _masked_sum(out)[0]

  closed = jax.make_jaxpr(lambda p, t: jax.jvp(forward, (p,), (t,))[1])(values, values)
  _, used = pe.dce_jaxpr(closed.jaxpr, [True])
  tangent_used = used[len(values) :]
  return {_path_str(k) for (k, _), u in zip(flat, tangent_used) if u}


_PLANS: dict = {}
_PLAN_CACHE_SIZE = 64


def _avals(tree):
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


def _plan(loss_fn, model, batch, wanted, info):
  """What to tap and what falls back, decided by abstract traces (cached per model
  structure, loss function, shapes and wanted parameters).

  Returns ``(taps, fallback, calls_meta, perturbation shapes)``.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  key = (graphdef, loss_fn, wanted, _avals(batch), _avals(params), _avals(rest))
  try:
    hit = _PLANS.get(key)
  except TypeError:  # an unhashable loss function or static attribute: no caching
    key, hit = None, None
  if hit is not None:
    return hit
  state = nnx.merge_state(params, rest)
  taps = {m for m in info.leaves if any(p in wanted for p in info.own[m].values())}
  fallback: dict[str, str] = {}
  for mpath, attrs in info.own.items():
    if mpath not in info.leaves:
      for p in attrs.values():
        fallback.setdefault(p, "its layer holds random streams or sub-layers, so it is not tapped")
  for p in info.params:
    if not any(p in a.values() for a in info.own.values()):
      fallback.setdefault(p, "it is not an attribute of a layer")
  if not taps:
    result = (taps, fallback, [], None)
    if key is not None:
      _remember(key, result)
    return result

  def run(m, b):
    return loss_fn(m, b)

  def shapes_at(b):
    with _tapping("capture"):
      return jax.eval_shape(
        lambda: nnx.capture(run, nnx.Perturbation, nnx.Intermediate)(_tapped_model(graphdef, state, taps), b)[
          1:
        ]
      )

  try:
    pert_shapes, inter_shapes = shapes_at(batch)
    double = jax.tree.map(lambda x: jnp.concatenate([x, x]), batch)
    pert2, inter2 = shapes_at(double)
  except _Untappable as e:
    raise ValueError(f"ghost norms could not tap a layer: {e}. Use method='vmap'.") from None

  b = jax.tree.leaves(batch)[0].shape[0]
  out1, out2 = _flat(pert_shapes), _flat(pert2)
  in1, in2 = _flat(inter_shapes), _flat(inter2)

  # Which (module, call) pairs are per-sample: the leading axis after the stack
  # axes is the batch at B and at 2B, for every argument and the output.
  calls_meta = []
  for out_key, shape in out1.items():
    mpath, name = out_key.rsplit("/", 1)
    tag = name[len(_OUT) :]
    marks = in1[f"{mpath}/{_MARK}{tag}"][0]
    # a mark is [*stack, 0, *inner parameter shape]: the zero-size axis ends the stack
    nstack = next(iter(marks.values())).shape.index(0) if marks else 0
    ok = True
    for arr1, arr2 in zip(
      jax.tree.leaves((in1[f"{mpath}/{_IN}{tag}"], shape)),
      jax.tree.leaves((in2[f"{mpath}/{_IN}{tag}"], out2[out_key])),
    ):
      if arr1.ndim <= nstack or arr1.shape[nstack] != b or arr2.shape[nstack] != 2 * b:
        ok = False
    for attr, mark in marks.items():
      p = info.own[mpath][attr]
      if len(info.params[p].shape) - (mark.ndim - 1 - nstack) != nstack:
        fallback.setdefault(p, "its layer is applied repeatedly to an unstacked parameter")
      if not ok:
        fallback.setdefault(
          p,
          f"layer '{mpath}' is called on an input whose leading axis is not the "
          "batch (e.g. shared positions), so its output gradient is not per sample",
        )
    calls_meta.append((mpath, tag, nstack))

  for p in _untapped_uses(loss_fn, graphdef, params, rest, batch, taps):
    fallback.setdefault(p, "it is read outside its layer's call (e.g. a kernel reused by other code)")
  for m in taps:
    for p in info.own[m].values():
      if not any(mp == m for mp, _, _ in calls_meta):
        fallback.setdefault(p, f"layer '{m}' was not called by loss_fn")

  result = (taps, fallback, calls_meta, pert_shapes)
  if key is not None:
    _remember(key, result)
  return result


def _remember(key, result):
  if len(_PLANS) >= _PLAN_CACHE_SIZE:
    _PLANS.pop(next(iter(_PLANS)))
  _PLANS[key] = result


def ghost_capture(
  loss_fn: Callable[[Any, PyTree], Any],
  model: nnx.Module,
  batch: PyTree,
  paths: Sequence[str] | None = None,
  *,
  axis_name: AxisName = None,
) -> GhostCapture:
  """Runs ``loss_fn`` once with every tappable leaf layer tapped.

  The backward pass differentiates ``sum_i l_i`` (valid samples only) wrt zero
  perturbations added to each tapped call's output, so ``out_grad[i]`` is sample
  ``i``'s own output gradient. No parameter gradient is formed.

  Args:
    loss_fn: ``loss_fn(model, batch) -> LossOutput``.
    model: the NNX model (not modified).
    batch: a pytree whose leaves have the batch as leading axis.
    paths: canonical parameter paths wanted (default: all).
    axis_name: the data axis under ``jax.shard_map``.

  Returns:
    A :class:`GhostCapture`: the tapped calls, which parameters were captured
    exactly and why the others were not, and the ``[batch]`` losses and
    validity.

  Raises:
    ValueError: the model normalises with batch statistics in training mode,
      or a tapped layer was called with or returned something that is not an
      array.
  """
  _check_independent(model)
  info = _analyse(model)
  wanted = frozenset(info.params if paths is None else paths)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = nnx.merge_state(params, rest)
  taps, fallback, calls_meta, pert_shapes = _plan(loss_fn, model, batch, wanted, info)

  def run(m, b):
    return loss_fn(m, b)

  if not taps:  # nothing to tap (e.g. a linen module behind nnx.bridge): all exact vmap
    out = loss_fn(nnx.merge(graphdef, state, copy=True), batch)
    valid = _masked_sum(out)[1]
    return GhostCapture(
      [],
      (),
      {p: fallback.get(p, "no tappable layer") for p in wanted},
      jax.lax.stop_gradient(jnp.where(valid, out.loss, 0.0)),
      valid,
      jax.lax.stop_gradient(out.aux),
      rest,
    )

  zeros = _varying(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), pert_shapes), axis_name)

  def summed(perturbations):
    with _tapping("capture"):
      m = _tapped_model(graphdef, state, taps)
      out, inter = nnx.capture(run, nnx.Intermediate, init=perturbations)(m, batch)
    total, valid = _masked_sum(out)
    new_rest = nnx.split(m, nnx.Param, nnx.Intermediate, nnx.Perturbation, ...)[3]
    return total, (inter, valid, out, new_rest)

  grads, (inter, valid, out, new_rest) = jax.grad(summed, has_aux=True)(zeros)
  gflat, iflat = _flat(grads), _flat(inter)
  calls = []
  for mpath, tag, nstack in sorted(calls_meta):
    args, kwargs = iflat[f"{mpath}/{_IN}{tag}"][0]
    method, index = _parse(_OUT + tag)
    calls.append(
      Call(
        mpath,
        method,
        index,
        tuple(args),
        dict(kwargs),
        gflat[f"{mpath}/{_OUT}{tag}"].astype(jnp.float32),
        nstack,
      )
    )
  exact = tuple(p for p in info.params if p in wanted and p not in fallback)
  losses = jax.lax.stop_gradient(jnp.where(valid, out.loss, 0.0))
  rest_out = _restore_rest_types(rest, new_rest)
  return GhostCapture(
    calls,
    exact,
    {p: fallback[p] for p in wanted if p in fallback},
    losses,
    valid,
    jax.lax.stop_gradient(out.aux),
    rest_out,
  )


def _restore_rest_types(rest, new_rest):
  """The updated non-parameter state, with the structure of ``rest``."""
  new = _flat(new_rest)
  return nnx.from_flat_state(
    [(p, v.replace(new.get(_path_str(p), v.get_value()))) for p, v in nnx.to_flat_state(rest)]
  )


# --- per-parameter terms ---------------------------------------------------------


class _Outer(NamedTuple):
  """Per-sample gradient ``sum_t left_t right_t^T`` of a parameter reshaped to ``[d1, d2]``.

  ``left`` is ``[B, T, d1]``, or ``[B, T]`` integer ids (one-hot rows of width
  ``d1``); ``right`` is ``[B, T, d2]``. ``shape`` is the parameter's shape.
  """

  left: jax.Array
  right: jax.Array
  d1: int
  shape: tuple


class _Dense(NamedTuple):
  """Per-sample gradients formed explicitly: ``grads`` is ``[B, *shape]``."""

  grads: jax.Array


def _as_seq(x, features: bool = True):
  """``[B, ..., d]`` -> ``[B, T, d]`` (or ``[B, ...]`` ids -> ``[B, T]``)."""
  b = x.shape[0]
  return x.reshape(b, -1, x.shape[-1]) if features else x.reshape(b, -1)


def _layer_fn(module: nnx.Module, method: str, axis_name):
  """``f(own params, rest, *args, **kwargs)`` for one slice of a (stacked) leaf layer."""
  graphdef, own, other = nnx.split(module, nnx.Param, ...)

  def apply(p, o, args, kwargs):
    m = nnx.merge(graphdef, p, o, copy=True)
    return getattr(m, method)(*args, **kwargs)

  return apply, own, other


def _terms(call: Call, module: nnx.Module, attrs: dict[str, str], axis_name) -> dict[str, list]:
  """The terms (per parameter) of one unstacked call (``nstack == 0``)."""
  g = call.out_grad
  out: dict[str, list] = {}
  x = call.args[0] if call.args else None
  plain = not call.kwargs and len(call.args) == 1
  if isinstance(module, nnx.Embed) and call.method == "attend" and plain:
    out[attrs["embedding"]] = [
      _Outer(_as_seq(g), _as_seq(x.astype(jnp.float32)), module.embedding.shape[0], module.embedding.shape)
    ]
    return out
  if isinstance(module, nnx.Embed) and call.method == "__call__" and plain:
    out[attrs["embedding"]] = [
      _Outer(_as_seq(x, features=False), _as_seq(g), module.embedding.shape[0], module.embedding.shape)
    ]
    return out
  kernel_dims = None
  if isinstance(module, nnx.Linear) and plain:
    kernel_dims = (1, 1)
  elif (
    isinstance(module, nnx.LinearGeneral)
    and plain
    and not module.batch_axis
    and tuple(sorted(a % x.ndim for a in module.axis)) == tuple(range(x.ndim - len(module.axis), x.ndim))
    and tuple(a % x.ndim for a in module.axis) == tuple(sorted(a % x.ndim for a in module.axis))
  ):
    kernel_dims = (len(module.axis), len(module.out_features))
  if kernel_dims is not None:
    n_in, n_out = kernel_dims
    kshape = module.kernel.shape
    d1 = math.prod(kshape[:n_in])
    left = x.reshape(x.shape[0], -1, d1).astype(jnp.float32)
    right = g.reshape(g.shape[0], -1, math.prod(kshape[n_in:]))
    out[attrs["kernel"]] = [_Outer(left, right, d1, kshape)]
    if "bias" in attrs and module.bias is not None:
      bshape = module.bias.shape
      out[attrs["bias"]] = [_Dense(g.reshape(g.shape[0], -1, *bshape).sum(1))]
    rest_attrs = {a: p for a, p in attrs.items() if a not in ("kernel", "bias")}
    if not rest_attrs:
      return out
  # Generic: re-apply the layer to each sample's input and take the layer-local vjp.
  apply, own, other = _layer_fn(module, call.method, axis_name)
  own = _varying(own, axis_name)

  def one(args, kwargs, gi):
    add = lambda t: jax.tree.map(lambda a: a[None], t)
    y, vjp = jax.vjp(lambda p: apply(p, other, add(args), add(kwargs)), own)
    return vjp(gi[None].astype(y.dtype))[0]

  per = jax.vmap(one)(call.args, call.kwargs, g)
  flat = {_path_str(p): v.get_value() for p, v in nnx.to_flat_state(per)}
  for a, p in attrs.items():
    if p not in out and a in flat:
      out[p] = [_Dense(flat[a].astype(jnp.float32))]
  return out


def _group(x, groups: int | None, summed: bool):
  """Groups samples into microbatches: ``[B, T, ...]`` -> ``[M, (B/M) T, ...]``
  (token axes merged) or, for explicit gradients, ``[B, ...]`` -> summed ``[M, ...]``."""
  if groups is None:
    return x
  if x.shape[0] % groups:
    raise ValueError(f"batch size {x.shape[0]} is not divisible into {groups} microbatches.")
  y = x.reshape(groups, -1, *x.shape[1:])
  return y.sum(1) if summed else y.reshape(groups, -1, *x.shape[2:])


def _grouped(term, groups):
  if isinstance(term, _Dense):
    return _Dense(_group(term.grads, groups, summed=True))
  return term._replace(left=_group(term.left, groups, False), right=_group(term.right, groups, False))


def _outer_dense(t: _Outer) -> jax.Array:
  """``[B, *shape]`` explicit per-sample gradient of an outer-product term."""
  if t.left.ndim == 2:  # one-hot ids
    b, n = t.left.shape
    rows = jnp.zeros((b, t.d1, t.right.shape[-1]), jnp.float32)
    rows = jax.vmap(lambda r, i, v: r.at[i].add(v))(rows, t.left, t.right)
  else:
    rows = jnp.einsum("btd,btp->bdp", t.left, t.right)
  return rows.reshape(rows.shape[0], *t.shape)


def _cross(a: _Outer, c: _Outer) -> jax.Array:
  """``[B]`` inner products ``<sum_t a.l_t a.r_t^T, sum_s c.l_s c.r_s^T>``."""
  rr = jnp.einsum("btp,bsp->bts", a.right, c.right)
  if a.left.ndim == 2 and c.left.ndim == 2:
    ll = (a.left[:, :, None] == c.left[:, None, :]).astype(jnp.float32)
  elif a.left.ndim == 2:
    ll = _cross_ids(a.left, c.left)
  elif c.left.ndim == 2:
    ll = jnp.swapaxes(_cross_ids(c.left, a.left), 1, 2)
  else:
    ll = jnp.einsum("btd,bsd->bts", a.left, c.left)
  return jnp.sum(ll * rr, axis=(1, 2))


def _cross_ids(ids, dense):
  """``[B, T_ids, T_dense]`` with entry ``dense[s, ids[t]]`` (gathered without
  transposing ``dense``, which may be as large as the logits)."""
  return jnp.swapaxes(jnp.take_along_axis(dense, ids[:, None, :], axis=2), 1, 2)


def _norm_sq(terms: list, rule: str) -> jax.Array:
  """``[B]`` squared norm of the sum of a parameter's per-use gradients."""
  if all(isinstance(t, _Outer) for t in terms):
    if len(terms) == 1:
      t = terms[0]
      n, d2 = t.right.shape[1], t.right.shape[2]
      if n == 1 and t.left.ndim == 3:
        return jnp.sum(t.left[:, 0] ** 2, -1) * jnp.sum(t.right[:, 0] ** 2, -1)
      gram = n * (t.d1 + d2) < t.d1 * d2 if rule == "auto" else rule == "ghost"
      if t.left.ndim == 2 or gram:
        return _cross(t, t)
      return jnp.sum(jnp.einsum("btd,btp->bdp", t.left, t.right) ** 2, axis=(1, 2))
    ids = any(t.left.ndim == 2 for t in terms)
    n = sum(t.right.shape[1] for t in terms)
    d1, d2 = terms[0].d1, terms[0].right.shape[2]
    if ids or (rule == "auto" and n * (d1 + d2) < d1 * d2) or rule == "ghost":
      total = 0.0
      for i, a in enumerate(terms):
        for j in range(i, len(terms)):
          total = total + (1.0 if i == j else 2.0) * _cross(a, terms[j])
      return total
  dense = sum(t.grads if isinstance(t, _Dense) else _outer_dense(t) for t in terms)
  return jnp.sum(jnp.square(dense).reshape(dense.shape[0], -1), axis=1)


def _weighted_grad(terms: list, calls_w) -> jax.Array:
  """Gradient of ``sum_i w_i l_i`` from one parameter's terms (``w`` folded in)."""
  total = 0.0
  for t, w in zip(terms, calls_w):
    if isinstance(t, _Dense):
      total = total + jnp.tensordot(w, t.grads, axes=1)
    elif t.left.ndim == 2:
      rows = (t.right * w[:, None, None]).reshape(-1, t.right.shape[-1])
      total = total + jnp.zeros((t.d1, rows.shape[-1]), jnp.float32).at[t.left.reshape(-1)].add(rows).reshape(
        t.shape
      )
    else:
      total = total + jnp.einsum("btd,btp->dp", t.left, t.right * w[:, None, None]).reshape(t.shape)
  return total


def _param_terms(
  capture: GhostCapture, info: _Model, axis_name, reduce: Callable[[dict[str, list]], dict[str, jax.Array]]
) -> dict[str, jax.Array]:
  """Applies ``reduce`` to the terms of every exactly captured parameter.

  Parameters reached by the same calls are reduced together (a layer's kernel
  and bias). Stacked calls are mapped with ``vmap`` over their stack axes, so
  ``reduce`` sees one layer slice at a time; results carry the stack axes first.
  """
  exact = set(capture.exact)
  reach: dict[str, list[Call]] = {}
  for c in capture.calls:
    for p in info.own[c.module].values():
      if p in exact:
        reach.setdefault(p, []).append(c)
  groups: dict[tuple, list[str]] = {}
  for p, calls in reach.items():
    groups.setdefault(tuple((c.module, c.method, c.index) for c in calls), []).append(p)
  results = {}
  for ps in groups.values():
    calls = reach[ps[0]]
    nstack = calls[0].nstack
    mods = sorted({c.module for c in calls})
    splits = {m: nnx.split(info.modules[m]) for m in mods}

    def slice_fn(arrays, states, calls=calls, ps=ps, splits=splits):
      terms: dict[str, list] = {}
      for c, (args, kwargs, g) in zip(calls, arrays):
        module = nnx.merge(splits[c.module][0], states[c.module], copy=True)
        one = c._replace(args=args, kwargs=kwargs, out_grad=g, nstack=0)
        for q, ts in _terms(one, module, info.own[c.module], axis_name).items():
          if q in ps:
            terms.setdefault(q, []).extend(ts)
      return reduce(terms)

    fn = slice_fn
    for _ in range(nstack):
      fn = jax.vmap(fn)
    results.update(fn([(c.args, c.kwargs, c.out_grad) for c in calls], {m: splits[m][1] for m in mods}))
  return results


def ghost_norms_from_capture(
  capture: GhostCapture,
  model: nnx.Module,
  *,
  linear_rule: Literal["auto", "ghost", "direct"] = "auto",
  microbatches: int | None = None,
  axis_name: AxisName = None,
  params: Sequence[str] | None = None,
) -> GradNorms:
  """Squared gradient norms per sample (or microbatch) of the exactly captured params.

  Args:
    capture: from :func:`ghost_capture` on ``model``.
    model: the same model.
    linear_rule: ``"auto"``, ``"ghost"`` (Gram matrices) or ``"direct"`` (form
      ``U^T V``) for outer-product parameters.
    microbatches: score contiguous groups of samples instead of samples.
    axis_name: the data axis under ``jax.shard_map``.
    params: restrict to these canonical parameter paths (default: all exact).

  Returns:
    :class:`GradNorms` over the selected exact parameters, grouped per layer:
    ``[batch]`` (or ``[microbatches]``) float32 squared norms, 0 for invalid
    samples.

  Raises:
    ValueError: the batch size is not divisible into ``microbatches``.
  """
  info = _analyse(model)
  want = set(capture.exact if params is None else params) & set(capture.exact)

  def reduce(terms):
    return {
      p: _norm_sq([_grouped(t, microbatches) for t in ts], linear_rule)
      for p, ts in terms.items()
      if p in want
    }

  sub = capture._replace(exact=tuple(p for p in capture.exact if p in want))
  per_param = _param_terms(sub, info, axis_name, reduce)
  by_layer: dict[str, jax.Array] = {}
  stacked: dict[str, jax.Array] = {}
  for p, sq in per_param.items():
    owner = info.params[p].owner
    if sq.ndim > 1:
      stacked[owner] = stacked.get(owner, 0.0) + sq
      sq = sq.reshape(-1, sq.shape[-1]).sum(0)
    by_layer[owner] = by_layer.get(owner, 0.0) + sq
  if microbatches is None:
    by_layer = {k: jnp.where(capture.valid, v, 0.0) for k, v in by_layer.items()}
    stacked = {
      k: jnp.where(capture.valid.reshape((1,) * (v.ndim - 1) + (-1,)), v, 0.0) for k, v in stacked.items()
    }
  n = capture.valid.shape[0] if microbatches is None else microbatches
  total = sum(by_layer.values()) if by_layer else jnp.zeros((n,), jnp.float32)
  return GradNorms(total, by_layer, stacked)


def bookkeeping_grads(
  model: nnx.Module, capture: GhostCapture, weights: jax.Array, *, axis_name: AxisName = None
) -> PyTree:
  """The gradient of ``sum_i w_i l_i`` wrt all parameters, from a capture.

  Book-keeping (Bu et al.): ``dW = U^T diag(w) V`` per outer-product use and
  ``sum_i w_i g_i`` of the explicit per-sample gradients otherwise, from the
  stored inputs and output gradients, so a norm-dependent weighting costs no
  second backward pass. Every parameter must be exactly captured
  (``capture.fallback`` empty); the gradient is local to this device.

  Args:
    model: the model the capture was taken on.
    capture: from :func:`ghost_capture` of ``model`` with all parameters wanted.
    weights: ``[batch]`` per-sample weights ``w`` (detached here; invalid
      samples count 0).
    axis_name: the data axis under ``jax.shard_map`` (the result is still this
      device's part: sum it over the axis).

  Returns:
    An ``nnx.State`` of gradients with the structure of ``nnx.state(model, nnx.Param)``.

  Raises:
    ValueError: a parameter is not exactly captured or not reached by any
      tapped call.
  """
  if capture.fallback:
    p, why = next(iter(capture.fallback.items()))
    raise ValueError(f"book-keeping needs every parameter captured; '{p}' is not: {why}.")
  info = _analyse(model)
  w = jax.lax.stop_gradient(jnp.where(capture.valid, weights, 0.0)).astype(jnp.float32)

  def reduce(terms):
    return {p: _weighted_grad(ts, [w] * len(ts)) for p, ts in terms.items()}

  grads = _param_terms(capture, info, axis_name, reduce)
  out = []
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    p = _path_str(path)
    if p not in grads:
      raise ValueError(f"parameter '{p}' was not reached by any tapped call.")
    out.append((path, v.replace(grads[p].astype(v.get_value().dtype))))
  return nnx.from_flat_state(out)


def ghost_plan(loss_fn: Callable[[Any, PyTree], Any], model: nnx.Module, batch: PyTree) -> dict[str, str]:
  """How ``method="ghost"`` will treat each parameter: ``"ghost"`` or ``"vmap: <why>"``.

  Decided by abstract traces (nothing is computed; cached per model structure,
  loss function and shapes): useful to see which parameters of a model you did
  not write fall back to exact ``vmap`` norms.

  Args:
    loss_fn: ``loss_fn(model, batch) -> LossOutput`` with ``[batch]`` losses.
    model: an NNX model; it is not modified.
    batch: a pytree whose leaves all have the batch as leading axis (only the
      shapes and dtypes matter).

  Returns:
    ``{parameter path: decision}`` for every parameter, in ``nnx.state`` order:
    ``"ghost"`` (exact, from the tapped pass) or ``"vmap: <reason>"`` (exact
    ``vmap`` norms for that parameter alone, or an error with
    ``fallback="error"``).

  Raises:
    ValueError: the model normalises with batch statistics in training mode,
      or one of its layers cannot be tapped at all.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxweights as jw
    >>> model = jw.MLP(3, [4], 2, rngs=nnx.Rngs(0))
    >>> batch = {"x": jnp.ones((5, 3)), "y": jnp.zeros(5, jnp.int32)}
    >>> def loss_fn(model, batch):
    ...   return jw.LossOutput(jw.cross_entropy(model(batch["x"]), batch["y"]))
    >>> plan = jw.ghost_plan(loss_fn, model, batch)
    >>> sorted(plan.items())[:2]
    [('layers/0/bias', 'ghost'), ('layers/0/kernel', 'ghost')]
    >>> len(plan)
    4
  """
  _check_independent(model)
  info = _analyse(model)
  _, fallback, _, _ = _plan(loss_fn, model, batch, frozenset(info.params), info)
  return {p: f"vmap: {fallback[p]}" if p in fallback else "ghost" for p in info.params}


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
  fallback: Literal["error", "vmap"] = "vmap",
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
      prefixes such as ``["blocks/0"]``, or a predicate on the layer path.
    chunk_size: samples per chunk (default: all): for ``"vmap"`` the chunk
      vectorised at once; for ``"ghost"`` the samples captured in one tapped
      pass (``lax.map`` over chunks: peak memory of one chunk's activations and
      output gradients instead of the batch's; see the README for when to pick
      which method).
    num_probes: Gaussian probes for ``"jvp"``.
    key: PRNG key for ``"jvp"``.
    fallback: for ``"ghost"``, what to do with parameters that cannot be tapped
      exactly (see the module docstring): exact ``"vmap"`` norms for just those
      parameters (default), or ``"error"``.
    linear_rule: for ``"ghost"``, force the Gram (``"ghost"``) or the
      outer-product (``"direct"``) form for matmul parameters; ``"auto"`` picks
      the cheaper one per layer.
    microbatches: if given, score contiguous groups instead of samples: the
      squared norm of each group's summed gradient (PRESENCE's microbatch mode).
      The (local) batch size must be divisible by it.
    axis_name: the data axis when called under ``jax.shard_map``.

  Returns:
    :class:`GradNorms` with ``[batch]`` (or ``[microbatches]``) float32 squared
    norms, unnormalised; 0 for samples the loss masks out or whose loss is not
    finite.

  Raises:
    ValueError: a bad ``method``, ``fallback``, ``microbatches``,
      ``chunk_size`` or ``num_probes``; ``"jvp"`` without a ``key``; ``layers``
      selecting no parameter; the model normalising with batch statistics in
      training mode; or, with ``fallback="error"``, a parameter that cannot be
      tapped exactly.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxweights as jw
    >>> model = jw.MLP(3, [4], 2, rngs=nnx.Rngs(0))
    >>> batch = {"x": jnp.arange(15.0).reshape(5, 3) / 10, "y": jnp.array([0, 1, 0, 1, 1])}
    >>> def loss_fn(model, batch):
    ...   return jw.LossOutput(jw.cross_entropy(model(batch["x"]), batch["y"]))
    >>> ghost = nnx.jit(lambda m, b: jw.per_sample_grad_norms(loss_fn, m, b))
    >>> norms = ghost(model, batch)  # exact, one tapped backward pass
    >>> norms.total.shape, sorted(norms.by_layer)
    ((5,), ['layers/0', 'layers/1'])
    >>> oracle = nnx.jit(lambda m, b: jw.per_sample_grad_norms(loss_fn, m, b, method="vmap"))
    >>> exact = oracle(model, batch)
    >>> bool(jnp.allclose(norms.total, exact.total, rtol=1e-4))
    True
  """
  if microbatches is not None and microbatches < 1:
    raise ValueError(f"microbatches must be >= 1, got {microbatches}.")
  if method not in ("ghost", "vmap", "jvp"):
    raise ValueError(f"method must be 'ghost', 'vmap' or 'jvp', got {method!r}.")
  if fallback not in ("error", "vmap"):
    raise ValueError(f"fallback must be 'error' or 'vmap', got {fallback!r}.")
  _check_independent(model)
  info = _analyse(model)
  chosen = [p for p, prm in info.params.items() if _selected(prm.owner, layers)]
  if not chosen:
    owners = sorted({prm.owner for prm in info.params.values()})
    raise ValueError(f"layers={layers!r} selects no parameters; layers with parameters are: {owners}.")
  if method == "vmap":
    return _vmap_norms(loss_fn, model, batch, chosen, chunk_size, axis_name, microbatches)
  if method == "jvp":
    if key is None:
      raise ValueError("method='jvp' needs a PRNG key.")
    if num_probes < 1:
      raise ValueError(f"num_probes must be >= 1, got {num_probes}.")
    return _jvp_norms(loss_fn, model, batch, chosen, num_probes, key, microbatches)

  def ghost(b, groups):
    capture = ghost_capture(loss_fn, model, b, chosen, axis_name=axis_name)
    return norms_from_capture(
      capture,
      loss_fn,
      model,
      b,
      chosen,
      fallback=fallback,
      linear_rule=linear_rule,
      microbatches=groups,
      chunk_size=chunk_size,
      axis_name=axis_name,
    )

  n = jax.tree.leaves(batch)[0].shape[0]
  if chunk_size is None or chunk_size >= n:
    return ghost(batch, microbatches)
  return _ghost_chunked(ghost, batch, n, chunk_size, microbatches)


def _ghost_chunked(ghost, batch, n, chunk_size, microbatches) -> GradNorms:
  """Ghost norms of ``chunk_size`` samples at a time (``lax.map``): the captured
  activations and output gradients of one chunk are live at once, not the batch's."""
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
  if n % chunk_size:
    raise ValueError(f"batch size {n} is not divisible into chunks of {chunk_size}.")
  groups = None
  if microbatches is not None:
    if n % microbatches:
      raise ValueError(f"batch size {n} is not divisible into {microbatches} microbatches.")
    size = n // microbatches
    if chunk_size % size:
      raise ValueError(f"chunk_size ({chunk_size}) must hold whole microbatches of {size} samples.")
    groups = chunk_size // size
  chunks = jax.tree.map(lambda x: x.reshape(n // chunk_size, chunk_size, *x.shape[1:]), batch)
  out = jax.lax.map(lambda b: ghost(b, groups), chunks)
  flat = lambda x: x.reshape(-1, *x.shape[2:])
  stacked = {k: jnp.moveaxis(v, 0, -2).reshape(*v.shape[1:-1], -1) for k, v in out.stacked.items()}
  return GradNorms(flat(out.total), {k: flat(v) for k, v in out.by_layer.items()}, stacked)


def norms_from_capture(
  capture: GhostCapture,
  loss_fn: Callable[[Any, PyTree], Any],
  model: nnx.Module,
  batch: PyTree,
  chosen: Sequence[str],
  *,
  fallback: Literal["error", "vmap"] = "vmap",
  linear_rule: Literal["auto", "ghost", "direct"] = "auto",
  microbatches: int | None = None,
  chunk_size: int | None = None,
  axis_name: AxisName = None,
) -> GradNorms:
  """Ghost norms of the exact parameters plus ``vmap`` norms of the rest of ``chosen``.

  Args:
    capture: from :func:`ghost_capture` of ``loss_fn`` on ``model`` and ``batch``.
    loss_fn: ``loss_fn(model, batch) -> LossOutput``.
    model: the same model.
    batch: the same batch.
    chosen: canonical parameter paths to count.
    fallback: ``"vmap"`` (exact ``vmap`` norms for the parameters the capture
      could not take exactly) or ``"error"``.
    linear_rule: see :func:`ghost_norms_from_capture`.
    microbatches: score contiguous groups of samples instead of samples.
    chunk_size: samples per chunk of the ``vmap`` fallback.
    axis_name: the data axis under ``jax.shard_map``.

  Returns:
    :class:`GradNorms` with ``[batch]`` (or ``[microbatches]``) float32 squared
    norms over ``chosen``.

  Raises:
    ValueError: with ``fallback="error"``, a chosen parameter that the capture
      could not take exactly (the message names it and why).
  """
  missing = {p: why for p, why in capture.fallback.items() if p in chosen}
  if missing and fallback == "error":
    lines = "; ".join(f"'{p}': {why}" for p, why in missing.items())
    raise ValueError(
      f"ghost norms cannot capture every use of these parameters exactly: {lines}. "
      "Pass fallback='vmap' for exact vmap norms of just those parameters."
    )
  exact = [p for p in chosen if p in capture.exact]
  result = (
    ghost_norms_from_capture(
      capture, model, linear_rule=linear_rule, microbatches=microbatches, axis_name=axis_name, params=exact
    )
    if exact
    else None
  )
  if not missing:
    return result
  extra = _vmap_norms(loss_fn, model, batch, list(missing), chunk_size, axis_name, microbatches)
  if result is None:
    return extra
  by_layer = dict(result.by_layer)
  for k, v in extra.by_layer.items():
    by_layer[k] = by_layer.get(k, 0.0) + v
  return GradNorms(result.total + extra.total, by_layer, result.stacked)


# --- vmap and jvp ------------------------------------------------------------------


def _split_selected(model, paths):
  """Selected parameter values, their owners, and ``rebuild(values) -> model``."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  wanted = set(paths)
  flat = list(nnx.to_flat_state(params))
  sel = [(p, v.get_value()) for p, v in flat if _path_str(p) in wanted]
  other = [(p, v.get_value()) for p, v in flat if _path_str(p) not in wanted]

  def rebuild(sel_values, rest_state=rest):
    values = dict(other)
    values.update(zip([p for p, _ in sel], sel_values))
    new = nnx.from_flat_state([(p, v.replace(values[p])) for p, v in flat])
    return nnx.merge(graphdef, new, rest_state, copy=True)

  owners = [_path_str(p[:-1]) for p, _ in sel]
  return [v for _, v in sel], owners, rebuild, rest


def _per_sample_streams(rest, index):
  """The model's random streams folded with the sample index (independent masks)."""
  flat = list(nnx.to_flat_state(rest))
  if not any(isinstance(v, nnx.RngKey) for _, v in flat):
    return rest

  def fold(keys):  # stacked streams (nnx.vmap blocks) hold a key per layer
    flat_keys = keys.reshape(-1)
    return jax.vmap(lambda k: jax.random.fold_in(k, index))(flat_keys).reshape(keys.shape)

  return nnx.from_flat_state(
    [(p, v.replace(fold(v.get_value())) if isinstance(v, nnx.RngKey) else v) for p, v in flat]
  )


def _vmap_norms(loss_fn, model, batch, paths, chunk_size, axis_name, microbatches=None) -> GradNorms:
  sel, owners, rebuild, rest = _split_selected(model, paths)
  sel = _varying(sel, axis_name)
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
  if microbatches is None:
    groups = jax.tree.map(lambda x: x[:, None], batch)  # [B, 1, ...]: one sample a group
  else:
    _group(jax.tree.leaves(batch)[0], microbatches, False)  # checks divisibility
    groups = jax.tree.map(lambda x: x.reshape(microbatches, x.shape[0] // microbatches, *x.shape[1:]), batch)
  b = jax.tree.leaves(groups)[0].shape[0]

  def one(xs):
    group, index = xs

    def loss(values):
      out = loss_fn(rebuild(values, _per_sample_streams(rest, index)), group)
      total, valid = _masked_sum(out)
      return total, jnp.any(valid)

    grads, valid = jax.grad(loss, has_aux=True)(sel)
    return [jnp.where(valid, jnp.sum(jnp.square(g.astype(jnp.float32))), 0.0) for g in grads]

  sq_leaves = jax.lax.map(one, (groups, jnp.arange(b)), batch_size=min(chunk_size or b, b))
  by_layer: dict[str, jax.Array] = {}
  for sq, owner in zip(sq_leaves, owners):
    by_layer[owner] = by_layer.get(owner, 0.0) + sq
  return GradNorms(sum(by_layer.values()), by_layer)


def _jvp_norms(loss_fn, model, batch, paths, num_probes, key, microbatches=None) -> GradNorms:
  sel, _, rebuild, _ = _split_selected(model, paths)

  def projections(probe_key):
    keys = jax.random.split(probe_key, len(sel))
    tangent = [jax.random.normal(k, v.shape, jnp.float32).astype(v.dtype) for k, v in zip(keys, sel)]

    def losses(values):
      out = loss_fn(rebuild(values), batch)
      return jnp.where(_valid(out), out.loss, 0.0)

    _, jv = jax.jvp(losses, (sel,), (tangent,))
    jv = jv.astype(jnp.float32)
    if microbatches is not None:
      jv = _group(jv[:, None], microbatches, False).sum(axis=1)
    return jnp.square(jv)

  sq = jax.lax.map(projections, jax.random.split(key, num_probes))
  return GradNorms(jnp.mean(sq, axis=0), {})
