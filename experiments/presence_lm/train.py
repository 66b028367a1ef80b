"""PRESENCE on a small causal LM, in the paper's setting at CPU scale, plus a noise diagnostic.

Headline (the paper's setting): a :class:`jaxweights.TransformerLM` is trained from
scratch on the loss-based LM experiment's clean domain mixture
(:mod:`experiments.lm_recipe`, at most one pass) once per method and seed, all at
the same number of steps: uniform; PRESENCE two-stage (tau = +1 for the first 10%
of the steps, then -1) with self-influence over the first block, weighting the
batch's microbatches (``presence_mb``, what the paper ran) or its rows
(``presence``, the paper's definition); and, in ``full``, the paper's stage
ablations. The seed fixes the initialisation and the batches, so methods are
compared paired by seed. Measured: the clean held-out loss (equal-weight mean of
per-domain losses, rows drawn i.i.d. within each domain), and the weight mass
each domain received per stage.

Diagnostic (ours, not the paper's claim; ``config.diagnostic``): the same recipe
with shuffled-token, random-token and duplicated rows injected into every batch
(:mod:`experiments.presence_lm.inject`), all layers scored. Measured: the weight
mass each row kind received per stage (:mod:`experiments.weight_mass`), the final
per-row loss of a fixed pool of training rows by kind, and on every uniform run,
TracIn self-influence of that pool over checkpoints along the run (where the
injected rows rank: AUROC vs clean rows, share of the top decile).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxweights
from experiments import common, lm_recipe
from experiments.lm_recipe import get_mesh, loss_fn, loss_verdict, model_config
from experiments.presence_lm import configs as cfgs
from experiments.presence_lm.inject import KINDS, Injector, fixed_batches
from experiments.presence_lm.tracin import Scorer, tracin_metrics
from experiments.weight_mass import mass_metrics, track_kinds

EXPERIMENT = "presence_lm"
INJECTED = KINDS[1:]


make_schedule = lm_recipe.make_schedule
make_optimizer = lm_recipe.make_optimizer


def switch_step(config) -> int:
  return int(round(config.switch_fraction * config.num_steps))


def make_weighting(method: str, config, kinds, kind_key: str) -> jaxweights.Weighting:
  """The method's weighting, wrapped to account the weight mass of each row kind
  (``batch[kind_key]`` codes ``0 .. len(kinds) - 1``) per stage."""
  if method not in cfgs.METHODS:
    raise ValueError(f"unknown method {method!r}; choose from {sorted(cfgs.METHODS)}")
  spec = cfgs.METHODS[method]
  if spec is None:
    inner = jaxweights.uniform_weighting()
  else:
    tau, mb = spec
    if tau == "two_stage":
      tau = jaxweights.two_stage_tau(switch_step(config), config.tau)
    elif tau == "reversed":  # the paper's reversed-order ablation: inverse first, then direct
      tau = jaxweights.two_stage_tau(switch_step(config), -config.tau)
    else:
      tau = tau * config.tau
    inner = jaxweights.presence_weighting(
      tau=tau,
      method=config.norm_method,
      layers=config.layers,
      microbatches=config.microbatches if mb == "config" else None,
    )
  return track_kinds(inner, switch_step=switch_step(config), n_kinds=len(kinds), kind_key=kind_key)


def build(method: str, config, model_cfg, optimizer, mesh, kinds, kind_key):
  """The compiled train, eval and per-row loss functions of one method."""
  weighting = make_weighting(method, config, kinds, kind_key)
  graphdef = nnx.split(nnx.eval_shape(lambda: lm_recipe.make_model(model_cfg, 0)))[0]
  shardings = lm_recipe.state_shardings(model_cfg, optimizer, weighting, mesh)
  inner = jaxweights.make_train_step(
    graphdef, loss_fn, optimizer, weighting, mesh=mesh, state_shardings=shardings
  )

  @jax.jit
  def step(state, batch):
    state, metrics = inner(state, batch)
    return state, {**metrics, **mass_metrics(state.weighting_state, kinds)}

  @jax.jit
  def eval_ce(state, batch):
    """Per-target cross-entropy ``[batch, seq]`` (0 where the target is padding)."""
    model = nnx.merge(graphdef, state.params, state.model_vars)
    tokens = batch["tokens"]
    logits = model(tokens[:, :-1]).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    return jnp.where(batch["mask"][:, 1:], ce, 0.0)

  return graphdef, weighting, step, eval_ce, shardings


def injected(config) -> bool:
  """Whether the config injects noisy or duplicated rows (the diagnostic)."""
  return config.noise_fraction > 0 or config.duplicate_fraction > 0


class Context:
  """What every run of one setting (the headline or the diagnostic) shares.

  Clean batches carry each row's domain (the kinds are the domains); injected
  batches carry each row's kind (clean, shuffled, random, duplicate).
  """

  def __init__(self, config, exp_dir, corpus, model_cfg, optimizer, mesh, heldout):
    self.config, self.exp_dir, self.corpus = config, exp_dir, corpus
    self.model_cfg, self.optimizer, self.mesh, self.heldout = model_cfg, optimizer, mesh, heldout
    self.injected = injected(config)
    self.kinds, self.kind_key = (KINDS, "kind") if self.injected else (tuple(corpus.domains), "domain")
    self.schedule = make_schedule(config)
    self.compiled: dict[str, tuple] = {}
    self.scorer = Scorer(loss_fn, method=config.norm_method, layers=config.layers)
    self.place = (lambda b: jaxweights.shard_batch(b, mesh)) if mesh is not None else (lambda b: b)

  def injector(self, seed: int) -> Injector:
    c = self.config
    return Injector(
      [self.corpus.train[d] for d in self.corpus.domains],
      seed=seed,
      batch_size=c.batch_size,
      seq_len=c.seq_len,
      vocab_size=self.corpus.vocab_size,
      noise_fraction=c.noise_fraction,
      duplicate_fraction=c.duplicate_fraction,
      duplicate_pool=c.duplicate_pool,
    )

  def tracin_steps(self) -> list[int]:
    c = self.config
    return sorted({max(1, int(round(f * c.num_steps))) for f in c.tracin_fractions})

  def batch_fn(self, seed: int):
    """``step -> batch`` of one seed: injected rows, or clean mixture windows."""
    c = self.config
    if self.injected:
      injector = self.injector(seed)
      return lambda i: self.place(injector.batch(i))
    return lambda i: lm_recipe.train_batch(
      self.corpus, seed=seed, step=i, batch_size=c.batch_size, seq_len=c.seq_len, mesh=self.mesh
    )


def run_one(method: str, seed: int, ctx: Context) -> dict[str, float]:
  config = ctx.config
  if method not in ctx.compiled:
    ctx.compiled[method] = build(
      method, config, ctx.model_cfg, ctx.optimizer, ctx.mesh, ctx.kinds, ctx.kind_key
    )
  graphdef, weighting, step, eval_ce, shardings = ctx.compiled[method]
  state = lm_recipe.init_state(ctx.model_cfg, ctx.optimizer, weighting, seed, ctx.mesh, shardings)
  batch_fn = ctx.batch_fn(seed)

  def eval_fn(s):
    return ctx.heldout.evaluate(lambda batch: eval_ce(s, batch))

  # Uniform runs keep their parameters at the TracIn checkpoints (host copies).
  snapshots: dict[int, Any] = {}
  wanted = set(ctx.tracin_steps()) if method == "uniform" and ctx.injected else set()
  done = [0]

  def step_fn(s, batch):
    s, metrics = step(s, batch)
    done[0] += 1
    if done[0] in wanted:
      snapshots[done[0]] = jax.device_get(s.params)
    return s, metrics

  log_path = common.run_log_path(ctx.exp_dir, method, seed)
  logger = common.run_logger(ctx.exp_dir, method, seed)
  logger.log({"step": 0, **eval_fn(state)})
  state, _ = jaxweights.train_loop(
    step_fn,
    state,
    batch_fn,
    config.num_steps,
    logger=logger,
    log_every=config.log_every,
    eval_fn=eval_fn,
    eval_every=config.eval_every,
    desc=f"{method}/{seed}",
    show_progress=None,
  )
  metrics = run_metrics(common.dedupe_by_step(jaxweights.read_jsonl(log_path)), config, ctx.kinds)
  if not ctx.injected:
    return metrics

  pool = ctx.injector(seed).scoring_pool(config.num_steps, config.tracin_pool)
  batches = fixed_batches(pool, config.batch_size)
  metrics.update(pool_losses(state, eval_ce, batches, pool["kind"], ctx.place))
  if method == "uniform" and snapshots:  # the pod configs score no TracIn checkpoints
    steps = sorted(snapshots)
    models = [nnx.merge(graphdef, snapshots[s], jax.device_get(state.model_vars)) for s in steps]
    lrs = [float(ctx.schedule(s - 1)) for s in steps]  # the rate of the last update
    metrics.update(
      tracin_metrics(
        ctx.scorer,
        models,
        lrs,
        batches,
        pool["kind"],
        checkpoint_steps=steps,
        check_library=seed == config.seeds[0],
      )
    )
  return metrics


def pool_losses(state, eval_ce, batches, kinds, place) -> dict[str, float]:
  """Final mean per-row loss of the scoring pool's rows, by kind."""
  rows = []
  for b in batches:
    ce = np.asarray(jax.device_get(eval_ce(state, place(b))), np.float64)
    valid = b["mask"][:, 1:]
    rows.append(ce.sum(1) / np.maximum(valid.sum(1), 1))
  loss = np.concatenate(rows)[: kinds.size]
  return {f"pool_loss_{k}": float(loss[kinds == i].mean()) for i, k in enumerate(KINDS)}


