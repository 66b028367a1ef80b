"""Causal-LM pretraining with loss-based reweighting, in the paper's setting at CPU scale.

A :class:`jaxweights.TransformerLM` is trained from scratch on a uniform mixture of
three offline text domains (:func:`jaxweights.data.mixture_corpus`: the standard
library's Python source, the English pydoc topics, CPython's C headers) for at
most one pass, once per strategy (uniform, LinUpper, Quadratic, Extremes) and
seed, all at the same number of steps. A sequence's loss is its mean next-token
cross-entropy; the weights are a softmax over the global batch of those losses
(uniform during the weight warm-up). The seed fixes the initialisation and the
batch order, so the methods are compared paired by seed.

The headline metric is the paper's: the equal-weight mean over domains of each
domain's held-out loss (nats/token), on held-out rows drawn i.i.d. within each
domain (:class:`experiments.lm_recipe.DomainHeldOut`). The weight mass each domain
receives is measured from the weights the step used
(:mod:`experiments.weight_mass`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

import jaxweights
from experiments import common, lm_recipe
from experiments.weight_mass import mass_metrics, track_kinds

EXPERIMENT = "loss_lm"


# The loss, optimiser, model, mesh, sharded state and batches are the shared LM recipe.
loss_fn = lm_recipe.loss_fn
make_optimizer = lm_recipe.make_optimizer
model_config = lm_recipe.model_config
get_mesh = lm_recipe.get_mesh


def make_weighting(method: str, config, n_domains: int) -> jaxweights.Weighting:
  """The method's weighting, wrapped to accumulate each domain's weight mass before
  (stage 0) and after (stage 1) the weight warm-up."""
  if method == "uniform":
    inner = jaxweights.uniform_weighting()
  else:
    r = jaxweights.warmup_temperature(config.r[method], config.weight_warmup_steps)
    inner = jaxweights.loss_based.WEIGHTINGS[method](r=r, delta=config.delta)
  return track_kinds(inner, switch_step=config.weight_warmup_steps, n_kinds=n_domains, kind_key="domain")


def build(method: str, config, model_cfg, optimizer, mesh, domains):
  """The compiled train and eval steps of one method (shared across seeds)."""
  weighting = make_weighting(method, config, len(domains))
  graphdef = nnx.split(nnx.eval_shape(lambda: lm_recipe.make_model(model_cfg, 0)))[0]
  shardings = lm_recipe.state_shardings(model_cfg, optimizer, weighting, mesh)
  step = jaxweights.make_train_step(
    graphdef,
    loss_fn,
    optimizer,
    weighting,
    mesh=mesh,
    state_shardings=shardings,
    donate=shardings is not None,
  )

  # Replicated output: every process (multi-host runs) can read the whole batch.
  replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())

  @functools.partial(jax.jit, out_shardings=replicated)
  def eval_ce(state, batch):
    """Per-target cross-entropy ``[batch, seq]`` (0 where the target is padding)."""
    model = nnx.merge(graphdef, state.params, state.model_vars)
    tokens = batch["tokens"]
    logits = model(tokens[:, :-1]).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    return jnp.where(batch["mask"][:, 1:], ce, 0.0)

  def with_mass(state, batch):
    state, metrics = step(state, batch)
    metrics.update(mass_metrics(state.weighting_state, domains))
    return state, metrics

  return weighting, with_mass, eval_ce, shardings


def run_one(
  method, seed, config, exp_dir, corpus, model_cfg, optimizer, mesh, compiled, heldout
) -> dict[str, float]:
  weighting, step, eval_ce, shardings = compiled
  state = lm_recipe.init_state(model_cfg, optimizer, weighting, seed, mesh, shardings)

  def batch_fn(i):
    return lm_recipe.train_batch(
      corpus, seed=seed, step=i, batch_size=config.batch_size, seq_len=config.seq_len, mesh=mesh
    )

  def eval_fn(s):
    return heldout.evaluate(lambda batch: eval_ce(s, batch))

  checkpointer = None
  log_path = common.run_log_path(exp_dir, method, seed)
  if config.checkpoint_every:
    # One directory for all processes (orbax saves collectively); the run's config
    # is its fingerprint, so a stale checkpoint of another config is refused.
    checkpointer = jaxweights.Checkpointer(
      common.shared_path(exp_dir) / "checkpoints" / f"{method}_seed{seed}",
      max_to_keep=2,
      fingerprint={"config": common.config_json(config), "method": method, "seed": seed},
    )
  resuming = checkpointer is not None and checkpointer.latest_step() is not None
  logger = (
    jaxweights.JsonlLogger(log_path, all_processes=True)
    if resuming
    else common.run_logger(exp_dir, method, seed)
  )
  if not resuming:
    logger.log({"step": 0, **eval_fn(state)})
  jaxweights.train_loop(
    step,
    state,
    batch_fn,
    config.num_steps,
    checkpointer=checkpointer,
    checkpoint_every=config.checkpoint_every,
    logger=logger,
    log_every=config.log_every,
    eval_fn=eval_fn,
    eval_every=config.eval_every,
    desc=f"{method}/{seed}",
    show_progress=None,
  )
  if checkpointer is not None:
    checkpointer.close()
  return run_metrics(common.dedupe_by_step(jaxweights.read_jsonl(log_path)), config, corpus.domains)


def run_metrics(records: list[dict], config, domains) -> dict[str, float]:
  """Per-run metrics from the run's whole log (also right after a resume)."""
  train = [r for r in records if "loss_mean" in r]
  evals = [r for r in records if "heldout_loss" in r]
  last_eval = evals[-1]
  last = [r for r in train if r["step"] > 0.9 * config.num_steps] or train[-1:]
  # Weights are softmax(f / r) over the batch: max/min ratio and ESS show how far
  # from uniform they are after the weight warm-up.
  weighted = [r for r in train if r["step"] > config.weight_warmup_steps] or train
  # Relative weight mass of each domain after the warm-up: the mass its rows got
  # over the mass uniform weights would have given them (1 = as uniform).
  final = train[-1]
  mass = {
    f"mass_{d}": final[f"mass_s1_{d}"] / max(final[f"share_s1_{d}"], 1e-12)
    for d in domains
    if f"mass_s1_{d}" in final
  }
  return {
    "heldout_loss": last_eval["heldout_loss"],
    **{f"heldout_loss_{d}": last_eval[f"heldout_loss_{d}"] for d in domains},
    "heldout_loss_pooled": last_eval["heldout_loss_pooled"],
    "best_heldout_loss": min(r["heldout_loss"] for r in evals),
    **mass,
    "train_loss_last10pct": float(np.mean([r["loss_mean"] for r in last])),
    "ess_fraction": float(np.mean([r["ess"] for r in weighted])) / config.batch_size,
    "weight_ratio": float(np.mean([r["weight_max"] / max(r["weight_min"], 1e-30) for r in weighted])),
    "skipped_updates": float(sum(r["update_skipped"] for r in train)),
  }


