"""PRESENCE on a small causal LM trained on stdlib source with injected noise and duplicates.

A :class:`jaxweights.TransformerLM` is trained from scratch on windows of the
Python standard library's source (:func:`jaxweights.substrates.data.stdlib_corpus`) into
whose every batch shuffled-token, random-token and duplicated rows are injected
(:mod:`experiments.presence_lm.inject`). Each method (uniform; PRESENCE
two-stage, tau = +1 then -1; direct-only, +1; inverse-only, -1; PRESENCE at
microbatch level) is trained once per seed at the same number of steps; the
seed fixes the initialisation, the batches and the injected rows, so methods
are compared paired by seed.

Measured:

* held-out loss on the CLEAN held-out files (token-weighted mean CE, as in the
  loss-based LM experiment);
* the weight mass each row kind received, from the weights the step used
  (:mod:`experiments.presence_lm.mass`), relative to its share of the batch,
  per stage (before / from the switch step);
* the final per-row loss on a fixed pool of training rows, by kind;
* on every uniform run, TracIn self-influence of that pool over checkpoints
  along the run: where the injected rows rank (AUROC vs clean rows, share of the
  top decile), and per checkpoint whether their gradient norms are above or
  below the clean rows'.
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
from experiments.lm_recipe import get_mesh, loss_fn, model_config
from experiments.loss_lm.train import HeldOut, lm_verdict
from experiments.presence_lm import configs as cfgs
from experiments.presence_lm.inject import KINDS, Injector, fixed_batches
from experiments.presence_lm.mass import mass_metrics, track_kinds
from experiments.presence_lm.tracin import Scorer, tracin_metrics
from jaxweights import data as jw_data

EXPERIMENT = "presence_lm"
INJECTED = KINDS[1:]


make_schedule = lm_recipe.make_schedule
make_optimizer = lm_recipe.make_optimizer


def switch_step(config) -> int:
  return int(round(config.switch_fraction * config.num_steps))


def make_weighting(method: str, config) -> jaxweights.Weighting:
  """The method's weighting, wrapped to account per-kind weight mass."""
  if method not in cfgs.METHODS:
    raise ValueError(f"unknown method {method!r}; choose from {sorted(cfgs.METHODS)}")
  spec = cfgs.METHODS[method]
  if spec is None:
    inner = jaxweights.uniform_weighting()
  else:
    tau, mb = spec
    tau = (
      jaxweights.two_stage_tau(switch_step(config), config.tau) if tau == "two_stage" else tau * config.tau
    )
    inner = jaxweights.presence_weighting(
      tau=tau,
      method=config.norm_method,
      layers=config.layers,
      microbatches=config.microbatches if mb == "config" else None,
    )
  return track_kinds(inner, switch_step=switch_step(config), n_kinds=len(KINDS))


def build(method: str, config, model_cfg, optimizer, mesh):
  """The compiled train, eval and per-row loss functions of one method."""
  weighting = make_weighting(method, config)
  graphdef = nnx.split(nnx.eval_shape(lambda: lm_recipe.make_model(model_cfg, 0)))[0]
  shardings = lm_recipe.state_shardings(model_cfg, optimizer, weighting, mesh)
  inner = jaxweights.make_train_step(
    graphdef, loss_fn, optimizer, weighting, mesh=mesh, state_shardings=shardings
  )

  @jax.jit
  def step(state, batch):
    state, metrics = inner(state, batch)
    return state, {**metrics, **mass_metrics(state.weighting_state, KINDS)}

  @jax.jit
  def eval_ce(state, batch):
    """Per-target cross-entropy ``[batch, seq]`` (0 where the target is padding)."""
    model = nnx.merge(graphdef, state.params, state.model_vars)
    tokens = batch["tokens"]
    logits = model(tokens[:, :-1]).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    return jnp.where(batch["mask"][:, 1:], ce, 0.0)

  return graphdef, weighting, step, eval_ce, shardings


