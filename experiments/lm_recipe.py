"""The LM pieces shared by the LM experiments: corpus mixture, held-out metric, loss,
optimiser, model, mesh, sharded state, batches.

The data follows the loss-reweighting paper's setting (Sow et al., ICLR 2025:
SlimPajama-6B, a uniform mixture of domains, about one pass, the equal-weight mean
of per-domain held-out losses) at offline scale: :func:`load_corpus` builds
:func:`jaxweights.data.mixture_corpus` (Python, English prose, C), batches are
uniform-mixture windows (:func:`train_batch`), and :class:`DomainHeldOut` scores
every held-out window of every domain. The optimiser follows the paper's GPT-2
runs: AdamW (betas and weight decay from the config), linear warm-up then cosine
decay to ``end_lr``, global gradient clipping.

A config chooses the model (``model_kind``: ``"transformer"`` for
:class:`jaxweights.TransformerLM`, ``"llama"`` for :class:`jaxweights.Llama`, sized
by ``config.model``) and the mesh (``config.mesh``: ``None`` for a data mesh over
every device, or ``dict(data=, fsdp=, tensor=)`` for :func:`jaxweights.make_mesh`).
On a mesh with an ``fsdp`` or ``tensor`` axis the train state is initialised
directly in its sharded layout (each device computes only its shards) and the
step keeps it there; every process builds only its own rows of each batch.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax
from flax import nnx

import jaxweights
from experiments import common
from jaxweights import data as jw_data
from jaxweights.runtime import aot


def loss_fn(model: nnx.Module, batch: dict) -> jaxweights.LossOutput:
  """Per-sequence token-mean next-token cross-entropy of ``batch["tokens"]``
  (``[B, seq + 1]``), padding given by ``batch["mask"]``."""
  tokens, mask = batch["tokens"], batch["mask"]
  logits = model(tokens[:, :-1])
  losses, sample_mask = jaxweights.token_mean_cross_entropy(logits, tokens[:, 1:], mask[:, 1:])
  return jaxweights.LossOutput(loss=losses, mask=sample_mask)


def make_schedule(config) -> optax.Schedule:
  """Linear warm-up to ``peak_lr`` over ``lr_warmup_steps``, cosine to ``end_lr``."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=config.peak_lr,
    warmup_steps=config.lr_warmup_steps,
    decay_steps=config.num_steps,
    end_value=config.end_lr,
  )


def make_optimizer(config) -> optax.GradientTransformation:
  """Global-norm clipping then AdamW on :func:`make_schedule`."""
  return optax.chain(
    optax.clip_by_global_norm(config.clip_norm),
    optax.adamw(
      make_schedule(config), b1=config.get("b1", 0.9), b2=config.b2, weight_decay=config.weight_decay
    ),
  )


def model_config(config, vocab_size: int):
  """The model's config for ``config.model_kind`` with the corpus's vocabulary."""
  kind = config.get("model_kind", "transformer")
  if kind == "transformer":
    return jaxweights.TransformerConfig(vocab_size=vocab_size, max_len=config.seq_len, **config.model)
  if kind == "llama":
    return jaxweights.LlamaConfig(vocab_size=vocab_size, max_len=config.seq_len, **config.model)
  raise ValueError(f"model_kind must be 'transformer' or 'llama', got {kind!r}.")


def make_model(model_cfg, seed: int) -> nnx.Module:
  cls = jaxweights.Llama if isinstance(model_cfg, jaxweights.LlamaConfig) else jaxweights.TransformerLM
  return cls(model_cfg, rngs=nnx.Rngs(seed))


def count_params(model_cfg) -> int:
  """Parameters of the model, counted from shapes (nothing is allocated)."""
  abstract = nnx.eval_shape(lambda: make_model(model_cfg, 0))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def get_mesh(config):
  """``config.mesh`` as a (data, fsdp, tensor) mesh; else a data mesh over all
  devices when there are several (and ``use_mesh``); else None."""
  sizes = config.get("mesh")
  if sizes:
    mesh = jaxweights.make_mesh(**sizes)
  elif config.use_mesh and jax.device_count() > 1:
    mesh = jaxweights.data_mesh()
  else:
    return None
  n = jaxweights.core.sharding.batch_shard_count(mesh)
  for size in (config.batch_size, config.eval_batch_size):
    if size % n:
      raise ValueError(
        f"batch size {size} is not a multiple of the {n} batch shards; change the config or set use_mesh=False."
      )
  return mesh


def sharded(mesh) -> bool:
  """Whether the state is sharded on ``mesh`` (an fsdp or tensor axis > 1)."""
  return mesh is not None and any(mesh.shape.get(a, 1) > 1 for a in ("fsdp", "tensor"))


