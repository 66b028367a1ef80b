"""Bring your own model: a conformance suite over models we did not design for.

For each model: the plain step and every applicable family's step run; ghost norms
equal vmap norms (float32, rel. 1e-5) with every parameter captured exactly unless
the model's structure says otherwise (and then the plan says why); the one-backward
PRESENCE gradient equals the two-pass gradient; 1 device equals 8 devices.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxweights as jw
from jaxweights import data as jd
from jaxweights import grad_norms as gn
from jaxweights.substrates.models import Llama, LlamaConfig

RTOL = 1e-5


def assert_norms_close(got, want, rtol=RTOL):
  np.testing.assert_allclose(got.total, want.total, rtol=rtol, atol=1e-7)
  assert set(got.by_layer) == set(want.by_layer)
  for k in want.by_layer:
    np.testing.assert_allclose(got.by_layer[k], want.by_layer[k], rtol=rtol, atol=1e-7, err_msg=k)


def assert_trees_close(a, b, rtol=RTOL, atol=1e-7):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# --- the zoo ----------------------------------------------------------------------


class DigitsCNN(nnx.Module):
  """Conv + BatchNorm + Dropout on 8x8 digits."""

  def __init__(self, rngs):
    self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.conv2 = nnx.Conv(8, 8, (3, 3), strides=(2, 2), rngs=rngs)
    self.drop = nnx.Dropout(0.3, rngs=rngs)
    self.head = nnx.Linear(4 * 4 * 8, 10, rngs=rngs)

  def __call__(self, x):
    x = x.reshape(x.shape[0], 8, 8, 1)
    x = nnx.relu(self.conv2(nnx.relu(self.bn(self.conv1(x)))))
    return self.head(self.drop(x).reshape(x.shape[0], -1))


class GPT2Style(nnx.Module):
  """Learned positions looked up WITHOUT a batch axis, a tied LM head, LayerNorm,
  stock MultiHeadAttention, dropout."""

  def __init__(self, vocab=40, d=16, t=8, rngs=None):
    self.wte = nnx.Embed(vocab, d, rngs=rngs)
    self.wpe = nnx.Embed(t, d, rngs=rngs)
    self.ln1 = nnx.LayerNorm(d, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      num_heads=2, in_features=d, decode=False, dropout_rate=0.1, deterministic=False, rngs=rngs
    )
    self.ln2 = nnx.LayerNorm(d, rngs=rngs)
    self.fc = nnx.Linear(d, 2 * d, rngs=rngs)
    self.proj = nnx.Linear(2 * d, d, rngs=rngs)
    self.drop = nnx.Dropout(0.1, rngs=rngs)
    self.ln_f = nnx.LayerNorm(d, rngs=rngs)

  def __call__(self, ids):
    t = ids.shape[1]
    x = self.wte(ids) + self.wpe(jnp.arange(t))[None]  # [1, T, D]: shared by the batch
    mask = nnx.make_causal_mask(ids)
    x = x + self.attn(self.ln1(x), mask=mask)
    x = x + self.drop(self.proj(nnx.gelu(self.fc(self.ln2(x)))))
    return self.wte.attend(self.ln_f(x))


class SharedParam(nnx.Module):
  """One Param held by two layers, and a kernel reused outside its layer."""

  def __init__(self, rngs):
    self.a = nnx.Linear(6, 6, rngs=rngs)
    self.b = nnx.Linear(6, 6, rngs=rngs)
    self.b.kernel = self.a.kernel
    self.head = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    h = jnp.tanh(self.b(jnp.tanh(self.a(x))))
    return self.head(h) + 0.1 * jnp.tanh(h @ self.a.kernel[...])[..., :3]


def seq_loss(model, batch):
  l, m = jw.token_mean_cross_entropy(model(batch["ids"]), batch["y"])
  return jw.LossOutput(l, m)


def lm_batch(b=8, t=8, vocab=40, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "ids": jnp.asarray(rng.integers(0, vocab, (b, t))),
    "y": jnp.asarray(rng.integers(0, vocab, (b, t))),
  }


def digits_batch(b=16, seed=0):
  data = jd.load_digits(seed=0)
  return {k: jnp.asarray(v) for k, v in jd.digits_batch(data, seed=seed, step=0, batch_size=b).items()}


def llama(scan, tied=True, dropout=0.0):
  cfg = LlamaConfig(
    vocab_size=40,
    d_model=16,
    n_layers=2,
    n_heads=2,
    d_ff=24,
    max_len=8,
    scan=scan,
    tied=tied,
    dropout=dropout,
  )
  return Llama(cfg, rngs=nnx.Rngs(0, dropout=1))


def cls_loss(model, batch):
  return jw.noisy_labels.classification_loss()(model, batch)


ZOO = {
  "llama": (lambda: llama(scan=False), seq_loss, lm_batch),
  "llama_scan": (lambda: llama(scan=True), seq_loss, lm_batch),
  "gpt2_style": (lambda: GPT2Style(rngs=nnx.Rngs(0, dropout=1)), seq_loss, lm_batch),
  "shared_param": (
    lambda: SharedParam(nnx.Rngs(0)),
    lambda m, b: jw.LossOutput(jw.cross_entropy(m(b["x"]), b["y"])),
    lambda: {
      "x": jnp.asarray(np.random.default_rng(0).normal(size=(8, 6)), jnp.float32),
      "y": jnp.asarray(np.arange(8) % 3),
    },
  ),
}


def eval_model(model):
  return jw.core.step.eval_view(model)


# --- norms --------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name", [n if n != "llama" else pytest.param("llama", marks=pytest.mark.slow) for n in sorted(ZOO)]
)
def test_ghost_equals_vmap(name):
  make, loss, batch_fn = ZOO[name]
  model, batch = eval_model(make()), batch_fn()  # dropout off: vmap then sees the same network
  want = gn.per_sample_grad_norms(loss, model, batch, method="vmap")
  got = gn.per_sample_grad_norms(loss, model, batch)
  assert_norms_close(got, want)
  plan = gn.ghost_plan(loss, model, batch)
  fell_back = {p for p, v in plan.items() if v != "ghost"}
  expected = {"gpt2_style": {"wpe/embedding"}, "shared_param": {"a/kernel"}}.get(name, set())
  assert fell_back == expected, plan
  if expected:
    with pytest.raises(ValueError, match="vmap"):
      gn.per_sample_grad_norms(loss, model, batch, fallback="error")


def test_scanned_stack_gives_per_slice_norms_equal_to_unrolled():
  batch = lm_batch()
  scanned = gn.per_sample_grad_norms(seq_loss, llama(scan=True), batch, fallback="error")
  unrolled = gn.per_sample_grad_norms(seq_loss, llama(scan=False), batch, fallback="error")
  assert scanned.stacked["blocks/q"].shape == (2, 8)
  # Same initial weights? The two models draw their parameters differently, so
  # compare each against its own per-layer sums instead.
  np.testing.assert_allclose(scanned.stacked["blocks/q"].sum(0), scanned.by_layer["blocks/q"], rtol=1e-6)
  assert set(unrolled.by_layer) >= {"blocks/0/q", "blocks/1/q"}


@pytest.mark.slow
def test_tied_embedding_norm_is_norm_of_summed_gradient():
  """The tied embedding's norm is ||g_lookup + g_head||^2, not a sum of norms."""
  model, batch = eval_model(llama(scan=False)), lm_batch()
  got = gn.per_sample_grad_norms(seq_loss, model, batch, fallback="error").by_layer["embed"]
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def one(i):
    b = jax.tree.map(lambda x: x[i : i + 1], batch)
    g = jax.grad(lambda p: seq_loss(nnx.merge(graphdef, p, rest), b).loss[0])(params)
    return jnp.sum(g["embed"]["embedding"][...] ** 2)

  want = jnp.stack([one(i) for i in range(8)])
  np.testing.assert_allclose(got, want, rtol=RTOL)


