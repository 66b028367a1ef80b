"""Foreign models as NNX models: linen modules and Hugging Face Flax causal LMs.

:class:`LinenModel` turns any ``flax.linen`` module and its ``params`` into an NNX
model that the train step, the weightings and per-sample gradient norms accept:

* every linen layer that holds parameters becomes a small NNX layer (a *proxy*)
  named by its linen path (``"transformer.h.0.attn.c_attn"``), holding those
  parameters as ``nnx.Param``; ``linen.Dense`` becomes ``nnx.Linear`` and
  ``linen.Embed`` becomes ``nnx.Embed``, so their ghost norms use the Gram /
  outer-product forms; any other layer (``LayerNorm``, HF's ``FlaxConv1D``,
  ``Conv``...) is re-applied per sample for its exact per-sample gradient;
* the forward pass is the linen ``apply`` with ``nn.intercept_methods``: a call
  of a proxied layer runs the proxy, so ghost norms tap it like any NNX layer;
  parameters read any other way (HF's tied LM head reads the token embedding
  from ``variables``) are detected by the ghost engine and get exact ``vmap``
  norms;
* dropout is active in training mode (``rngs`` stream ``"dropout"``, reseeded
  by the train step each step) and off under ``nnx.view(model,
  deterministic=True)`` (what ``make_eval_step`` uses).

Only the ``params`` collection is supported: a linen model with mutable
collections (``batch_stats``, caches) raises a clear error.

:func:`hf_causal_lm` wraps a transformers Flax causal LM (transformers 4.57.x,
the last line with Flax models; the ``hf`` extra) built locally from a config:
``model(ids) -> [batch, seq, vocab]`` logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx

if TYPE_CHECKING:
  import flax.linen as nn
  from transformers import FlaxPreTrainedModel

PyTree = Any


class _Static:
  """A Python object kept as static (hashed by identity) in an NNX module."""

  def __init__(self, value):
    self.value = value

  def __hash__(self):
    return id(self.value)

  def __eq__(self, other):
    return isinstance(other, _Static) and other.value is self.value


class LinenLayer(nnx.Module):
  """A proxy for one linen layer: its parameters as ``nnx.Param`` attributes.

  Calling the proxy applies the linen layer with the proxy's current parameter
  values, so gradients flow to the ``nnx.Param`` attributes.

  Args:
    definition: the unbound linen layer (``module.clone(parent=None)``), or
      None for a parameter holder that is never called (its parameters are
      read directly by the enclosing linen module).
    params: the layer's own parameters, ``{name: array}``.
  """

  def __init__(self, definition: nn.Module | None, params: dict[str, jax.Array]) -> None:
    self.linen = _Static(definition)
    for name, value in params.items():
      setattr(self, name, nnx.Param(jnp.asarray(value)))
    self.names = tuple(params)

  def _apply(self, method: str, *args, **kwargs):
    params = {n: getattr(self, n)[...] for n in self.names}
    return self.linen.value.apply({"params": params}, *args, method=method, **kwargs)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    """Applies the linen layer's ``__call__`` with the proxy's parameters.

    Args:
      *args: the layer's positional arguments.
      **kwargs: the layer's keyword arguments.

    Returns:
      The linen layer's output.
    """
    return self._apply("__call__", *args, **kwargs)

  def attend(self, *args: Any, **kwargs: Any) -> Any:
    """Applies the linen layer's ``attend`` (e.g. ``linen.Embed.attend``).

    Args:
      *args: the method's positional arguments.
      **kwargs: the method's keyword arguments.

    Returns:
      The method's output.
    """
    return self._apply("attend", *args, **kwargs)


def _proxy(definition, params: dict[str, jax.Array], rngs: nnx.Rngs) -> nnx.Module:
  """A stock NNX layer where one matches the linen layer exactly, else a proxy."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  if type(definition) is nn.Dense and set(params) <= {"kernel", "bias"} and params["kernel"].ndim == 2:
    d = definition
    if d.dot_general is None and d.dot_general_cls is None and d.precision is None:
      layer = nnx.Linear(
        *params["kernel"].shape,
        use_bias="bias" in params,
        dtype=d.dtype,
        param_dtype=params["kernel"].dtype,
        rngs=rngs,
      )
      layer.kernel.set_value(jnp.asarray(params["kernel"]))
      if "bias" in params:
        layer.bias.set_value(jnp.asarray(params["bias"]))
      return layer
  if type(definition) is nn.Embed and set(params) == {"embedding"}:
    e = jnp.asarray(params["embedding"])
    layer = nnx.Embed(*e.shape, dtype=definition.dtype, param_dtype=e.dtype, rngs=rngs)
    layer.embedding.set_value(e)
    return layer
  return LinenLayer(definition, params)