def run_metrics(records: list[dict], config, kinds) -> dict[str, float]:
  """Per-run metrics from the run's log."""
  train = [r for r in records if "loss_mean" in r]
  evals = [r for r in records if "heldout_loss" in r]
  last_eval, last = evals[-1], train[-1]
  out = {key: value for key, value in last_eval.items() if key.startswith("heldout_loss")}
  out["best_heldout_loss"] = min(r["heldout_loss"] for r in evals)
  for k in kinds:
    m0, m1 = last[f"mass_s0_{k}"], last[f"mass_s1_{k}"]
    s0, s1 = last[f"share_s0_{k}"], last[f"share_s1_{k}"]
    out[f"mass_{k}"] = (m0 + m1) / config.num_steps
    out[f"rel_mass_{k}"] = (m0 + m1) / max(s0 + s1, 1e-12)
    out[f"rel_mass_{k}_s0"] = m0 / max(s0, 1e-12)
    out[f"rel_mass_{k}_s1"] = m1 / max(s1, 1e-12)
  sw = switch_step(config)
  for stage, recs in (
    ("s0", [r for r in train if r["step"] - 1 < sw]),
    ("s1", [r for r in train if r["step"] - 1 >= sw]),
  ):
    recs = recs or train
    out[f"ess_fraction_{stage}"] = float(np.mean([r["ess"] for r in recs])) / config.batch_size
  times = np.asarray([[r["step"], r["time_s"]] for r in train], np.float64)
  if len(times) > 2:  # skip the first interval (compilation)
    per = np.diff(times[1:, 1]) / np.diff(times[1:, 0])
    out["step_ms"] = 1e3 * float(np.median(per))
  else:
    out["step_ms"] = 1e3 * float(times[-1, 1] / times[-1, 0])
  return out