@pytest.mark.parametrize("name", ["llama_scan", pytest.param("gpt2_style", marks=pytest.mark.slow)])
def test_microbatch_norms_equal_vmap(name):
  make, loss, batch_fn = ZOO[name]
  model, batch = eval_model(make()), batch_fn()
  assert_norms_close(
    gn.per_sample_grad_norms(loss, model, batch, microbatches=4),
    gn.per_sample_grad_norms(loss, model, batch, method="vmap", microbatches=4),
  )


def test_batchnorm_in_training_mode_is_refused_clearly():
  model, batch = DigitsCNN(nnx.Rngs(0, dropout=1)), digits_batch()
  for method in ("ghost", "vmap", "jvp"):
    with pytest.raises(ValueError, match="batch statistics"):
      gn.per_sample_grad_norms(cls_loss, model, batch, method=method, key=jax.random.key(0))
  # In eval mode (running statistics) BatchNorm is row-wise: exact ghost norms
  # (tests/test_grad_norms_layers.py::test_layer_is_exact[BatchNorm_eval]).
  assert all(v == "ghost" for v in gn.ghost_plan(cls_loss, eval_model(model), batch).values())


# --- the train step -------------------------------------------------------------------


def _steps(model, loss, weighting, batch, n=2, mesh=None, tx=None, seed=0):
  tx = tx or optax.adam(1e-2)
  graphdef, state = jw.init_train_state(model, tx, weighting, seed=seed)
  step = jw.make_train_step(graphdef, loss, tx, weighting, mesh=mesh)
  if mesh is not None:
    state, batch = jw.replicate(state, mesh), jw.shard_batch(batch, mesh)
  for _ in range(n):
    state, metrics = step(state, batch)
  return graphdef, state, metrics