def _leaf_dicts(tree: dict, prefix=()) -> list[tuple[tuple[str, ...], dict]]:
  """Every dict node of ``tree`` that directly holds arrays: ``(path, {name: array})``."""
  out = []
  arrays = {k: v for k, v in tree.items() if not isinstance(v, dict)}
  if arrays:
    out.append((prefix, arrays))
  for k, v in tree.items():
    if isinstance(v, dict):
      out.extend(_leaf_dicts(v, prefix + (k,)))
  return out


def _set(tree: dict, path: Sequence[str], value) -> None:
  for k in path:
    tree = tree.setdefault(k, {})
  tree.update(value)


class LinenModel(nnx.Module):
  """A linen module and its parameters as an NNX model.

  Args:
    module: the ``flax.linen`` module.
    params: its ``params`` collection (a nested dict, e.g. ``variables["params"]``
      or an HF model's ``.params``).
    example_args: positional arguments of one example call (traced once,
      abstractly, to find which linen layer each parameter dict belongs to).
    call: ``call(module, variables, *args, deterministic, rngs, **kwargs) ->
      output``; default ``module.apply(variables, *args, rngs=rngs, **kwargs)``
      (dropout is then governed by the module's own flags).
    dropout_seed: seed of the ``"dropout"`` stream.
    example_kwargs: keyword arguments of the example call.

  Calling the model runs the linen module with the proxies' parameters.
  ``model.layers`` maps ``"a.b.c"`` linen paths to the proxies (NNX layers).

  Raises:
    ValueError: ``params`` is not a non-empty nested dict, or holds other
      collections than ``params`` (mutable collections are not supported).

  Examples:
    >>> import flax.linen as nn
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxweights as jw
    >>> module = nn.Dense(3)
    >>> params = module.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
    >>> model = jw.LinenModel(module, params, (jnp.ones((1, 4)),))
    >>> model(jnp.ones((2, 4))).shape
    (2, 3)
    >>> jw.count_params(model)  # 4 * 3 + 3, held by an nnx.Linear proxy
    15
  """

  def __init__(
    self,
    module: nn.Module,
    params: PyTree,
    example_args: Sequence[Any] = (),
    *,
    call: Callable[..., Any] | None = None,
    dropout_seed: int = 0,
    example_kwargs: dict | None = None,
  ) -> None:
    import flax.linen as nn  # pylint: disable=import-outside-toplevel

    params = jax.tree.map(jnp.asarray, _plain(params))
    if not isinstance(params, dict) or not params:
      raise ValueError("params must be a non-empty nested dict (the linen 'params' collection).")
    if "params" in params and isinstance(params["params"], dict) and len(params) > 1:
      raise ValueError(
        f"got collections {sorted(params)}: pass only variables['params']; linen "
        "models with mutable collections (batch_stats, caches) are not supported."
      )
    self.module = _Static(module)
    self.call_fn = _Static(call)
    self.deterministic = False
    self.rngs = nnx.Rngs(dropout=dropout_seed)
    definitions: dict[tuple, Any] = {}

    def record(next_fun, args, kwargs, context):
      m = context.module
      path = tuple(m.scope.path) if m.scope is not None else ()
      if path not in definitions:
        definitions[path] = m.clone(parent=None)
      return next_fun(*args, **kwargs)

    def trace():
      with nn.intercept_methods(record):
        return self._run(params, example_args, example_kwargs or {}, jax.random.key(0))

    jax.eval_shape(trace)
    layers = {}
    for path, arrays in _leaf_dicts(params):
      name = ".".join(path)
      if path in definitions and not any(isinstance(v, dict) for v in _get(params, path).values()):
        layers[name] = _proxy(definitions[path], arrays, nnx.Rngs(0))
      else:  # parameters of a module that also has sub-layers: held, read directly
        layers[name] = LinenLayer(None, arrays)
    self.layers = nnx.Dict(layers)
    self.paths = _Static({name: tuple(name.split(".")) if name else () for name in layers})

  def set_view(self, deterministic: bool | None = None) -> None:
    """Used by ``nnx.view``: ``deterministic=True`` turns dropout off.

    Args:
      deterministic: True for evaluation (no dropout), False for training;
        None leaves the mode unchanged.
    """
    if deterministic is not None:
      self.deterministic = deterministic

  def _variables(self) -> dict:
    params: dict = {}
    for name, path in self.paths.value.items():
      layer = self.layers[name]
      own = {n: getattr(layer, n)[...] for n in _param_names(layer)}
      _set(params, path, own)
    return params

  def _run(self, params, args, kwargs, key):
    rngs = {"dropout": key}
    call = self.call_fn.value
    variables = {"params": params}
    if call is None:
      return self.module.value.apply(variables, *args, rngs=rngs, **kwargs)
    return call(self.module.value, variables, *args, deterministic=self.deterministic, rngs=rngs, **kwargs)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    """Runs the linen module with the proxies' parameters.

    In training mode each call draws a fresh key from the ``"dropout"`` stream.

    Args:
      *args: the linen module's positional arguments.
      **kwargs: the linen module's keyword arguments.

    Returns:
      The linen module's output (or ``call``'s, when given).
    """
    import flax.linen as nn  # pylint: disable=import-outside-toplevel

    by_path = {}
    for name, path in self.paths.value.items():
      layer = self.layers[name]
      if not isinstance(layer, LinenLayer) or layer.linen.value is not None:
        by_path[path] = layer

    def route(next_fun, a, kw, context):
      m = context.module
      path = tuple(m.scope.path) if m.scope is not None else ()
      layer = by_path.get(path)
      if layer is not None and context.method_name in ("__call__", "attend"):
        return getattr(layer, context.method_name)(*a, **kw)
      return next_fun(*a, **kw)

    key = self.rngs.dropout() if not self.deterministic else jax.random.key(0)
    with nn.intercept_methods(route):
      return self._run(self._variables(), args, kwargs, key)


