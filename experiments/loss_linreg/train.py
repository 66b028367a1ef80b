"""Linear regression with loss-based reweighting: the loop, metrics, table and plot.

A linear model ``nnx.Linear(dim, 1)`` is trained with plain SGD on per-sample
squared error through :func:`jaxweights.make_train_step`, once per strategy
(uniform, LinUpper, Quadratic, Extremes) and seed. The seed fixes the data, the
initialisation and the batch order, so methods are compared on identical runs
(paired by seed).

Reported per method (mean ± std over seeds): final test MSE on the clean test
set, the number of steps to reach a threshold test MSE, the distance to the true
weights, and the weight mass the easy/redundant and noisy samples receive (the
sum of their weights in a batch, averaged over steps; uniform weights give the
kinds' share of the batch).

The model is tiny, so this experiment runs on one device (no data mesh).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxweights
from experiments import common
from experiments.weight_mass import track_kinds
from jaxweights import data as jw_data

EXPERIMENT = "loss_linreg"
KINDS = ("clean", "easy", "noisy")  # kind_train codes 0, 1, 2


def loss_fn(model: nnx.Module, batch: dict) -> jaxweights.LossOutput:
  pred = model(batch["x"])
  return jaxweights.LossOutput(loss=jaxweights.squared_error(pred, batch["y"]))


def make_weighting(method: str, config) -> jaxweights.Weighting:
  if method == "uniform":
    return jaxweights.uniform_weighting()
  return jaxweights.loss_based.WEIGHTINGS[method](r=config.r, delta=config.delta)


def make_model(dim: int, seed: int) -> nnx.Linear:
  return nnx.Linear(dim, 1, rngs=nnx.Rngs(seed))


def build_step(method: str, config, optimizer):
  """One compiled step per method, reused across seeds (same graph, same shapes)."""
  # One stage (switch at step 0): the state accumulates each kind's weight mass over steps.
  weighting = track_kinds(make_weighting(method, config), switch_step=0, n_kinds=len(KINDS))
  graphdef, _ = jaxweights.init_train_state(make_model(config.data["dim"], 0), optimizer, weighting)
  inner = jaxweights.make_train_step(graphdef, loss_fn, optimizer, weighting)

  @jax.jit
  def step(state, batch):
    state, metrics = inner(state, batch)
    mass = state.weighting_state["mass"][1] / (state.step.astype(jnp.float32))
    metrics.update({f"mass_{k}": mass[i] for i, k in enumerate(KINDS)})
    return state, metrics

  @jax.jit
  def evaluate(state, x, y, w_true):
    model = nnx.merge(graphdef, state.params, state.model_vars)
    test_mse = jnp.mean((model(x)[:, 0] - y) ** 2)
    kernel = state.params["kernel"][...][:, 0]
    return test_mse, jnp.sum((kernel - w_true) ** 2)

  return weighting, step, evaluate


def run_one(method, seed, config, exp_dir, optimizer, compiled, data) -> dict[str, float]:
  weighting, step, evaluate = compiled
  model = make_model(config.data["dim"], seed)
  _, state = jaxweights.init_train_state(model, optimizer, weighting, seed=seed)
  x, y = data["x_train"].astype(np.float32), data["y_train"].astype(np.float32)
  kind = data["kind_train"].astype(np.int32)
  x_test = jnp.asarray(data["x_test"], jnp.float32)
  y_test = jnp.asarray(np.reshape(data["y_test"], -1), jnp.float32)
  w_true = jnp.asarray(np.reshape(data["w_true"], -1), jnp.float32)

  def batch_fn(i):
    idx = jw_data.batch_indices(len(x), config.batch_size, seed=seed, step=i)
    return {"x": x[idx], "y": y[idx].reshape(-1, 1), "kind": kind[idx]}

  def eval_fn(s):
    mse, err = evaluate(s, x_test, y_test, w_true)
    return {"test_mse": float(mse), "param_error": float(err)}

  logger = common.run_logger(exp_dir, method, seed)
  initial = eval_fn(state)
  logger.log({"step": 0, **initial})
  _, history = jaxweights.train_loop(
    step,
    state,
    batch_fn,
    config.num_steps,
    logger=logger,
    log_every=1,
    eval_fn=eval_fn,
    eval_every=config.eval_every,
    desc=f"{method}/{seed}",
    show_progress=False,
  )
  train = [r for r in history if "loss_mean" in r]
  evals = [r for r in history if "test_mse" in r]
  return {
    "initial_test_mse": initial["test_mse"],
    "final_test_mse": evals[-1]["test_mse"],
    "final_param_error": evals[-1]["param_error"],
    # Cumulative weight mass over the steps so far / steps: the mean per-step mass.
    "mass_easy": float(train[-1]["mass_easy"]),
    "mass_noisy": float(train[-1]["mass_noisy"]),
    "ess_fraction": float(np.mean([r["ess"] for r in train])) / config.batch_size,
    "skipped_updates": float(sum(r["update_skipped"] for r in train)),
  }


def steps_to_threshold(
  steps: np.ndarray, values: np.ndarray, threshold: float, num_steps: int
) -> tuple[float, bool]:
  """First evaluated step with ``value <= threshold`` (``num_steps`` if never)."""
  hit = np.nonzero(values <= threshold)[0]
  if hit.size == 0:
    return float(num_steps), False
  return float(steps[hit[0]]), True


def run_setting(config, data_config: dict, exp_dir, compiled: dict, *, log=print):
  """All methods x seeds on one data setting; returns metrics, curves, thresholds.

  ``compiled`` caches one compiled step per method across calls (data settings
  share shapes).
  """
  optimizer = optax.sgd(config.learning_rate)
  datasets = {s: jw_data.linear_regression_data(seed=s, **data_config) for s in config.seeds}

  def one(method, seed):
    if method not in compiled:
      compiled[method] = build_step(method, config, optimizer)
    return run_one(method, seed, config, exp_dir, optimizer, compiled[method], datasets[seed])

  per_seed = common.seeds_loop(config.methods, config.seeds, one, log=log)
  curves = common.read_curves(exp_dir, config.methods, config.seeds, "test_mse")

  # Two thresholds, both fixed before looking at any method: "transient" (the
  # paper's convergence-speed claim) and "asymptotic" (near the noise floor).
  # All methods share the seeds' initial models, so the initial MSE is common.
  mean_of = lambda key: {m: np.mean([r[key] for r in runs]) for m, runs in per_seed.items()}
  thresholds = {
    "steps_to_transient": config.transient_fraction
    * float(np.mean(list(mean_of("initial_test_mse").values()))),
    "steps_to_threshold": max(
      config.threshold_factor * float(min(mean_of("final_test_mse").values())),
      config.floor_fraction * float(np.mean(list(mean_of("initial_test_mse").values()))),
    ),
  }
  for method, runs in per_seed.items():
    for run_metrics, (steps, values) in zip(runs, curves[method]):
      for key, thr in thresholds.items():
        n, reached = steps_to_threshold(steps, values, thr, config.num_steps)
        run_metrics[key] = n
        if key == "steps_to_threshold":
          run_metrics["reached"] = float(reached)
  for metric in ("final_test_mse", "steps_to_threshold", "steps_to_transient"):
    common.add_paired_deltas(per_seed, metric)
  fractions = {
    k: float(np.mean([np.mean(d["kind_train"] == i) for d in datasets.values()])) for i, k in enumerate(KINDS)
  }
  return common.aggregate(per_seed), curves, thresholds, fractions


CLAIMS = (
  common.Claim(
    "LinUpper reaches 0.1x the initial test MSE in fewer steps than uniform",
    "Fig. 7 (r = 1): LinUpper converges fastest",
    "linupper",
    "steps_to_transient",
  ),
  common.Claim(
    "Quadratic reaches 0.1x the initial test MSE in fewer steps than uniform",
    "Fig. 7 (r = 1): Quadratic also beats uniform",
    "quadratic",
    "steps_to_transient",
  ),
  common.Claim(
    "LinUpper reaches the asymptotic threshold in fewer steps than uniform",
    "Fig. 7 (r = 1): LinUpper converges fastest",
    "linupper",
    "steps_to_threshold",
  ),
)


def train_and_evaluate(config, workdir, *, log=print) -> dict[str, Any]:
  """Runs every method and seed (the headline, then the robustness studies).

  Writes into ``workdir``: ``summary.json``, ``claims.json`` (the paper's claims
  checked on the headline), ``table.md``, plots and per-run logs.

  Args:
    config: a config of :mod:`experiments.loss_linreg.configs`.
    workdir: the output folder.
    log: where progress lines go.

  Returns:
    The summary, read back from ``summary.json``.
  """
  t0 = time.perf_counter()
  exp_dir = common.experiment_dir(workdir)
  compiled: dict = {}
  log(
    f"[{EXPERIMENT}] config={config.name} methods={list(config.methods)} "
    f"seeds={list(config.seeds)} steps={config.num_steps}"
  )
  metrics, curves, thresholds, fractions = run_setting(
    config, config.data.to_dict(), exp_dir, compiled, log=log
  )
  plot(exp_dir / "test_mse.png", config, curves, thresholds, "")

  sections = [("main", config.data.to_dict(), metrics, thresholds, fractions)]
  for name, overrides in config.robustness.items():
    data_config = dict(config.data.to_dict(), **overrides)
    log(f"[{EXPERIMENT}] robustness study {name}: {overrides}")
    sub_dir = common.experiment_dir(exp_dir / "robustness" / name)
    sub = run_setting(config, data_config, sub_dir, compiled, log=log)
    common.write_summary(
      sub_dir, f"{EXPERIMENT}/{name}", dict(common.config_json(config), data=data_config), sub[0]
    )
    plot(exp_dir / f"test_mse_{name}.png", config, sub[1], sub[2], f" — {name}")
    sections.append((name, data_config, sub[0], sub[2], sub[3]))

  runtime = time.perf_counter() - t0
  common.write_claims(exp_dir, metrics, CLAIMS, len(config.seeds))
  write_table(exp_dir, config, sections, runtime)
  return common.finish(
    exp_dir, EXPERIMENT, config, metrics, runtime, log, thresholds=thresholds, runtime_s=runtime
  )


def plot(path, config, curves, thresholds, suffix):
  thr = thresholds["steps_to_threshold"]
  common.plot_curves(
    path,
    curves,
    ylabel="test MSE (clean, noise-free test set)",
    title=f"Linear regression, r={config.r}{suffix} ({config.name}, {len(config.seeds)} seeds)",
    logy=True,
    hline=(thr, f"asymptotic threshold = {thr:.3g}"),
  )


COLUMNS = [
  ("final_test_mse", "final test MSE"),
  ("delta_final_test_mse", "Δ final vs uniform"),
  ("steps_to_transient", "steps to transient thr."),
  ("delta_steps_to_transient", "Δ vs uniform"),
  ("steps_to_threshold", "steps to asymptotic thr."),
  ("delta_steps_to_threshold", "Δ vs uniform"),
  ("reached", "reached"),
  ("mass_easy", "weight mass easy"),
  ("mass_noisy", "weight mass noisy"),
]


def write_table(exp_dir, config, sections, runtime):
  n = len(config.seeds)
  intro = (
    f"SGD (lr {config.learning_rate}, batch {config.batch_size}, "
    f"{config.num_steps} steps), r = {config.r}, δ = {config.delta}; {n} seeds, "
    f"config `{config.name}`, runtime {runtime:.0f}s. Mean ± std over seeds; "
    f"Δ columns are paired per seed (same data, init and batch order)."
  )
  blocks = []
  for name, data_config, metrics, thresholds, fractions in sections:
    columns = COLUMNS
    head = (
      "The paper's setting: interpolation (a consistent linear model)"
      if name == "main"
      else f"Robustness study (ours, not in the paper): `{name}`"
    )
    blocks += [
      f"### {head}",
      "",
      f"Data: {data_config}. Batch shares: easy {fractions['easy']:.2f}, noisy "
      f"{fractions['noisy']:.2f} (what uniform weights give). Thresholds: transient "
      f"= {config.transient_fraction:g} × the mean initial test MSE = "
      f"{thresholds['steps_to_transient']:.3g}; asymptotic = "
      f"max({config.threshold_factor:g} × best mean final test MSE, "
      f"{config.floor_fraction:g} × mean initial test MSE) = "
      f"{thresholds['steps_to_threshold']:.3g}.",
      "",
      common.markdown_table(metrics, columns),
      "",
      "- " + verdict(metrics, "steps_to_transient", "fewer steps", n=n),
      "- " + verdict(metrics, "steps_to_threshold", "fewer steps", n=n),
      "- " + verdict(metrics, "final_test_mse", "lower", n=n),
      "",
    ]
  notes = [
    "Weight mass = the sum of the weights a kind receives in a batch, averaged "
    "over steps (exactly the weights used by the step, logged from the weighting).",
    f"Evaluated every {config.eval_every} steps; a run that never reaches a "
    f"threshold counts as {config.num_steps} steps (`reached` = fraction of seeds "
    f"that reached the asymptotic one).",
    "better/worse = |mean paired delta| > 2 standard errors (std/√n, n >= 3 "
    "seeds); otherwise 'no clear difference'.",
  ]
  common.write_table(
    exp_dir,
    "Loss-based reweighting: linear regression (the paper's Fig. 7 setting)",
    intro=intro,
    blocks=blocks,
    notes=notes,
  )


def verdict(metrics, metric, goal, *, n, baseline="uniform") -> str:
  """One clause per method: the paired delta vs the baseline and its sign (lower = better)."""
  parts = common.paired_verdicts(metrics, metric, n, baseline=baseline)
  return f"`{metric}` vs {baseline} ({goal} is better): " + "; ".join(parts) + "."