def test_cnn_with_batchnorm_and_dropout_trains_in_every_classifier_family():
  batch = digits_batch()
  T = jw.noisy_labels.symmetric_transition(10, 0.2)
  families = [None, jw.dws_weighting(T)]  # DWS reads aux and draws
  for weighting in families:
    graphdef, state, metrics = _steps(DigitsCNN(nnx.Rngs(0, dropout=1)), cls_loss, weighting, batch)
    assert metrics["update_skipped"] == 0 and np.isfinite(float(metrics["loss_mean"]))
  # running statistics moved and are what the eval step uses
  mean = state.model_vars["bn"]["mean"][...]
  assert np.abs(np.asarray(mean)).max() > 0
  ev = jw.make_eval_step(graphdef, cls_loss)
  tr = jw.make_eval_step(graphdef, cls_loss, train=True)
  model = nnx.merge(graphdef, state.params, state.model_vars)
  want = jnp.sum(cls_loss(eval_model(model), batch).loss)
  np.testing.assert_allclose(ev(state, batch)[0], want, rtol=1e-5)
  assert abs(float(tr(state, batch)[0]) - float(want)) > 1e-4  # batch stats + dropout differ
  # PRESENCE has no per-sample gradient on a model whose samples interact: said clearly.
  with pytest.raises(ValueError, match="batch statistics"):
    _steps(DigitsCNN(nnx.Rngs(0, dropout=1)), cls_loss, jw.presence_weighting(), batch, n=1)


def test_dropout_masks_follow_the_train_key():
  """Same seed -> same masks (resume is bit-identical); another seed -> other masks."""
  batch, w = lm_batch(), jw.linupper_weighting(r=1.0)
  make = lambda: llama(scan=True, dropout=0.2)
  _, a, _ = _steps(make(), seq_loss, w, batch, seed=0, n=1)
  _, b, _ = _steps(make(), seq_loss, w, batch, seed=0, n=1)
  _, c, _ = _steps(make(), seq_loss, w, batch, seed=1, n=1)
  chex.assert_trees_all_equal(a.params, b.params)
  with pytest.raises(AssertionError):
    chex.assert_trees_all_equal(a.params, c.params)