def _param_names(layer) -> tuple[str, ...]:
  if isinstance(layer, LinenLayer):
    return layer.names
  return tuple(n for n in ("kernel", "bias", "embedding") if isinstance(getattr(layer, n, None), nnx.Param))


def _get(tree: dict, path: Sequence[str]) -> dict:
  for k in path:
    tree = tree[k]
  return tree


def _plain(tree):
  """FrozenDict / nested mappings -> plain dicts."""
  if hasattr(tree, "items"):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def hf_causal_lm(hf_model: FlaxPreTrainedModel, *, seq_len: int = 8, dropout_seed: int = 0) -> LinenModel:
  """A transformers Flax causal LM (e.g. ``FlaxGPT2LMHeadModel``) as an NNX model.

  ``model(ids)`` with ``ids`` int ``[batch, seq]`` returns float32 logits
  ``[batch, seq, vocab]``; attention mask all ones, positions ``0..seq-1`` per
  sample. Dropout follows the HF config's rates in training mode. Build the HF
  model from a local config (nothing is downloaded), e.g.
  ``FlaxGPT2LMHeadModel(GPT2Config(n_layer=2, ...), seed=0)``.

  Args:
    hf_model: a transformers ``Flax*ForCausalLM`` / ``Flax*LMHeadModel`` with
      initialised ``.params``.
    seq_len: sequence length of the abstract example call.
    dropout_seed: seed of the dropout stream.

  Returns:
    The wrapping :class:`LinenModel`, mapping int ``[batch, seq]`` ids to float32
    ``[batch, seq, vocab]`` logits.
  """

  def call(module, variables, ids, *, deterministic, rngs):
    b, t = ids.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    out = module.apply(variables, ids, jnp.ones_like(ids), positions, deterministic=deterministic, rngs=rngs)
    return out.logits.astype(jnp.float32)

  example = (jnp.zeros((1, seq_len), jnp.int32),)
  return LinenModel(hf_model.module, hf_model.params, example, call=call, dropout_seed=dropout_seed)