CLAIMS = (
  common.Claim(
    "LinUpper lowers the equal-weight mean of per-domain held-out loss vs uniform, at equal steps",
    "Sow et al.: LinUpper, their best strategy, improves the per-domain average held-out "
    "perplexity over uniform (GPT-2 124M-300M on SlimPajama-6B; gains grow with size)",
    "linupper",
    "heldout_loss",
  ),
  common.Claim(
    "Quadratic lowers the equal-weight per-domain held-out loss vs uniform (r = 1, the authors' 124M setting)",
    "Sow et al.: Quadratic with r = 1.0 in the authors' 12-layer runs",
    "quadratic",
    "heldout_loss",
  ),
)


def train_and_evaluate(config, workdir, *, log=print) -> dict[str, Any]:
  """Runs every method and seed; writes summary.json, claims.json, table.md, plots, tokenizer.

  Args:
    config: a config of :mod:`experiments.loss_lm.configs`.
    workdir: the output folder.
    log: where progress lines go.

  Returns:
    The summary, read back from ``summary.json``.
  """
  t0 = time.perf_counter()
  exp_dir = common.experiment_dir(workdir)
  corpus = lm_recipe.load_corpus(config)
  corpus.save(exp_dir / "tokenizer")
  per_domain_passes = lm_recipe.check_passes(config, corpus)
  domains = corpus.domains
  model_cfg = model_config(config, corpus.vocab_size)
  optimizer = make_optimizer(config)
  mesh = get_mesh(config)
  place = (lambda b: jaxweights.shard_batch(b, mesh)) if mesh is not None else (lambda b: b)
  heldout = lm_recipe.DomainHeldOut(corpus, config, place)
  n_params = lm_recipe.count_params(model_cfg)
  log(
    f"[{EXPERIMENT}] config={config.name} methods={list(config.methods)} "
    f"seeds={list(config.seeds)} steps={config.num_steps} params={n_params} "
    f"train_tokens={ {d: int(corpus.train[d].size) for d in domains} } heldout_tokens={heldout.tokens} "
    f"passes={ {d: round(p, 2) for d, p in per_domain_passes.items()} } devices={jax.device_count()} "
    f"mesh={mesh is not None}"
  )

  compiled = {}

  def one(name, seed):
    """A float32 method, or ``<method>@bf16``: the same with bf16 compute."""
    method, bf16_run = (name[: -len(BF16)], True) if name.endswith(BF16) else (name, False)
    cfg = dataclasses.replace(model_cfg, dtype="bfloat16") if bf16_run else model_cfg
    if name not in compiled:
      compiled[name] = build(method, config, cfg, optimizer, mesh, domains)
    return run_one(name, seed, config, exp_dir, corpus, cfg, optimizer, mesh, compiled[name], heldout)

  per_seed = common.seeds_loop(config.methods, config.seeds, one, log=log)
  bf16_names = [f"{m}{BF16}" for m in config.bf16_methods]
  bf16 = {}
  if bf16_names:
    per_seed_bf16 = common.seeds_loop(bf16_names, config.seeds, one, log=log)
    bf16 = precision_metrics(exp_dir, config, per_seed, per_seed_bf16)
    plot_precision(exp_dir, config)
  for metric in ("heldout_loss", *(f"heldout_loss_{d}" for d in domains), "heldout_loss_pooled"):
    common.add_paired_deltas(per_seed, metric)
  metrics = common.aggregate(per_seed)

  curves = common.read_curves(exp_dir, config.methods, config.seeds, "heldout_loss")
  common.plot_curves(
    exp_dir / "heldout_loss.png",
    curves,
    ylabel="held-out loss, equal-weight mean over domains (nats/token)",
    title=f"LM pretraining on {'+'.join(domains)}: held-out loss ({config.name}, {len(config.seeds)} seeds)",
  )
  train_curves = common.read_curves(exp_dir, config.methods, config.seeds, "loss_mean")
  common.plot_curves(
    exp_dir / "train_loss.png",
    train_curves,
    ylabel="training batch loss (mean)",
    title=f"LM pretraining: training loss ({config.name})",
  )
  runtime = time.perf_counter() - t0
  facts = dict(
    params=n_params,
    domains=list(domains),
    train_tokens={d: int(corpus.train[d].size) for d in domains},
    heldout_tokens=dict(heldout.tokens),
    passes=per_domain_passes,
    devices=jax.device_count(),
    vocab_size=corpus.vocab_size,
    backend=jax.default_backend(),
    runtime_s=runtime,
  )
  claims = common.write_claims(exp_dir, metrics, CLAIMS, len(config.seeds))
  write_table(exp_dir, config, metrics, facts, bf16, claims)
  return common.finish(exp_dir, EXPERIMENT, config, {**metrics, **bf16}, runtime, log, **facts)


