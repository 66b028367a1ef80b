"""Benchmark cases for per-sample gradient norms and PRESENCE.

Norms rows time a jitted function returning ``per_sample_grad_norms(...).total``
for the batch at the current parameters, against the plain train step
(``make_train_step(graphdef, loss_fn, tx)``, AdamW) of the same model and batch:

* ``self_influence/norms_lm``: ``TransformerLM(TransformerConfig.small())`` (4 x
  256, vocab 4096), batch 32 x 256 tokens, token-mean cross-entropy.
* ``self_influence/norms_ffn``: MLP 784 -> 512 -> 10, batch 256, per-sample
  cross-entropy on random data. (Case names say ``ffn``, not ``mlp``: ``--only
  mlp`` selects the loss-based MLP case alone.)

  Exact ghost norms (one tapped forward/backward, no parameter gradient) have the
  issue's targets: <= 1.5x the plain step's time and <= 1.2x its peak memory.
  ``vmap(grad)`` (exact, chunked with ``jax.lax.map`` so memory is bounded: the
  chunk is in the method name) and ``jvp`` (an estimate from ``JVP_PROBES``
  Gaussian probes) are shown beside them for contrast, with no target.

PRESENCE rows time the whole weighted step (norms, weights and the weighted
update; ``make_train_step(..., weighting=presence_weighting(tau=-1.0))``):

* ``self_influence/presence_lm`` and ``self_influence/presence_ffn``: the
  per-sample and the microbatch (``microbatches=8``) modes, both using the
  one-backward book-keeping step, have the target <= 1.3x the plain step's time
  (the paper reports +30%); the two-backward variant (``bookkeeping="never"``)
  is shown for contrast.

Peer (only when torch and opacus are importable: ``pip install
'jaxweights[peers]'``; otherwise the case is left out with a printed note):

* ``self_influence/opacus_ffn``: Opacus ghost norms for the same MLP, weights and
  batch in PyTorch on the CPU, as a ratio to a plain torch train step; the note
  gives Opacus' time over ours (jaxweights' ghost norms, timed in the same
  rounds).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxweights
from benchmarks.harness import PLAIN, Case, Settings, Setup, meets_target
from jaxweights.families.self_influence.grad_norms import per_sample_grad_norms
from jaxweights.families.self_influence.presence import presence_weighting

LEARNING_RATE = 3e-4
JVP_PROBES = 8
LM_VMAP_CHUNK = 4
MLP_VMAP_CHUNK = 32
MICROBATCHES = 8
TAU = -1.0

NORMS_TIME_TARGET = 1.5
NORMS_MEMORY_TARGET = 1.2
PRESENCE_TIME_TARGET = 1.3
LLAMA_NORMS_TIME_TARGET = 1.3  # a bring-your-own-model decoder: ghost norms vs the plain step
LLAMA_NORMS_MEMORY_TARGET = 1.2

GHOST = "ghost norms (exact)"
PRESENCE = "presence (ghost, 1 backward: book-keeping)"
PRESENCE_MB = f"presence microbatches={MICROBATCHES} (ghost, book-keeping)"
PRESENCE_2BWD = "presence (ghost norms + 2nd backward)"
PEER_CASE = "self_influence/opacus_ffn"
OPACUS_GHOST = (
  "opacus ghost norms (GradSampleModuleFastGradientClipping, use_ghost_clipping=True: fwd + 1 bwd)"
)


# --- models and batches ---------------------------------------------------------------


def _lm_loss(model, batch):
  logits = model(batch["inputs"])
  loss, mask = jaxweights.token_mean_cross_entropy(logits, batch["targets"])
  return jaxweights.LossOutput(loss, mask)


def _mlp_loss(model, batch):
  return jaxweights.LossOutput(jaxweights.cross_entropy(model(batch["x"]), batch["y"]))


# Quick mode (tests): compile time, not run time, dominates, so one small layer.
QUICK_LM = jaxweights.TransformerConfig.tiny(
  vocab_size=128, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=16
)


def _lm(quick: bool):
  """(model, loss_fn, batch, model name, batch description)."""
  if quick:
    cfg, batch_size, seq_len, size = QUICK_LM, 8, 16, "micro"
  else:
    cfg, batch_size, seq_len, size = jaxweights.TransformerConfig.small(), 32, 256, "small"
  model = jaxweights.TransformerLM(cfg, rngs=nnx.Rngs(0))
  return _token_case(model, cfg, batch_size, seq_len, f"TransformerLM {size} (")


def _token_case(model, cfg, batch_size, seq_len, prefix):
  """(model, loss_fn, batch, model name, batch description) on random next-token data."""
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
  batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}
  name = (
    f"{prefix}{cfg.n_layers}x{cfg.d_model}, vocab {cfg.vocab_size}, "
    f"{jaxweights.count_params(model) / 1e6:.2f}M params)"
  )
  return model, _lm_loss, batch, name, f"{batch_size}x{seq_len} tokens"


# The Llama-style decoder (stock NNX layers, nnx.scan-stacked blocks, tied embedding).
LLAMA = jaxweights.LlamaConfig(
  vocab_size=4096, d_model=256, n_layers=4, n_heads=4, d_ff=688, max_len=256, scan=True, tied=True
)
QUICK_LLAMA = jaxweights.LlamaConfig(
  vocab_size=128, d_model=32, n_layers=2, n_heads=2, d_ff=48, max_len=16, scan=True, tied=True
)


def _llama(quick: bool):
  """(model, loss_fn, batch, model name, batch description) for the decoder."""
  cfg, batch_size, seq_len = (QUICK_LLAMA, 8, 16) if quick else (LLAMA, 32, 256)
  model = jaxweights.Llama(cfg, rngs=nnx.Rngs(0))
  return _token_case(model, cfg, batch_size, seq_len, "Llama-style decoder (nnx.scan, tied, ")


MLP_SIZES = (784, 512, 10)
QUICK_MLP_SIZES = (32, 16, 10)


def _mlp(quick: bool):
  """The benchmark MLP on batch 256 (32 -> 16 -> 10 on batch 32 when quick)."""
  sizes, batch_size = (QUICK_MLP_SIZES, 32) if quick else (MLP_SIZES, 256)
  in_features, hidden, classes = sizes[0], sizes[1:-1], sizes[-1]
  model = jaxweights.MLP(in_features, hidden, classes, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  batch = {
    "x": jnp.asarray(rng.standard_normal((batch_size, in_features), np.float32)),
    "y": jnp.asarray(rng.integers(0, classes, (batch_size,), dtype=np.int32)),
  }
  sizes = "->".join(str(s) for s in sizes)
  name = f"MLP {sizes} ({jaxweights.count_params(model) / 1e3:.1f}k params)"
  return model, _mlp_loss, batch, name, f"{batch_size} samples"


def norms_fn(graphdef, loss_fn, **norm_kwargs):
  """A jitted ``(train state, batch) -> [batch]`` squared-norm function.

  The jvp probes' key is derived from the state's key, as the train step does.
  """

  def norms(state, batch):
    model = nnx.merge(graphdef, state.params, state.model_vars)
    key = jax.random.fold_in(state.key, 1)
    return per_sample_grad_norms(loss_fn, model, batch, key=key, **norm_kwargs).total

  return jax.jit(norms)


# --- norms cases --------------------------------------------------------------------


def _norms_setup(model, loss_fn, batch, name, batch_desc, chunk) -> Setup:
  tx = optax.adamw(LEARNING_RATE)
  graphdef, state = jaxweights.init_train_state(model, tx)
  plain = jaxweights.make_train_step(graphdef, loss_fn, tx, weighting=None)
  methods = {
    GHOST: norms_fn(graphdef, loss_fn, method="ghost"),
    f"vmap(grad) norms (exact, chunk {chunk})": norms_fn(graphdef, loss_fn, method="vmap", chunk_size=chunk),
    f"jvp norms ({JVP_PROBES} probes, estimate)": norms_fn(
      graphdef, loss_fn, method="jvp", num_probes=JVP_PROBES
    ),
  }
  return Setup(plain, methods, state, batch, name, batch_desc)


def build_norms_lm(quick: bool) -> Setup:
  return _norms_setup(*_lm(quick), chunk=LM_VMAP_CHUNK)


def jax_privacy_available() -> bool:
  try:
    return importlib.util.find_spec("jax_privacy") is not None
  except (ImportError, ValueError):
    return False


def jax_privacy_norms_fn(graphdef, loss_fn, microbatch_size: int):
  """jax-privacy's per-example gradient norms: ``clipped_grad(...,
  return_grad_norms=True)`` with no clipping (``l2_clip_norm=inf``), per-example
  gradients by ``vmap`` in chunks of ``microbatch_size``. Returns norms squared,
  like ours."""
  from jax_privacy import clipping  # pylint: disable=import-outside-toplevel

  def example_loss(params, example, rest):
    model = nnx.merge(graphdef, params, rest, copy=True)
    return jnp.sum(loss_fn(model, example).loss)

  grad_fn = clipping.clipped_grad(
    example_loss,
    l2_clip_norm=jnp.inf,
    return_grad_norms=True,
    microbatch_size=microbatch_size,
    batch_argnums=1,
  )

  def norms(state, batch):
    _, aux = grad_fn(state.params, batch, state.model_vars)
    return jnp.square(aux.grad_norms)

  return jax.jit(norms)


JAX_PRIVACY = f"jax-privacy per-example norms (clipped_grad, vmap chunk {LM_VMAP_CHUNK})"


GHOST_CHUNKED = f"ghost norms (exact, chunk {LM_VMAP_CHUNK})"
PRESENCE_CHUNKED = f"presence (ghost norms in chunks of {LM_VMAP_CHUNK} + 2nd backward)"


def build_norms_llama(quick: bool) -> Setup:
  """Ghost (whole batch and chunked) / vmap / jvp norms on the decoder, and the
  JAX peer when installed."""
  setup = _norms_setup(*_llama(quick), chunk=LM_VMAP_CHUNK)
  model, loss_fn, *_ = _llama(quick)
  graphdef = nnx.split(model, nnx.Param, ...)[0]
  setup.weighted_steps[GHOST_CHUNKED] = norms_fn(graphdef, loss_fn, method="ghost", chunk_size=LM_VMAP_CHUNK)
  if jax_privacy_available():
    setup.weighted_steps[JAX_PRIVACY] = jax_privacy_norms_fn(graphdef, loss_fn, LM_VMAP_CHUNK)
  else:
    print(
      "[benchmarks] the jax-privacy row of self_influence/norms_llama is left out: "
      "jax_privacy is not importable (pip install 'jaxweights[peers]').",
      file=sys.stderr,
    )
  return setup


def build_norms_mlp(quick: bool) -> Setup:
  return _norms_setup(*_mlp(quick), chunk=MLP_VMAP_CHUNK)


# --- PRESENCE cases -----------------------------------------------------------------


def _presence_setup(model, loss_fn, batch, name, batch_desc) -> Setup:
  tx = optax.adamw(LEARNING_RATE)
  graphdef, state = jaxweights.init_train_state(model, tx)
  step = lambda w: jaxweights.make_train_step(graphdef, loss_fn, tx, weighting=w)
  methods = {
    PRESENCE: step(presence_weighting(tau=TAU)),
    PRESENCE_MB: step(presence_weighting(tau=TAU, microbatches=MICROBATCHES)),
    PRESENCE_2BWD: step(presence_weighting(tau=TAU, bookkeeping="never")),
  }
  return Setup(step(None), methods, state, batch, name, batch_desc)


def build_presence_lm(quick: bool) -> Setup:
  return _presence_setup(*_lm(quick))


def build_presence_llama(quick: bool) -> Setup:
  """The PRESENCE rows, plus the memory-lean variant (chunked ghost norms)."""
  model, loss_fn, batch, name, desc = _llama(quick)
  setup = _presence_setup(model, loss_fn, batch, name, desc)
  tx = optax.adamw(LEARNING_RATE)
  graphdef, _ = jaxweights.init_train_state(model, tx)
  setup.weighted_steps[PRESENCE_CHUNKED] = jaxweights.make_train_step(
    graphdef, loss_fn, tx, weighting=presence_weighting(tau=TAU, chunk_size=LM_VMAP_CHUNK)
  )
  return setup


def build_presence_mlp(quick: bool) -> Setup:
  return _presence_setup(*_mlp(quick))


# --- peer: Opacus (PyTorch) -----------------------------------------------------------


def peers_available() -> bool:
  """Whether torch and opacus are installed (found, not imported: that is slow)."""
  try:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "opacus"))
  except (ImportError, ValueError):
    return False


def _torch_peak_bytes(torch, fn) -> int:
  """Peak bytes of live CPU tensors during one call of ``fn``.

  From the PyTorch memory profiler's timeline: tensors alive when the call starts
  and used by it (parameters, optimiser state, batch) plus those it creates, at
  their largest total. Comparable to XLA's temp + argument + output.
  """
  from torch.profiler import ProfilerActivity, profile
  from torch.profiler._memory_profiler import Action

  with profile(
    activities=[ProfilerActivity.CPU],
    profile_memory=True,
    record_shapes=True,
    with_stack=True,
  ) as prof:
    fn()
  live = peak = 0
  for _, action, _, size in prof._memory_profile().timeline:  # pylint: disable=protected-access
    if action in (Action.PREEXISTING, Action.CREATE):
      live += size
    elif action == Action.DESTROY:
      live -= size
    peak = max(peak, live)
  return peak


def measure_opacus_mlp(case: Case, settings: Settings, quick: bool) -> list[dict]:
  """Opacus ghost norms vs a plain torch step (and vs jaxweights' ghost norms)."""
  # libgomp's default spin-waiting stalls a 2-thread torch step ~30x whenever
  # another process holds a core (shared CPUs); a passive wait keeps it at its
  # unloaded speed. Read when torch loads libgomp, so set before the import.
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  import torch  # pylint: disable=import-outside-toplevel
  from opacus.grad_sample import GradSampleModuleFastGradientClipping  # pylint: disable=import-outside-toplevel

  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  model, loss_fn, batch, name, batch_desc = _mlp(quick)

  # jaxweights: the same MLP, weights and batch.
  tx = optax.adamw(LEARNING_RATE)
  graphdef, state = jaxweights.init_train_state(model, tx)
  jax_plain = jaxweights.make_train_step(graphdef, loss_fn, tx)
  jax_ghost = norms_fn(graphdef, loss_fn, method="ghost")

  # torch: nn.Linear holds W^T of nnx.Linear's kernel.
  layers = []
  for lin in model.layers:
    t = torch.nn.Linear(*lin.kernel.shape)
    with torch.no_grad():
      t.weight.copy_(torch.from_numpy(np.asarray(lin.kernel.get_value()).T.copy()))
      t.bias.copy_(torch.from_numpy(np.asarray(lin.bias.get_value()).copy()))
    layers += [t, torch.nn.ReLU()]
  net = torch.nn.Sequential(*layers[:-1])
  ghost_net = copy.deepcopy(net)  # the hooks go on this copy only
  gsm = GradSampleModuleFastGradientClipping(
    ghost_net, loss_reduction="sum", use_ghost_clipping=True, max_grad_norm=1.0
  )
  opt = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE)
  x = torch.from_numpy(np.asarray(batch["x"]).copy())
  y = torch.from_numpy(np.asarray(batch["y"]).astype(np.int64))

  def torch_plain():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()

  def opacus_ghost():
    gsm.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # the input needs no gradient: hooks fire on outputs
      warnings.filterwarnings("ignore", message="Full backward hook is firing")
      torch.nn.functional.cross_entropy(gsm(x), y, reduction="none").sum().backward()
    return gsm.get_norm_sample()

  # Same quantity? Opacus returns norms, jaxweights squared norms.
  ours = np.asarray(jax_ghost(state, batch), np.float64)
  theirs = opacus_ghost().detach().numpy().astype(np.float64) ** 2
  max_rel_diff = float(np.max(np.abs(theirs - ours) / np.maximum(ours, 1e-12)))

  calls = {
    PLAIN: torch_plain,
    OPACUS_GHOST: opacus_ghost,
    "jax plain": lambda: jax.block_until_ready(jax_plain(state, batch)),
    "jax ghost": lambda: jax.block_until_ready(jax_ghost(state, batch)),
  }
  for fn in calls.values():
    for _ in range(settings.warmup + 1):
      fn()

  def loop(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
      fn()
    return (time.perf_counter() - t0) / n

  once = loop(torch_plain, 1)
  n = max(1, int(np.ceil(settings.min_repeat_s / max(once, 1e-9))))
  methods = list(calls)
  times = {m: [] for m in methods}
  for r in range(settings.repeats):
    k = r % len(methods)
    for m in methods[k:] + methods[:k]:
      times[m].append(loop(calls[m], n))
  ms = {m: 1e3 * statistics.median(ts) for m, ts in times.items()}
  peak = {m: _torch_peak_bytes(torch, calls[m]) for m in (PLAIN, OPACUS_GHOST)}

  device = (
    f"cpu (torch {torch.__version__}, {threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')})"
  )
  torch_name = f"torch {name}"
  rows = []
  for m in (PLAIN, OPACUS_GHOST):
    time_ratio = ms[m] / ms[PLAIN]
    memory_ratio = peak[m] / peak[PLAIN]
    target_time, target_memory = case.targets_for(m)
    row = {
      "benchmark": case.name,
      "method": m,
      "time_ratio_vs_plain": time_ratio,
      "peak_memory_ratio_vs_plain": memory_ratio,
      "plain_step_ms": ms[PLAIN],
      "step_ms": ms[m],
      "plain_peak_memory_bytes": peak[PLAIN],
      "peak_memory_bytes": peak[m],
      "device": device,
      "model": torch_name,
      "batch": batch_desc,
      "repeats": settings.repeats,
      "calls_per_repeat": n,
      "target_time_ratio": target_time,
      "target_memory_ratio": target_memory,
      "meets_target": meets_target(target_time, target_memory, time_ratio, memory_ratio),
    }
    if m == OPACUS_GHOST:
      ratio = ms[OPACUS_GHOST] / ms["jax ghost"]
      row.update(
        {
          "jaxweights_ghost_ms": ms["jax ghost"],
          "jaxweights_plain_step_ms": ms["jax plain"],
          "opacus_ghost_vs_jaxweights_ghost_time": ratio,
          "max_rel_diff_vs_jaxweights_sq_norms": max_rel_diff,
          "note": (
            f"opacus ghost / jaxweights ghost time = {ratio:.2f}x "
            f"(jaxweights ghost {ms['jax ghost']:.2f} ms, jax plain step "
            f"{ms['jax plain']:.2f} ms, same rounds); squared norms agree to "
            f"{max_rel_diff:.1e} rel."
          ),
        }
      )
    else:
      row["note"] = "fwd, mean CE, bwd, AdamW (torch eager)"
    rows.append(row)
  return rows


# --- registry -----------------------------------------------------------------------


def _registry(with_peers: bool) -> list[Case]:
  """The cases; the peer case only ``with_peers`` (else a note on stderr)."""
  cases = [
    Case(
      "self_influence/norms_lm",
      build_norms_lm,
      target_time_ratio=NORMS_TIME_TARGET,
      target_memory_ratio=NORMS_MEMORY_TARGET,
      target_methods=(GHOST,),
    ),
    Case(
      "self_influence/norms_llama",
      build_norms_llama,
      target_time_ratio=LLAMA_NORMS_TIME_TARGET,
      target_memory_ratio=LLAMA_NORMS_MEMORY_TARGET,
      target_methods=(GHOST, GHOST_CHUNKED),
    ),
    Case(
      "self_influence/presence_llama",
      build_presence_llama,
      target_time_ratio=PRESENCE_TIME_TARGET,
      target_memory_ratio=LLAMA_NORMS_MEMORY_TARGET,
      target_methods=(PRESENCE, PRESENCE_MB, PRESENCE_CHUNKED),
    ),
    Case(
      "self_influence/norms_ffn",
      build_norms_mlp,
      target_time_ratio=NORMS_TIME_TARGET,
      target_memory_ratio=NORMS_MEMORY_TARGET,
      target_methods=(GHOST,),
    ),
    Case(
      "self_influence/presence_lm",
      build_presence_lm,
      target_time_ratio=PRESENCE_TIME_TARGET,
      target_methods=(PRESENCE, PRESENCE_MB),
    ),
    Case(
      "self_influence/presence_ffn",
      build_presence_mlp,
      target_time_ratio=PRESENCE_TIME_TARGET,
      target_methods=(PRESENCE, PRESENCE_MB),
    ),
  ]
  if with_peers:
    cases.append(Case(PEER_CASE, build=lambda quick: None, measure=measure_opacus_mlp))
  else:
    print(
      f"[benchmarks] {PEER_CASE} left out: torch and opacus are not importable "
      "(pip install 'jaxweights[peers]').",
      file=sys.stderr,
    )
  return cases


CASES: list[Case] = _registry(peers_available())