def mass_curves(records: list[dict], kind: str) -> tuple[np.ndarray, np.ndarray]:
  """Relative weight mass of ``kind`` per logging interval: ``(end steps, values)``."""
  train = [r for r in records if f"mass_s0_{kind}" in r]
  steps, values = [], []
  prev_m = prev_s = 0.0
  for r in train:
    m = r[f"mass_s0_{kind}"] + r[f"mass_s1_{kind}"]
    s = r[f"share_s0_{kind}"] + r[f"share_s1_{kind}"]
    if s - prev_s > 0:
      steps.append(r["step"])
      values.append((m - prev_m) / (s - prev_s))
    prev_m, prev_s = m, s
  return np.asarray(steps, np.float64), np.asarray(values, np.float64)


def plot_mass(path, exp_dir, config, kinds) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  kinds = [k for k in kinds if k != "clean"] + (["clean"] if "clean" in kinds else [])
  cols = 2
  rows = math.ceil(len(kinds) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(10, 3.2 * rows), dpi=110, sharex=True, squeeze=False)
  for ax in axes.ravel()[len(kinds) :]:
    ax.axis("off")
  for ax, kind in zip(axes.ravel(), kinds):
    for method in config.methods:
      runs = [
        mass_curves(jaxweights.read_jsonl(common.run_log_path(exp_dir, method, s)), kind)
        for s in config.seeds
      ]
      runs = [r for r in runs if len(r[0])]
      if not runs:
        continue
      grid = runs[0][0]
      ys = np.stack([np.interp(grid, s, v) for s, v in runs])
      mean = ys.mean(0)
      std = ys.std(0, ddof=1) if len(ys) > 1 else np.zeros_like(mean)
      (line,) = ax.plot(grid, mean, lw=1.4, label=method)
      ax.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(1.0, color="gray", ls="--", lw=1)
    ax.axvline(switch_step(config), color="black", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_title(f"{kind} rows")
    ax.set_ylabel("weight mass / uniform share")
    ax.grid(alpha=0.3)
  for ax in axes[-1][: len(kinds)]:
    ax.set_xlabel(f"step (interval of {config.log_every}; dotted: switch step)")
  axes[0, 0].legend(fontsize=8)
  fig.suptitle(
    f"Weight mass per row kind relative to uniform ({config.name}, {len(config.seeds)} seeds, mean ± std)"
  )
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def run_setting(config, exp_dir, corpus, *, log=print) -> tuple[dict, dict]:
  """Every method and seed of one setting (clean headline or injected diagnostic).

  Writes the runs' logs and plots into ``exp_dir``; returns ``(metrics, facts)``.
  """
  t0 = time.perf_counter()
  exp_dir = common.experiment_dir(exp_dir)
  model_cfg = model_config(config, corpus.vocab_size)
  optimizer = make_optimizer(config)
  mesh = get_mesh(config)
  place = (lambda b: jaxweights.shard_batch(b, mesh)) if mesh is not None else (lambda b: b)
  heldout = lm_recipe.DomainHeldOut(corpus, config, place)
  ctx = Context(config, exp_dir, corpus, model_cfg, optimizer, mesh, heldout)
  counts = ctx.injector(0).counts if ctx.injected else {"clean": config.batch_size}
  passes = lm_recipe.check_passes(config, corpus, rows_per_step=counts["clean"])
  n_params = lm_recipe.count_params(model_cfg)
  log(
    f"[{EXPERIMENT}] {'diagnostic' if ctx.injected else 'headline'} config={config.name} "
    f"methods={list(config.methods)} seeds={list(config.seeds)} steps={config.num_steps} "
    f"switch={switch_step(config)} params={n_params} rows/batch={counts} "
    f"passes={ {d: round(p, 2) for d, p in passes.items()} } devices={jax.device_count()} "
    f"mesh={mesh is not None}"
  )

  per_seed = common.seeds_loop(config.methods, config.seeds, lambda m, s: run_one(m, s, ctx), log=log)
  loss_keys = [k for k in per_seed[config.methods[0]][0] if k.startswith("heldout_loss")]
  for metric in loss_keys:
    common.add_paired_deltas(per_seed, metric)
  for claim in claims_for(config):  # the paper's ablations compare against other baselines
    if claim.baseline != "uniform":
      common.add_paired_deltas_vs(per_seed, "heldout_loss", claim.baseline)
  metrics = common.aggregate(per_seed)

  curves = common.read_curves(exp_dir, config.methods, config.seeds, "heldout_loss")
  common.plot_curves(
    exp_dir / "heldout_loss.png",
    curves,
    ylabel="clean held-out loss, domain mean (nats/token)",
    title=f"PRESENCE{' (injected-noise diagnostic)' if ctx.injected else ''}: held-out loss "
    f"({config.name}, {len(config.seeds)} seeds)",
  )
  plot_mass(exp_dir / "weight_mass.png", exp_dir, config, ctx.kinds)
  facts = dict(
    params=n_params,
    domains=list(corpus.domains),
    heldout_tokens=dict(heldout.tokens),
    passes=passes,
    switch_step=switch_step(config),
    tracin_steps=ctx.tracin_steps() if ctx.injected else [],
    rows_per_batch=counts,
    kinds=list(ctx.kinds),
    devices=jax.device_count(),
    vocab_size=corpus.vocab_size,
    backend=jax.default_backend(),
    runtime_s=time.perf_counter() - t0,
  )
  return metrics, facts


CLAIMS = (
  common.Claim(
    "Two-stage PRESENCE (microbatch weights, as run) lowers the clean held-out loss vs uniform",
    "Thakkar et al. (mT5-base, XTREME zero-shot): two-stage PRESENCE above uniform, "
    "e.g. XQuAD 72.9 -> 74.1, TyDi 49.2 -> 53.2 (downstream accuracy, not LM loss)",
    "presence_mb",
    "heldout_loss",
  ),
  common.Claim(
    "Two-stage PRESENCE (per-sample weights, the paper's definition) lowers the clean held-out loss vs uniform",
    "Thakkar et al. define per-sample weights; the gains above are theirs",
    "presence",
    "heldout_loss",
  ),
  common.Claim(
    "Two-stage beats direct-only (microbatch)",
    "Thakkar et al. ablations: direct-only is worse than two-stage",
    "presence_mb",
    "heldout_loss_vs_direct_mb",
    baseline="direct_mb",
  ),
  common.Claim(
    "Two-stage beats inverse-only (microbatch)",
    "Thakkar et al. ablations: inverse-only is worse than two-stage",
    "presence_mb",
    "heldout_loss_vs_inverse_mb",
    baseline="inverse_mb",
  ),
  common.Claim(
    "Two-stage beats the reversed order (microbatch)",
    "Thakkar et al. ablations: the reversed order is worse",
    "presence_mb",
    "heldout_loss_vs_reversed_mb",
    baseline="reversed_mb",
  ),
)


def claims_for(config) -> list[common.Claim]:
  """The claims whose methods and baselines this config runs."""
  return [c for c in CLAIMS if c.method in config.methods and c.baseline in config.methods]


def train_and_evaluate(config, workdir, *, log=print) -> dict[str, Any]:
  """The headline (clean mixture), then the injected-noise diagnostic when configured.

  Writes into ``workdir``: ``summary.json`` (the headline), ``claims.json``,
  ``table.md`` and plots; the diagnostic's into ``workdir/diagnostic/``.

  Args:
    config: a config of :mod:`experiments.presence_lm.configs`.
    workdir: the output folder.
    log: where progress lines go.

  Returns:
    The headline summary, read back from ``summary.json``.
  """
  t0 = time.perf_counter()
  if injected(config):
    raise ValueError(
      "the headline runs clean batches: set injection in config.diagnostic, not at the top level."
    )
  exp_dir = common.experiment_dir(workdir)
  corpus = lm_recipe.load_corpus(config)
  metrics, facts = run_setting(config, exp_dir, corpus, log=log)
  common.write_claims(exp_dir, metrics, claims_for(config), len(config.seeds))
  diagnostic = None
  if config.diagnostic is not None:
    sub = common.replace(config, **config.diagnostic.to_dict(), diagnostic=None)
    sub_dir = common.experiment_dir(exp_dir / "diagnostic")
    diag_metrics, diag_facts = run_setting(sub, sub_dir, corpus, log=log)
    write_diagnostic_table(sub_dir, sub, diag_metrics, diag_facts)
    common.write_summary(
      sub_dir, f"{EXPERIMENT}/diagnostic", {**common.config_json(sub), **diag_facts}, diag_metrics
    )
    diagnostic = (sub, diag_metrics, diag_facts)
  runtime = time.perf_counter() - t0
  facts["runtime_s"] = runtime
  write_table(exp_dir, config, metrics, facts, diagnostic)
  return common.finish(exp_dir, EXPERIMENT, config, metrics, runtime, log, **facts)


# --- tables ------------------------------------------------------------------------


def _mass_columns(kinds):
  cols = []
  for k in kinds:
    cols += [(f"rel_mass_{k}_s0", f"{k}, < I"), (f"rel_mass_{k}_s1", f"{k}, ≥ I")]
  return cols


def _recipe(config, facts) -> str:
  layers = "all layers" if config.layers is None else ", ".join(config.layers)
  passes = ", ".join(f"{d} {p:.2f}" for d, p in facts["passes"].items())
  return (
    f"TransformerLM {dict(config.model)} ({facts['params'] / 1e6:.2f}M params, vocab "
    f"{facts['vocab_size']}), seq {config.seq_len}, batch {config.batch_size}, "
    f"{config.num_steps} steps on a uniform mixture of {', '.join(facts['domains'])} "
    f"(passes over each domain's clean training tokens: {passes}); AdamW betas "
    f"({config.b1}, {config.b2}), peak LR {config.peak_lr}, {config.lr_warmup_steps} warm-up "
    f"steps, cosine to {config.end_lr}, clip {config.clip_norm}. PRESENCE: w = "
    f"softmax(τ·zscore(‖∇ℓ‖²)) over the batch's rows (`presence`, `direct`, `inverse`) or "
    f"its {config.microbatches} microbatches of {config.batch_size // config.microbatches} rows "
    f"(`*_mb`), exact ghost norms over {layers}; two-stage τ = +{config.tau} for steps "
    f"< I = {facts['switch_step']} ({100 * config.switch_fraction:.0f}% of the steps), then "
    f"−{config.tau}; `direct*` +{config.tau} throughout, `inverse*` −{config.tau}, `reversed_mb` "
    f"−{config.tau} then +{config.tau}. Held-out loss = the equal-weight mean over domains of "
    f"each domain's mean CE (nats/token) on clean held-out rows drawn i.i.d. within the "
    f"domain ({facts['heldout_tokens']} tokens). Config `{config.name}`, "
    f"{facts['backend']} x{facts['devices']}."
  )


def write_table(exp_dir, config, metrics, facts, diagnostic=None):
  """The headline table (the paper's setting), then a pointer to the diagnostic."""
  n = len(config.seeds)
  domains = facts["domains"]
  columns = [("heldout_loss", "held-out loss (domain mean)"), ("delta_heldout_loss", "Δ vs uniform (paired)")]
  for d in domains:
    columns += [(f"heldout_loss_{d}", d), (f"delta_heldout_loss_{d}", "Δ")]
  columns += [
    ("ess_fraction_s0", "ESS/batch, < I"),
    ("ess_fraction_s1", "ESS/batch, ≥ I"),
    ("step_ms", "ms/step"),
  ]
  intro = (
    f"The paper's setting at CPU scale: {_recipe(config, facts)} Mean ± std over {n} seeds; "
    f"Δ = paired per-seed difference vs uniform; runtime {facts['runtime_s']:.0f}s."
  )
  blocks = [
    "Weight mass each domain's rows received, relative to their share of the batch "
    "(1 = what uniform weights give; from the weights each step used), before (< I) and "
    f"from (≥ I) step I = {facts['switch_step']}:",
    "",
    common.markdown_table(metrics, _mass_columns(domains), digits=3),
    "",
  ]
  if diagnostic is not None:
    sub, diag_metrics, diag_facts = diagnostic
    counts = diag_facts["rows_per_batch"]
    blocks += [
      "### Diagnostic (ours, not the paper's claim): injected noise",
      "",
      f"The same recipe with {counts['shuffled']} shuffled-token, {counts['random']} random-token "
      f"and {counts['duplicate']} duplicate rows injected into every batch of {sub.batch_size}, "
      f"{'all layers' if sub.layers is None else sub.layers} scored, {sub.num_steps} steps; full "
      "tables in `diagnostic/table.md`. Weight mass relative to uniform:",
      "",
      common.markdown_table(diag_metrics, _mass_columns(KINDS), digits=3),
      "",
      "- " + mass_verdict(diag_metrics, len(sub.seeds), diag_facts["switch_step"]),
      "- "
      + loss_verdict(diag_metrics, len(sub.seeds), "heldout_loss", "Clean held-out loss under injection"),
      "",
    ]
  notes = [
    loss_verdict(metrics, n, "heldout_loss", "Clean held-out loss, domain mean (headline)"),
    *(loss_verdict(metrics, n, f"heldout_loss_{d}", f"Held-out loss on {d}") for d in domains),
    "ms/step is measured inside a run on a shared CPU: not a cost measurement (see `make bench`).",
  ]
  common.write_table(
    exp_dir,
    "PRESENCE self-influence reweighting: LM pretraining on a mixture of domains",
    metrics,
    columns,
    intro=intro,
    blocks=blocks,
    notes=notes,
  )


def write_diagnostic_table(exp_dir, config, metrics, facts):
  """The injected-noise diagnostic: weight mass per kind, pool losses, TracIn."""
  n = len(config.seeds)
  sw = facts["switch_step"]
  counts = facts["rows_per_batch"]
  intro = (
    f"Diagnostic (ours, not the paper's claim). Batch {config.batch_size} = {counts['clean']} "
    f"clean + {counts['shuffled']} shuffled-token + {counts['random']} random-token + "
    f"{counts['duplicate']} duplicate rows (from a fixed pool of {config.duplicate_pool} windows, "
    f"each seen ~{config.num_steps * counts['duplicate'] / config.duplicate_pool:.0f} times). "
    f"{_recipe(config, facts)} Mean ± std over {n} seeds; runtime {facts['runtime_s']:.0f}s."
  )
  columns = [
    ("heldout_loss", "clean held-out loss"),
    ("delta_heldout_loss", "Δ vs uniform (paired)"),
    ("ess_fraction_s0", "ESS/batch, < I"),
    ("ess_fraction_s1", "ESS/batch, ≥ I"),
  ]
  blocks = [
    "Weight mass each row kind received, relative to its share of the batch "
    "(1 = what uniform weights give; from the weights each step used), before "
    f"(< I) and from (≥ I) step I = {sw}:",
    "",
    common.markdown_table(metrics, _mass_columns(KINDS), digits=3),
    "",
    "Final mean loss (nats/token) of the scoring pool's training rows, by kind "
    "(duplicates: how well the repeated windows are memorised):",
    "",
    common.markdown_table(metrics, [(f"pool_loss_{k}", k) for k in KINDS], digits=4),
    "",
  ]
  uni = metrics.get("uniform", {})
  if "tracin_auroc_injected" in uni:
    pool = config.tracin_pool
    n_pool = sum(pool.values()) + config.duplicate_pool
    shares = {k: pool.get(k, config.duplicate_pool if k == "duplicate" else 0) / n_pool for k in KINDS}
    cols = [(f"tracin_auroc_{k}", f"AUROC {k}") for k in INJECTED + ("injected",)]
    cols += [(f"tracin_top10_{k}", f"top-10% share {k} (pool {100 * shares[k]:.0f}%)") for k in INJECTED]
    cols.append(
      ("tracin_top10_injected", f"top-10% share injected (pool {100 * (1 - shares['clean']):.0f}%)")
    )
    blocks += [
      f"Offline TracIn on the uniform runs (n={n}): Σ_c η_c ‖∇ℓ(z; θ_c)‖² over "
      f"checkpoints at steps {facts['tracin_steps']}, for a pool of "
      f"{pool['clean']} clean, {pool['shuffled']} shuffled, {pool['random']} random "
      f"rows the run trained on and the {config.duplicate_pool} duplicate windows. "
      "AUROC = P(injected row scores above a clean row); 0.5 = no signal, > 0.5 = "
      "injected rows have higher self-influence.",
      "",
      common.markdown_table({"uniform (TracIn)": uni}, cols, digits=3),
      "",
    ]
    rows = {}
    for step in facts["tracin_steps"]:
      row = {}
      for k in KINDS:
        for what in ("auroc", "normratio", "tokgrad", "coherence"):
          key = f"ck{step}_{what}_{k}"
          if key in uni:
            row[f"{what}_{k}"] = uni[key]
            row[f"{what}_{k}_std"] = uni[f"{key}_std"]
      rows[f"step {step}"] = row
    ck_cols = [(f"auroc_{k}", f"AUROC {k}") for k in INJECTED]
    ck_cols += [(f"normratio_{k}", f"‖g‖² ratio {k}") for k in INJECTED]
    diag_cols = [(f"tokgrad_{k}", f"per-token ratio {k}") for k in INJECTED]
    diag_cols += [(f"coherence_{k}", f"coherence {k}") for k in KINDS]
    blocks += [
      "Per checkpoint (uniform runs): current-parameter self-influence ‖∇ℓ‖² over "
      "all layers, PRESENCE's score. AUROC of each kind vs the clean rows, and the "
      "kind's median ‖∇ℓ‖² over the clean rows' median:",
      "",
      common.markdown_table(rows, ck_cols, digits=3),
      "",
      "Output layer only, same rows: 'per-token ratio' = the kind's median "
      "mean_t ‖softmax(z_t) − e_(y_t)‖² (per-token gradient size at the logits) over "
      "the clean rows'; 'coherence' = median of the row's exact squared head-gradient "
      "norm over its diagonal part Σ_t (‖a_t‖² + 1)‖g_t‖² (1: the per-token "
      "gradients add up like unrelated directions; up to T: all aligned). A row's "
      "‖∇ℓ‖² of the token-mean loss is roughly per-token size × coherence / T:",
      "",
      common.markdown_table(rows, diag_cols, digits=3),
      "",
    ]
  notes = [
    mass_verdict(metrics, n, sw),
    loss_verdict(metrics, n, "heldout_loss", "Clean held-out loss under injection"),
  ]
  if "tracin_auroc_injected" in uni:
    notes.append(tracin_verdict(uni))
  common.write_table(
    exp_dir,
    "PRESENCE diagnostic (ours): injected noise and duplicates",
    metrics,
    columns,
    intro=intro,
    blocks=blocks,
    notes=notes,
  )


def _direction(mean, std, n):
  if n < 3:
    return "too few seeds to tell"
  if abs(mean - 1.0) > 2 * std / math.sqrt(n):
    return "down-weighted" if mean < 1.0 else "up-weighted"
  return "no clear change"


def mass_verdict(metrics, n, sw) -> str:
  """Does the inverse stage down-weight the injected noise? (stated per kind)."""
  parts = []
  for method, stage, label in (
    ("presence", "s1", f"presence inverse stage (≥ {sw})"),
    ("presence", "s0", f"presence direct stage (< {sw})"),
    ("presence_mb", "s1", "presence_mb inverse stage"),
    ("inverse", "s1", "inverse-only (≥ I)"),
  ):
    if method not in metrics or f"rel_mass_{INJECTED[0]}_{stage}" not in metrics[method]:
      continue
    kinds = []
    for k in INJECTED:
      key = f"rel_mass_{k}_{stage}"
      m, s = metrics[method][key], metrics[method][f"{key}_std"]
      kinds.append(f"{k} {m:.3g} ± {s:.2g} ({_direction(m, s, n)})")
    parts.append(f"{label}: " + ", ".join(kinds))
  return (
    "Weight mass of injected rows relative to uniform (the paper expects the "
    "inverse stage to down-weight noise; 'down/up-weighted' = |mean − 1| > 2 "
    f"standard errors, n={n}): " + "; ".join(parts) + "."
  )


def tracin_verdict(uni) -> str:
  parts = [f"{k} AUROC {uni[f'tracin_auroc_{k}']:.2f}" for k in INJECTED]
  return (
    "TracIn ranking (uniform runs): " + ", ".join(parts) + f"; the top 10% of "
    f"scores are {100 * uni['tracin_top10_injected']:.0f}% injected rows."
  )