def state_shardings(model_cfg, optimizer, weighting, mesh):
  """The train state's shardings on ``mesh`` (None when it stays replicated)."""
  if not sharded(mesh):
    return None
  _, _, shardings = aot.abstract_train_state(
    lambda: make_model(model_cfg, 0), optimizer, weighting, mesh=mesh
  )
  return shardings


def init_state(model_cfg, optimizer, weighting, seed: int, mesh, shardings):
  """The initial train state: replicated, or initialised in its sharded layout
  (each device computes only its own shards: a 1B model never sits whole on a host)."""
  if mesh is None:
    return jaxweights.init_train_state(make_model(model_cfg, seed), optimizer, weighting, seed=seed)[1]
  if shardings is None:
    state = jaxweights.init_train_state(make_model(model_cfg, seed), optimizer, weighting, seed=seed)[1]
    return jaxweights.replicate(state, mesh)
  init = jax.jit(
    lambda: jaxweights.init_train_state(make_model(model_cfg, seed), optimizer, weighting, seed=seed)[1],
    out_shardings=shardings,
  )
  with nnx.use_eager_sharding(False):
    return init()


def corpus_config(**overrides) -> dict:
  """The LM experiments' domain mixture (:func:`jaxweights.data.mixture_corpus`
  arguments): the standard library's Python source, the English pydoc topics and
  CPython's C headers, 480 kB of each (the prose domain holds ~0.5 MB), 10% of each
  domain's ~2 kB chunks held out, vocab 1024."""
  return dict(
    dict(
      domains=("python", "prose", "c"),
      vocab_size=1024,
      max_bytes_per_domain=480_000,
      chunk_bytes=2048,
      test_fraction=0.1,
      seed=0,
    ),
    **overrides,
  )


def recipe_config(**overrides) -> dict:
  """The fields every LM experiment's config shares: data, model, optimiser, evaluation.

  The recipe follows the loss-based paper's GPT-2 runs scaled down (AdamW with the
  library-default betas (0.9, 0.999), weight decay 0.01, clipping 1.0, warm-up then
  cosine decay to a fifth of the peak) on :func:`corpus_config`'s mixture, at most
  one pass. ``overrides`` replace or add fields.
  """
  return dict(
    dict(
      corpus=corpus_config(),
      # Cache of the tokenised corpus (None: ~/.cache/jaxweights).
      cache_dir=None,
      # "transformer" (jaxweights.TransformerLM) or "llama" (jaxweights.Llama).
      model_kind="transformer",
      # The model config's fields besides vocab_size and max_len.
      model=dict(d_model=96, n_layers=2, n_heads=4, d_ff=384),
      # None: a data mesh over every device; dict(data=, fsdp=, tensor=): a sharded
      # train state on jaxweights.make_mesh.
      mesh=None,
      seq_len=64,
      # At most this many passes over each domain's training tokens (the paper's
      # regime: one); the experiments refuse a config that exceeds it (None: off).
      max_passes=1.0,
      # A 0.4M-parameter model for a few hundred steps: a peak LR above the paper's
      # 5e-4, chosen for the uniform baseline before any weighting was run.
      peak_lr=1e-3,
      end_lr=2e-4,
      weight_decay=0.01,
      b1=0.9,
      b2=0.999,
      clip_norm=1.0,
      eval_batch_size=64,
      # None: every held-out window at every evaluation.
      eval_max_batches=None,
      # Shard the batch over all devices (jaxweights.data_mesh) when more than one
      # is present; on one device the step runs unsharded.
      use_mesh=True,
    ),
    **overrides,
  )


def pod_overrides(config) -> None:
  """Turns an LM config into the v5e-64 pod layout of the ~1B Llama (in place): the
  whole mixture at vocab 32000, FSDP 64, 512 x 2048 tokens per step, no pass limit
  (a throughput and memory check on the offline corpus, not a pretraining run)."""
  config.seeds = (0,)
  config.corpus.vocab_size = 32000
  config.corpus.max_bytes_per_domain = None
  config.model_kind = "llama"
  config.model = POD_MODEL
  config.mesh = dict(data=1, fsdp=64, tensor=1)
  config.seq_len = 2048
  config.batch_size = 512
  config.eval_batch_size = 512
  config.eval_max_batches = 4
  config.num_steps = 200
  config.max_passes = None
  config.peak_lr = 3e-4
  config.end_lr = 3e-5
  config.lr_warmup_steps = 20
  config.log_every = 10
  config.eval_every = 100