@pytest.mark.parametrize("name", ["llama_scan", pytest.param("gpt2_style", marks=pytest.mark.slow), "cnn"])
def test_one_device_equals_eight_devices(name):
  if name == "cnn":
    make, loss, batch = lambda: DigitsCNN(nnx.Rngs(0, dropout=1)), cls_loss, digits_batch()
  else:
    make, loss, batch_fn = ZOO[name]
    batch = batch_fn()
  weighting, tx = jw.linupper_weighting(r=1.0), optax.sgd(0.1)
  _, one, _ = _steps(make(), loss, weighting, batch, tx=tx)
  _, eight, _ = _steps(make(), loss, weighting, batch, mesh=jw.data_mesh(), tx=tx)
  assert_trees_close(one.params, eight.params, rtol=1e-5, atol=1e-6)
  numeric = lambda t: [x for x in jax.tree.leaves(t) if not jnp.issubdtype(x.dtype, jax.dtypes.prng_key)]
  assert_trees_close(numeric(one.model_vars), numeric(eight.model_vars), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "name",
  [
    pytest.param("llama", marks=pytest.mark.slow),
    "llama_scan",
    pytest.param("shared_param", marks=pytest.mark.slow),
  ],
)
def test_presence_one_backward_equals_two_pass(name):
  make, loss, batch_fn = ZOO[name]
  batch = batch_fn()
  if name.startswith("llama"):  # dropout active: both paths must see the same masks
    make = functools.partial(llama, scan=name == "llama_scan", dropout=0.2)
  tx = optax.sgd(0.1)
  tau = jw.two_stage_tau(1)
  _, one, m1 = _steps(make(), loss, jw.presence_weighting(tau=tau), batch, tx=tx)
  _, two, m2 = _steps(make(), loss, jw.presence_weighting(tau=tau, bookkeeping="never"), batch, tx=tx)
  assert_trees_close(one.params, two.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m1["weight_max"], m2["weight_max"], rtol=1e-5)


def test_presence_declines_bookkeeping_when_a_use_is_not_captured():
  model, batch = GPT2Style(rngs=nnx.Rngs(0, dropout=1)), lm_batch()
  weighting = jw.presence_weighting()
  graphdef, state = jw.init_train_state(model, optax.sgd(0.1), weighting)
  merged = nnx.merge(graphdef, state.params, state.model_vars)
  ctx = jw.GradientContext(
    seq_loss, graphdef, state.params, state.model_vars, batch, (), jnp.int32(0), jax.random.key(0)
  )
  assert weighting.gradient(ctx) is None  # wpe is used without a batch axis
  with pytest.raises(ValueError, match="wpe/embedding"):
    _steps(merged, seq_loss, jw.presence_weighting(fallback="error"), batch, n=1)


# --- foreign frameworks -------------------------------------------------------------


def test_linen_module_through_the_bridge():
  import flax.linen as nn

  class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(12)(x))
      return nn.Dense(3)(nn.LayerNorm()(x))

  model = nnx.bridge.ToNNX(LinenMLP(), rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 5)), jnp.float32)
  nnx.bridge.lazy_init(model, x)
  batch = {"x": x, "y": jnp.asarray(np.arange(8) % 3)}
  loss = lambda m, b: jw.LossOutput(jw.cross_entropy(m(b["x"]), b["y"]))
  plan = gn.ghost_plan(loss, model, batch)
  assert plan and all(v.startswith("vmap") for v in plan.values()), plan
  assert_norms_close(
    gn.per_sample_grad_norms(loss, model, batch), gn.per_sample_grad_norms(loss, model, batch, method="vmap")
  )
  _, state, metrics = _steps(model, loss, jw.linupper_weighting(), batch)
  assert metrics["update_skipped"] == 0


class LinenMLP:
  """Built lazily so that importing this file does not need linen's module machinery."""

  @staticmethod
  def make():
    import flax.linen as nn

    class Net(nn.Module):
      @nn.compact
      def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(12)(x))
        x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.Dense(3)(nn.LayerNorm()(x))

    net = Net()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 5)), jnp.float32)
    params = net.init(jax.random.key(0), x)["params"]

    def call(module, variables, x, *, deterministic, rngs):
      return module.apply(variables, x, train=not deterministic, rngs=rngs)

    model = jw.adapters.LinenModel(net, params, (x[:1],), call=call)
    return model, {"x": x, "y": jnp.asarray(np.arange(8) % 3)}


def _xent(m, b):
  return jw.LossOutput(jw.cross_entropy(m(b["x"]), b["y"]))