class Context:
  """What every run of one ``run()`` call shares."""

  def __init__(self, config, exp_dir, corpus, model_cfg, optimizer, mesh, heldout):
    self.config, self.exp_dir, self.corpus = config, exp_dir, corpus
    self.model_cfg, self.optimizer, self.mesh, self.heldout = model_cfg, optimizer, mesh, heldout
    self.schedule = make_schedule(config)
    self.compiled: dict[str, tuple] = {}
    self.scorer = Scorer(loss_fn, method=config.norm_method, layers=config.layers)
    self.place = (lambda b: jaxweights.shard_batch(b, mesh)) if mesh is not None else (lambda b: b)

  def injector(self, seed: int) -> Injector:
    c = self.config
    return Injector(
      self.corpus.train_tokens,
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


def run_one(method: str, seed: int, ctx: Context) -> dict[str, float]:
  config = ctx.config
  if method not in ctx.compiled:
    ctx.compiled[method] = build(method, config, ctx.model_cfg, ctx.optimizer, ctx.mesh)
  graphdef, weighting, step, eval_ce, shardings = ctx.compiled[method]
  state = lm_recipe.init_state(ctx.model_cfg, ctx.optimizer, weighting, seed, ctx.mesh, shardings)
  injector = ctx.injector(seed)

  def batch_fn(i):
    return ctx.place(injector.batch(i))

  def eval_fn(s):
    return ctx.heldout.evaluate(lambda batch: eval_ce(s, batch))

  # Uniform runs keep their parameters at the TracIn checkpoints (host copies).
  snapshots: dict[int, Any] = {}
  wanted = set(ctx.tracin_steps()) if method == "uniform" else set()
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
  metrics = run_metrics(common.dedupe_by_step(jaxweights.read_jsonl(log_path)), config)

  pool = injector.scoring_pool(config.num_steps, config.tracin_pool)
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


def run_metrics(records: list[dict], config) -> dict[str, float]:
  """Per-run metrics from the run's log."""
  train = [r for r in records if "loss_mean" in r]
  evals = [r for r in records if "heldout_loss" in r]
  last_eval, last = evals[-1], train[-1]
  out = {
    "heldout_loss": last_eval["heldout_loss"],
    "heldout_loss_file_macro": last_eval["heldout_loss_file_macro"],
    "heldout_loss_wo_largest": last_eval["heldout_loss_wo_largest"],
    "best_heldout_loss": min(r["heldout_loss"] for r in evals),
  }
  for k in KINDS:
    m0, m1 = last[f"mass_s0_{k}"], last[f"mass_s1_{k}"]
    s0, s1 = last[f"share_s0_{k}"], last[f"share_s1_{k}"]
    out[f"mass_{k}"] = (m0 + m1) / config.num_steps
    out[f"rel_mass_{k}"] = (m0 + m1) / (s0 + s1)
    out[f"rel_mass_{k}_s0"] = m0 / s0
    out[f"rel_mass_{k}_s1"] = m1 / s1
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


def plot_mass(path, exp_dir, config) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  kinds = list(KINDS[1:]) + ["clean"]
  fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), dpi=110, sharex=True)
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
  for ax in axes[-1]:
    ax.set_xlabel(f"step (interval of {config.log_every}; dotted: switch step)")
  axes[0, 0].legend(fontsize=8)
  fig.suptitle(
    f"Weight mass per row kind relative to uniform ({config.name}, {len(config.seeds)} seeds, mean ± std)"
  )
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def run(config, out: str = common.RESULTS, *, log=print) -> dict[str, Any]:
  """Runs every method and seed; writes summary.json, table.md and plots."""
  t0 = time.perf_counter()
  exp_dir = common.experiment_dir(out, EXPERIMENT)
  corpus = jw_data.stdlib_corpus(**config.corpus, cache_dir=config.cache_dir)
  model_cfg = model_config(config, corpus.vocab_size)
  optimizer = make_optimizer(config)
  mesh = get_mesh(config)
  place = (lambda b: jaxweights.shard_batch(b, mesh)) if mesh is not None else (lambda b: b)
  heldout = HeldOut(corpus, config, place)
  ctx = Context(config, exp_dir, corpus, model_cfg, optimizer, mesh, heldout)
  counts = ctx.injector(0).counts
  n_params = lm_recipe.count_params(model_cfg)
  epochs = config.num_steps * counts["clean"] * config.seq_len / corpus.train_tokens.size
  log(
    f"[{EXPERIMENT}] config={config.name} methods={list(config.methods)} "
    f"seeds={list(config.seeds)} steps={config.num_steps} switch={switch_step(config)} "
    f"params={n_params} rows/batch={counts} train_tokens={corpus.train_tokens.size} "
    f"clean_epochs={epochs:.2f} devices={jax.device_count()} mesh={mesh is not None}"
  )

  per_seed = common.seeds_loop(config.methods, config.seeds, lambda m, s: run_one(m, s, ctx), log=log)
  for metric in ("heldout_loss", "heldout_loss_file_macro", "heldout_loss_wo_largest", "best_heldout_loss"):
    common.add_paired_deltas(per_seed, metric)
  metrics = common.aggregate(per_seed)

  curves = common.read_curves(exp_dir, config.methods, config.seeds, "heldout_loss")
  common.plot_curves(
    exp_dir / "heldout_loss.png",
    curves,
    ylabel="clean held-out loss (nats/token)",
    title=f"PRESENCE on noisy stdlib LM data: held-out loss ({config.name}, {len(config.seeds)} seeds)",
  )
  plot_mass(exp_dir / "weight_mass.png", exp_dir, config)
  runtime = time.perf_counter() - t0
  facts = dict(
    params=n_params,
    train_tokens=int(corpus.train_tokens.size),
    heldout_tokens=int(heldout.counts.sum()),
    heldout_files=heldout.n_files,
    largest_heldout_file=heldout.largest_name,
    largest_heldout_share=heldout.largest_share,
    clean_epochs=epochs,
    switch_step=switch_step(config),
    tracin_steps=ctx.tracin_steps(),
    rows_per_batch=counts,
    devices=jax.device_count(),
    vocab_size=corpus.vocab_size,
    backend=jax.default_backend(),
    runtime_s=runtime,
  )
  write_table(exp_dir, config, metrics, facts)
  return common.finish(exp_dir, EXPERIMENT, config, metrics, runtime, log, **facts)