# The ~1B Llama-style decoder of the pod configurations (benchmarks.pod_memory
# checks its per-device memory by ahead-of-time compilation).
POD_MODEL = dict(d_model=2048, n_layers=18, n_heads=16, d_ff=5632, tied=False, dtype="bfloat16", remat=True)


def load_corpus(config) -> jw_data.MixtureCorpus:
  """The config's domain mixture (``config.corpus``, cached in ``config.cache_dir``)."""
  return jw_data.mixture_corpus(**config.corpus, cache_dir=config.get("cache_dir"))


def passes(config, corpus: jw_data.MixtureCorpus, rows_per_step: int | None = None) -> dict[str, float]:
  """Expected passes over each domain's training tokens: a uniform mix gives each
  domain ``1/n`` of the ``num_steps x rows x seq_len`` tokens trained on."""
  rows = config.batch_size if rows_per_step is None else rows_per_step
  share = config.num_steps * rows * config.seq_len / len(corpus.domains)
  return {d: share / corpus.train[d].size for d in corpus.domains}


def check_passes(config, corpus, rows_per_step: int | None = None) -> dict[str, float]:
  """:func:`passes`; raises when one exceeds ``config.max_passes`` (None: no limit)."""
  per_domain = passes(config, corpus, rows_per_step)
  limit = config.get("max_passes")
  if limit is not None and max(per_domain.values()) > limit:
    raise ValueError(
      f"config {config.name!r} makes {max(per_domain.values()):.2f} passes over a domain's training "
      f"tokens ({per_domain}); the paper's regime is at most {limit}. Lower num_steps or batch_size, "
      "or raise corpus.max_bytes_per_domain."
    )
  return per_domain


def train_batch(corpus, *, seed: int, step: int, batch_size: int, seq_len: int, mesh):
  """Batch ``step``: uniform-mixture windows (:func:`jaxweights.data.mixture_lm_batch`)
  with their ``domain`` ids; on a mesh each process cuts only its own rows."""
  streams = [corpus.train[d] for d in corpus.domains]
  kwargs = dict(seed=seed, step=step, batch_size=batch_size, seq_len=seq_len)
  if mesh is None:
    return jw_data.mixture_lm_batch(streams, **kwargs)
  return jw_data.process_local_batch(
    lambda rows: jw_data.mixture_lm_batch(streams, rows=rows, **kwargs), np.arange(batch_size), mesh
  )


class DomainHeldOut:
  """Every held-out window of every domain, and the paper's metric over them.

  The headline ``heldout_loss`` is the equal-weight mean over domains of each
  domain's token-weighted mean cross-entropy (nats/token), the paper's
  equal-weight average of per-domain held-out perplexity in log space;
  ``heldout_loss_<domain>`` is each domain's, and ``heldout_loss_pooled`` the
  token-weighted mean over all held-out tokens.
  """

  def __init__(self, corpus, config, place):
    self.domains = corpus.domains
    self.batches: dict[str, list] = {}
    self.tokens: dict[str, int] = {}
    for d in self.domains:
      batches = list(
        jw_data.lm_eval_batches(
          corpus.test[d],
          batch_size=config.eval_batch_size,
          seq_len=config.seq_len,
          max_batches=config.eval_max_batches,
        )
      )
      self.tokens[d] = int(sum(b["mask"][:, 1:].sum() for b in batches))
      self.batches[d] = [place(b) for b in batches]

  def evaluate(self, ce_fn) -> dict[str, float]:
    """Held-out metrics from ``ce_fn(batch) -> [batch, seq]`` per-target CE (0 at padding)."""
    out, total = {}, 0.0
    for d in self.domains:
      s = sum(float(np.asarray(jax.device_get(ce_fn(b)), np.float64).sum()) for b in self.batches[d])
      out[f"heldout_loss_{d}"] = s / self.tokens[d]
      total += s
    out["heldout_loss"] = float(np.mean([out[f"heldout_loss_{d}"] for d in self.domains]))
    out["heldout_loss_pooled"] = total / sum(self.tokens.values())
    return out


def with_dtype(model_cfg, dtype: str):
  return dataclasses.replace(model_cfg, dtype=dtype)


def loss_verdict(metrics, n, metric, title, baseline="uniform") -> str:
  """One line: each method's paired delta of ``metric`` vs ``baseline`` and its verdict."""
  parts = common.paired_verdicts(
    metrics,
    metric,
    n,
    baseline=baseline,
    words=("lower (better)", "higher (worse)"),
    spec="+.4f",
    std_spec=".4f",
  )
  return (
    f"{title} vs {baseline} (paired, n={n}; lower/higher = |mean| > 2 standard "
    f"errors): " + "; ".join(parts) + "."
  )