def test_linen_module_through_the_adapter_is_ghost_exact_with_named_layers():
  model, batch = LinenMLP.make()
  assert set(model.layers) == {"Dense_0", "Dense_1", "LayerNorm_0"}
  plan = gn.ghost_plan(_xent, eval_model(model), batch)
  assert all(v == "ghost" for v in plan.values()), plan
  ev = eval_model(model)
  assert_norms_close(
    gn.per_sample_grad_norms(_xent, ev, batch, fallback="error"),
    gn.per_sample_grad_norms(_xent, ev, batch, method="vmap"),
  )
  tx = optax.sgd(0.1)
  make = lambda: LinenMLP.make()[0]
  _, one, _ = _steps(make(), _xent, jw.presence_weighting(tau=-1.0), batch, tx=tx)
  _, two, _ = _steps(make(), _xent, jw.presence_weighting(tau=-1.0, bookkeeping="never"), batch, tx=tx)
  assert_trees_close(one.params, two.params)
  # dropout is active in training mode: two seeds give different updates
  _, a, _ = _steps(make(), _xent, None, batch, tx=tx, seed=0)
  _, b, _ = _steps(make(), _xent, None, batch, tx=tx, seed=1)
  with pytest.raises(AssertionError):
    chex.assert_trees_all_equal(a.params, b.params)


def _hf_gpt2():
  transformers = pytest.importorskip("transformers")
  cfg = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2)
  return jw.adapters.hf_causal_lm(transformers.FlaxGPT2LMHeadModel(cfg, seed=0))


@pytest.mark.slow  # compiles HF's model twice (~30 s on 2 cores)
@jax.numpy_rank_promotion("allow")  # HF's own Flax code relies on rank promotion
def test_hf_flax_gpt2_through_the_adapter():
  model, batch = _hf_gpt2(), lm_batch()
  assert "transformer.h.0.attn.c_attn" in model.layers  # named layers, not "(NoneType)"
  ev = eval_model(model)
  plan = gn.ghost_plan(seq_loss, ev, batch)
  # HF's tied LM head reads the token embedding from `variables`, outside the
  # embedding layer: that one parameter gets exact vmap norms, the rest ghost.
  assert {p for p, v in plan.items() if v != "ghost"} == {"layers/transformer.wte/embedding"}
  assert_norms_close(
    gn.per_sample_grad_norms(seq_loss, ev, batch),
    gn.per_sample_grad_norms(seq_loss, ev, batch, method="vmap"),
  )


@pytest.mark.slow
@jax.numpy_rank_promotion("allow")
def test_hf_flax_gpt2_every_family_and_eight_devices():
  batch, tx = lm_batch(), optax.sgd(0.1)
  for weighting in (None, jw.linupper_weighting(), jw.presence_weighting(tau=-1.0)):
    _, state, metrics = _steps(_hf_gpt2(), seq_loss, weighting, batch, tx=tx)
    assert metrics["update_skipped"] == 0 and np.isfinite(float(metrics["loss_mean"]))
  _, one, _ = _steps(_hf_gpt2(), seq_loss, None, batch, tx=tx)
  _, eight, _ = _steps(_hf_gpt2(), seq_loss, None, batch, tx=tx, mesh=jw.data_mesh())
  assert_trees_close(one.params, eight.params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weights_over", ["global", pytest.param("microbatch", marks=pytest.mark.slow)])
def test_mutable_state_flows_through_gradient_accumulation(weights_over):
  batch, tx = digits_batch(), optax.sgd(0.1)
  weighting = jw.linupper_weighting(r=1.0)
  graphdef, state = jw.init_train_state(DigitsCNN(nnx.Rngs(0, dropout=1)), tx, weighting)
  step = jw.make_train_step(graphdef, cls_loss, tx, weighting, accumulate=2, weights_over=weights_over)
  new, metrics = step(state, batch)
  assert metrics["update_skipped"] == 0
  before, after = state.model_vars["bn"]["mean"][...], new.model_vars["bn"]["mean"][...]
  assert np.abs(np.asarray(after - before)).max() > 0  # running statistics were updated