BF16 = "@bf16"


def precision_metrics(exp_dir, config, per_seed, per_seed_bf16) -> dict:
  """bf16 vs float32 runs of the same method, seed and batches.

  Per seed: the final held-out loss difference, and the train-loss curves'
  largest relative gap ``max_t |L_bf16(t) - L_f32(t)| / L_f32(t)`` over every
  logged step (both runs see the same batch at step t).
  """
  out = {}
  for name, runs in per_seed_bf16.items():
    base = name[: -len(BF16)]
    rows = []
    for seed, run, ref in zip(config.seeds, runs, per_seed[base]):
      ((s32, l32),) = common.read_curves(exp_dir, [base], [seed], "loss_mean")[base]
      ((s16, l16),) = common.read_curves(exp_dir, [name], [seed], "loss_mean")[name]
      if not np.array_equal(s32, s16):
        raise RuntimeError(f"{name} seed {seed}: bf16 and float32 logs differ in steps.")
      rows.append(
        {
          "heldout_loss": run["heldout_loss"],
          "delta_f32_heldout_loss": run["heldout_loss"] - ref["heldout_loss"],
          "train_curve_max_rel_gap": float(np.max(np.abs(l16 - l32) / l32)),
          "train_curve_mean_rel_gap": float(np.mean(np.abs(l16 - l32) / l32)),
          "skipped_updates": run["skipped_updates"],
        }
      )
    out[name] = common.aggregate({name: rows})[name]
  return out


def plot_precision(exp_dir, config) -> None:
  names = [m for m in config.bf16_methods] + [f"{m}{BF16}" for m in config.bf16_methods]
  curves = common.read_curves(exp_dir, names, config.seeds, "loss_mean")
  common.plot_curves(
    exp_dir / "bf16_vs_f32.png",
    curves,
    ylabel="training batch loss (mean)",
    title=f"bf16 compute vs float32 ({config.name}, {len(config.seeds)} seeds)",
  )