# --- table -------------------------------------------------------------------------

COLUMNS = [
  ("heldout_loss", "held-out loss"),
  ("delta_heldout_loss", "Δ vs uniform (paired)"),
  ("heldout_loss_wo_largest", "w/o largest file"),
  ("delta_heldout_loss_wo_largest", "Δ vs uniform"),
  ("best_heldout_loss", "best held-out loss"),
  ("ess_fraction_s0", "ESS/batch, steps < I"),
  ("ess_fraction_s1", "ESS/batch, steps ≥ I"),
  ("step_ms", "ms/step"),
]


def _mass_columns():
  cols = []
  for k in INJECTED + ("clean",):
    cols += [(f"rel_mass_{k}_s0", f"{k}, < I"), (f"rel_mass_{k}_s1", f"{k}, ≥ I")]
  return cols


def _subset(metrics, keys):
  return {m: v for m, v in metrics.items() if any(k in v for k in keys)}


def write_table(exp_dir, config, metrics, facts):
  n = len(config.seeds)
  sw = facts["switch_step"]
  counts = facts["rows_per_batch"]
  intro = (
    f"TransformerLM {config.model} ({facts['params'] / 1e6:.2f}M params, vocab "
    f"{facts['vocab_size']}), seq {config.seq_len}, batch {config.batch_size} = "
    f"{counts['clean']} clean + {counts['shuffled']} shuffled-token + "
    f"{counts['random']} random-token + {counts['duplicate']} duplicate rows (from a "
    f"fixed pool of {config.duplicate_pool} windows, each seen ~"
    f"{config.num_steps * counts['duplicate'] / config.duplicate_pool:.0f} times), "
    f"{config.num_steps} steps ({facts['clean_epochs']:.2f} epochs of the clean "
    f"training tokens); AdamW peak LR {config.peak_lr}, {config.lr_warmup_steps} "
    f"warm-up steps, cosine to {config.end_lr}, clip {config.clip_norm}. PRESENCE: w = "
    f"softmax(τ·zscore(‖∇ℓ_i‖²)) over the batch, exact ghost norms over "
    f"{'all layers' if config.layers is None else config.layers}; `presence` τ = "
    f"+{config.tau} for steps < I = {sw} then −{config.tau}; `direct` τ = +{config.tau}; "
    f"`inverse` τ = −{config.tau}; `presence_mb` = two-stage over "
    f"{config.microbatches} microbatches of {config.batch_size // config.microbatches} "
    f"rows (what the paper ran). Held-out loss = token-weighted mean CE (nats/token) on "
    f"{facts['heldout_tokens']} tokens of {facts['heldout_files']} CLEAN held-out files; "
    f"'w/o largest file' drops `{facts['largest_heldout_file']}` "
    f"({100 * facts['largest_heldout_share']:.0f}% of them). Mean ± std over {n} seeds; "
    f"Δ = paired per-seed difference vs uniform. Config `{config.name}`, "
    f"{facts['backend']} x{facts['devices']}, runtime {facts['runtime_s']:.0f}s."
  )
  blocks = [
    "Weight mass each row kind received, relative to its share of the batch "
    "(1 = what uniform weights give; from the weights each step used), before "
    f"(< I) and from (≥ I) step I = {sw}:",
    "",
    common.markdown_table(metrics, _mass_columns(), digits=3),
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
      "Why (output layer only, same rows): 'per-token ratio' = the kind's median "
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
    lm_verdict(metrics, n, "heldout_loss", "Clean held-out loss (headline)"),
    lm_verdict(metrics, n, "heldout_loss_wo_largest", "Held-out loss without the largest file"),
    "The paper (mT5-base, 1M steps, I = 100k) reports two-stage PRESENCE above "
    "uniform on downstream XTREME tasks and direct-only / inverse-only below "
    "two-stage; it measured no held-out LM loss on injected noise.",
  ]
  if "tracin_auroc_injected" in uni:
    notes.append(tracin_verdict(uni))
  notes += FINDINGS
  common.write_table(
    exp_dir,
    "PRESENCE self-influence reweighting: LM on noisy stdlib data",
    metrics,
    COLUMNS,
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
    if method not in metrics:
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


def render_table(exp_dir) -> None:
  """Rewrites ``table.md`` from ``summary.json`` (e.g. after editing the notes)."""
  from pathlib import Path

  summary = common.read_summary(Path(exp_dir) / "summary.json")
  config = common.Config(summary["config"])
  write_table(exp_dir, config, summary["metrics"], config)


def tracin_verdict(uni) -> str:
  parts = [f"{k} AUROC {uni[f'tracin_auroc_{k}']:.2f}" for k in INJECTED]
  return (
    "TracIn ranking (uniform runs): " + ", ".join(parts) + f"; the top 10% of "
    f"scores are {100 * uni['tracin_top10_injected']:.0f}% injected rows."
  )


# What the quick config showed (3 seeds, CPU); kept with the code so the table states
# it. Re-check when the data, the injection or the defaults change.
FINDINGS: list[str] = [
  "Findings of the quick config (3 seeds, CPU). Direction: the inverse stage of "
  "two-stage PRESENCE does down-weight the injected noise, modestly (random-token "
  "rows ~0.68 of their uniform share over the stage, falling from ~1 at the switch "
  "to ~0.4 by the last steps, see weight_mass.png; shuffled ~0.93; clean ~1.04). The direct "
  "stage gives random rows only ~0.26 of their share: early in training their "
  "gradient norms are BELOW the clean rows' (step-60 ratio 0.90, AUROC 0.33), so "
  "'favour high self-influence' does not favour them.",
  "Why (checked on uniform seed 0 by layer group, with a throw-away script): at "
  "step 20 random rows have 0.73x the clean rows' median ||grad||^2 (head 0.65x, "
  "attention 0.75x, MLP 0.76x). Their per-token gradient at the logits is as large "
  "as clean rows' (per-token ratio ~1.01) but adds up less coherently over the "
  "window (head coherence 1.24 vs 1.48 at step 60): the token-mean loss over "
  "unrelated targets averages out. From step ~120 the body layers reverse this "
  "(step 300: attention 1.7x, MLP 1.5x, LayerNorm 2.7x, total 1.45x; head still "
  "0.81x), and both noise kinds score above clean rows (AUROC 0.73-0.77).",
  "Held-out: every PRESENCE variant is worse than uniform on the clean held-out "
  "loss, with and without the dominant file (beyond 2 standard errors). The "
  "headline penalty of inverse-only and two-stage is mostly on "
  "`encodings/cp737.py` (64% of the held-out tokens): windows of the 8 similar "
  "charmap codec tables in the training split have larger gradient norms than "
  "other clean windows (median 1.2x, AUROC 0.64-0.71 at steps 20-300, same "
  "check), so tau = -1 down-weights the text that file resembles. Direct-only is "
  "the worst without that file: with tau = +1 the per-sample weights concentrate "
  "(ESS ~30% of the batch, ~5 effective rows). The effect of the smaller effective "
  "batch was not separated from that of which rows get the weight.",
  "Duplicates: every PRESENCE variant gives the duplicated windows at most their "
  "share (0.71-1.0 per stage) and memorises them much less (final loss on the duplicate "
  "windows 2.7-4.4 vs 1.9 nats/token under uniform). Their self-influence rises "
  "while they are being learned (1.3-1.4x clean at steps 120-180) and falls once "
  "memorised (0.92x at step 300, per-token gradient 0.61x).",
  "Microbatch mode (4 groups of 4 rows, what the paper ran) moves much less mass "
  "(ESS ~60%); one injected row is diluted in its group, and in the inverse stage "
  "random rows get ~1.0 of their share.",
  "TracIn over 5 checkpoints ranks injected rows above clean ones only moderately "
  "(AUROC 0.67-0.69 per kind; ~43% of the top decile injected vs 33% of the "
  "pool); its sum includes the early checkpoints (highest learning rate) where "
  "random rows score below clean.",
  "ms/step were measured while other jobs loaded the 2 CPU cores (load average "
  "7-11): they are not a cost measurement (see `make bench`). Scale caveat: "
  "0.43M parameters, 300 steps, batch 16, vs mT5-base for 1M steps and "
  "downstream metrics in the paper.",
]