def precision_block(config, bf16) -> list[str]:
  if not bf16:
    return []
  n = len(config.seeds)
  lines = [
    "### Mixed precision: bf16 compute vs float32",
    "",
    "The same methods, seeds and batches with the model's compute in bfloat16 "
    "(`TransformerConfig(dtype='bfloat16')`); parameters, optimiser state, losses "
    "fed to the weights and the weights themselves stay float32. Gap = |bf16 − "
    "float32| / float32 of the training-loss curve at every logged step.",
    "",
    "| method | held-out loss (bf16) | Δ vs float32 (paired) | train-curve gap, mean | "
    "train-curve gap, max | skipped updates |",
    "|---|---|---|---|---|---|",
  ]
  for name, v in bf16.items():
    lines.append(
      f"| {name} | {v['heldout_loss']:.4f} ± {v['heldout_loss_std']:.4f} | "
      f"{v['delta_f32_heldout_loss']:+.4f} ± {v['delta_f32_heldout_loss_std']:.4f} | "
      f"{100 * v['train_curve_mean_rel_gap']:.2f}% | "
      f"{100 * v['train_curve_max_rel_gap']:.2f}% | {v['skipped_updates']:.0f} |"
    )
  verdicts = common.paired_verdicts(
    bf16, "f32_heldout_loss", n, baseline="", words=("lower", "higher"), spec="+.4f", std_spec=".4f"
  )
  lines += [
    "",
    f"Held-out loss, bf16 − float32 (paired, n={n}; the experiments' rule: a "
    "difference counts when |mean| > 2 standard errors with >= 3 seeds): " + "; ".join(verdicts) + ".",
    "",
  ]
  return lines


def columns(domains) -> list[tuple[str, str]]:
  cols = [("heldout_loss", "held-out loss (domain mean)"), ("delta_heldout_loss", "Δ vs uniform (paired)")]
  for d in domains:
    cols += [(f"heldout_loss_{d}", d), (f"delta_heldout_loss_{d}", "Δ")]
  cols += [
    ("heldout_loss_pooled", "pooled (token mean)"),
    ("train_loss_last10pct", "train loss (last 10%)"),
    ("ess_fraction", "ESS / batch"),
    ("weight_ratio", "max/min weight"),
  ]
  cols += [(f"mass_{d}", f"rel. mass {d}") for d in domains]
  return cols


def write_table(exp_dir, config, metrics, facts, bf16, claims):
  n = len(config.seeds)
  rs = ", ".join(f"{m} r={config.r[m]}" for m in config.methods if m in config.r)
  passes = ", ".join(f"{d} {p:.2f}" for d, p in facts["passes"].items())
  intro = (
    f"TransformerLM {dict(config.model)} ({facts['params'] / 1e6:.2f}M params, vocab "
    f"{facts['vocab_size']}), seq {config.seq_len}, batch {config.batch_size}, "
    f"{config.num_steps} steps on a uniform mixture of {', '.join(facts['domains'])} "
    f"(passes over each domain's training tokens: {passes}); AdamW betas "
    f"({config.b1}, {config.b2}), peak LR {config.peak_lr}, {config.lr_warmup_steps} warm-up steps, "
    f"cosine to {config.end_lr}, clip {config.clip_norm}; {rs}, uniform for the first "
    f"{config.weight_warmup_steps} steps. Held-out loss = the equal-weight mean over domains of "
    f"each domain's mean CE (nats/token) on held-out rows drawn i.i.d. within the domain "
    f"({facts['heldout_tokens']} tokens). Rel. mass = the weight a domain's rows got after the "
    f"warm-up over what uniform weights give them. Mean ± std over {n} seeds; Δ = paired per-seed "
    f"difference vs uniform. Config `{config.name}`, {facts['backend']} x{facts['devices']}, "
    f"runtime {facts['runtime_s']:.0f}s."
  )
  notes = [
    lm_recipe.loss_verdict(metrics, n, "heldout_loss", "Held-out loss, domain mean (headline)"),
    *(
      lm_recipe.loss_verdict(metrics, n, f"heldout_loss_{d}", f"Held-out loss on {d}")
      for d in facts["domains"]
    ),
    "ESS / batch = Kish effective sample size of the weights over the batch "
    "size, and max/min weight = the ratio within a batch, both averaged over the "
    "steps after the weight warm-up (uniform: 1 and 1; the ratio is at most "
    "e^(1/r)).",
    "The training loss column is the plain batch mean: it counts the easy "
    "sequences that the weights neglect, so it can be higher for a reweighting "
    "without the weighted objective being fitted worse.",
  ]
  del claims  # REPORT.md shows claims.json above this table.
  blocks = precision_block(config, bf16)
  common.write_table(
    exp_dir,
    "Loss-based reweighting: LM pretraining on a mixture of domains",
    metrics,
    columns(facts["domains"]),
    intro=intro,
    notes=notes,
    blocks=blocks,
  )
