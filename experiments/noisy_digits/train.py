"""Noisy labels on 8x8 digits: CE, Forward, Reweight, DWS and RENT (Bae et al., ICLR 2024).

scikit-learn's digits (offline; a fixed stratified 1437 / 360 split) get
symmetric or asymmetric class-conditional noise on the TRAINING labels only
(``T[noisy, clean]``, :mod:`jaxweights.families.noisy_labels`); the test labels
stay clean. An MLP is trained with Adam per noise setting and seed, with the
authors' schedule (``config.continue_after_warmup``):

1. plain CE on the noisy labels for ``warmup_steps`` (the authors' 10 warm-up
   epochs); the anchor-point estimate of ``T`` (97th percentile among samples
   labelled ``i``) is taken from this model's softmax on the training set;
2. the SAME network and Adam state then continue to ``num_steps`` once per
   method: ``ce`` (plain CE), ``forward_*``
   (:func:`~jaxweights.families.noisy_labels.forward_corrected_ce`),
   ``reweight_*`` / ``dws_*`` / ``rent_*`` (plain CE weighted by
   :func:`~jaxweights.importance_weighting` / :func:`~jaxweights.dws_weighting` /
   :func:`~jaxweights.rent_weighting`), with ``T`` = the estimate (``*_est``, the
   paper's table) or the matrix the noise was drawn from (``*_true``).

``continue_after_warmup=False`` is our older variant (a robustness study): every
T-using run restarts from CE's initialisation with the warm-up estimate fixed.

The seed fixes the noise draw, the initialisation, the batch order and the
DWS/RENT draws, so methods are compared paired by seed. One compiled function
per method kind (a ``lax.scan`` over ``eval_every`` steps) serves every seed,
setting and T: the weightings read ``T`` from their state and Forward from the
batch, so swapping T is swapping an array.

Reported per method and setting (mean ± std over seeds): last-evaluation test
accuracy (the paper's metric), the share of corrupted training samples the final
model predicts with their noisy label ("memorised": the regime), best-evaluation
test accuracy (selected on the test set, secondary), the weight mass corrupted
samples get, and the estimate's error. Every sentence of ``table.md`` that
states a result is generated from these numbers.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxweights
from experiments import common
from jaxweights import data as jw_data
from jaxweights import noisy_labels as nl

EXPERIMENT = "noisy_digits"
NUM_CLASSES = 10
IN_FEATURES = 64
CLEAN = "clean"
KINDS = ("forward", "reweight", "dws", "rent")
# Train-step metrics averaged over each evaluation interval in the run logs.
STEP_KEYS = ("loss_mean", "loss_weighted", "ess", "weight_max", "mass_corrupt", "grad_norm")
LABELS = {"ce": "CE", "forward": "Forward", "reweight": "Reweight", "dws": "DWS", "rent": "RENT"}

# The authors' code README (mean of 5 runs, last-epoch test accuracy, estimated T;
# ResNet-34, Adam 1e-3, batch 128, 200 epochs): CIFAR-10, method -> setting -> %.
# The sheet (/work/shared/methods/dirichlet_rent.md) records no DWS column.
PAPER_CIFAR10 = {
  "ce": {"sym20": 73.4, "sym50": 46.6, "asym20": 78.4, "asym40": 69.7},
  "forward": {"sym20": 73.8, "sym50": 58.8, "asym20": 79.2, "asym40": 74.2},
  "reweight": {"sym20": 74.5, "sym50": 62.6, "asym20": 79.6, "asym40": 73.1},
  "rent": {"sym20": 78.7, "sym50": 69.0, "asym20": 82.0, "asym40": 77.8},
}


def parse_method(method: str) -> tuple[str, str | None]:
  """``"ce"`` -> ``("ce", None)``; ``"rent_est"`` -> ``("rent", "est")``.

  Args:
    method: a method name of ``config.methods``.

  Returns:
    ``(kind, which T)``; ``which`` is None for CE.

  Raises:
    ValueError: an unknown name.
  """
  if method == "ce":
    return "ce", None
  kind, _, which = method.rpartition("_")
  if kind not in KINDS or which not in ("true", "est"):
    raise ValueError(f"unknown method {method!r}: 'ce' or '<{'|'.join(KINDS)}>_<true|est>'.")
  return kind, which


def parse_setting(name: str) -> tuple[str, float]:
  """``"sym50"`` -> ``("symmetric", 0.5)``, ``"asym20"`` -> ``("asymmetric", 0.2)``.

  Args:
    name: ``sym<percent>``, ``asym<percent>`` or ``"clean"``.

  Returns:
    ``(noise type, rate)``.

  Raises:
    ValueError: any other name.
  """
  if name == CLEAN:
    return "symmetric", 0.0
  match = re.fullmatch(r"(sym|asym)(\d{1,2})", name)
  if not match:
    raise ValueError(f"unknown noise setting {name!r}: 'sym<percent>', 'asym<percent>' or 'clean'.")
  return ("symmetric" if match[1] == "sym" else "asymmetric"), int(match[2]) / 100.0


def transition_for(name: str, config) -> np.ndarray:
  """The true ``T[noisy, clean]`` of a setting (asymmetric: ``config.asymmetric_map``)."""
  kind, rate = parse_setting(name)
  if kind == "symmetric":
    return nl.symmetric_transition(NUM_CLASSES, rate)
  class_map = {c: int(n) for c, n in enumerate(config.asymmetric_map) if int(n) != c}
  return nl.asymmetric_transition(NUM_CLASSES, rate, class_map)


def forward_loss(model: nnx.Module, batch: dict) -> jaxweights.LossOutput:
  """Forward-corrected CE; ``T`` comes with the batch (one compile for every T)."""
  logits = model(batch["x"])
  return jaxweights.LossOutput(nl.forward_corrected_ce(logits, batch["y"], batch["T"]))


def with_corrupt_mass(weighting: jaxweights.Weighting) -> jaxweights.Weighting:
  """Wraps a weighting so its state also holds the step's weight on corrupted samples.

  The batch carries ``corrupt`` (``[batch]`` float, 1 where the noisy label
  differs from the clean one); the mass is the sum of the weights the step
  actually used over those samples. State: ``(inner state, mass)``.

  Args:
    weighting: the weighting to wrap.

  Returns:
    The wrapped weighting.
  """

  def init():
    return (weighting.init(), jnp.zeros((), jnp.float32))

  def update(inputs: jaxweights.WeightInputs, state):
    weights, inner = weighting.update(inputs, state[0])
    used = jnp.where(inputs.mask, weights, 0.0)
    return weights, (inner, jnp.sum(used * inputs.batch["corrupt"]))

  return jaxweights.Weighting(init=init, update=update)


def make_weighting(kind: str, config) -> jaxweights.Weighting:
  """The weighting of a method kind (CE and Forward: uniform), with the corrupted mass."""
  if kind in ("ce", "forward"):
    inner = jaxweights.uniform_weighting()
  else:
    # A placeholder T: every run puts its own (true or estimated) T in the state.
    T = np.eye(NUM_CLASSES, dtype=np.float32)
    inner = {
      "reweight": lambda: nl.importance_weighting(T),
      "dws": lambda: nl.dws_weighting(T, alpha=config.dws_alpha, num_draws=config.dws_num_draws or None),
      "rent": lambda: nl.rent_weighting(T, resample_factor=config.rent_factor),
    }[kind]()
  return with_corrupt_mass(inner)


def make_model(config, seed: int) -> jaxweights.MLP:
  return jaxweights.MLP(IN_FEATURES, tuple(config.hidden), NUM_CLASSES, rngs=nnx.Rngs(seed))


def with_T(state: jaxweights.TrainState, kind: str, T) -> jaxweights.TrainState:
  """Puts ``T`` into a transition weighting's state (no-op for CE / Forward)."""
  if kind in ("ce", "forward"):
    return state
  inner, mass = state.weighting_state
  return state._replace(weighting_state=(inner._replace(T=jnp.asarray(T, jnp.float32)), mass))


def continue_as(kind: str, source: jaxweights.TrainState, weighting_state, T) -> jaxweights.TrainState:
  """``source``'s network, Adam state, step and key with a new weighting state holding ``T``.

  The authors' schedule: the T-based loss continues the warmed-up CE network
  with the same optimiser (their ``update_model`` then ``update_model_sir`` share
  one ``self.optimizer``).
  """
  return with_T(source._replace(weighting_state=weighting_state), kind, T)


class Compiled:
  """One method kind's weighting and its chunk function, compiled on first use.

  ``chunk(state, x [E,B,64], y [E,B], corrupt [E,B], T) -> (state, metrics [E])``.
  """

  def __init__(self, weighting: jaxweights.Weighting, jitted):
    self.weighting = weighting
    self.jitted = jitted
    self.executable = None
    self.compile_s = 0.0

  def __call__(self, *args):
    if self.executable is None:  # ahead of time, so run times exclude compilation
      t0 = time.perf_counter()
      self.executable = self.jitted.lower(*args).compile()
      self.compile_s = time.perf_counter() - t0
    return self.executable(*args)


def build_chunk(kind: str, config, optimizer, graphdef) -> Compiled:
  """``eval_every`` train steps of one method kind in one ``lax.scan``, jitted once."""
  weighting = make_weighting(kind, config)
  loss_fn = forward_loss if kind == "forward" else nl.classification_loss()
  step = jaxweights.make_train_step(graphdef, loss_fn, optimizer, weighting)

  @jax.jit
  def chunk(state, x, y, corrupt, T):
    def body(s, inputs):
      xb, yb, cb = inputs
      s, metrics = step(s, {"x": xb, "y": yb, "corrupt": cb, "T": T})
      metrics["mass_corrupt"] = s.weighting_state[1]
      return s, metrics

    return jax.lax.scan(body, state, (x, y, corrupt))

  return Compiled(weighting, chunk)


def build_eval(graphdef):
  """``evaluate(state, data) -> (metrics, train softmax)`` on the full splits."""

  @jax.jit
  def evaluate(state, x_test, y_test, x_train, y_clean, y_noisy):
    model = nnx.merge(graphdef, state.params, state.model_vars)
    test_pred = jnp.argmax(model(x_test), axis=-1)
    train_logits = model(x_train)
    train_pred = jnp.argmax(train_logits, axis=-1)
    corrupt = y_noisy != y_clean
    memorised = jnp.sum((train_pred == y_noisy) & corrupt) / jnp.maximum(jnp.sum(corrupt), 1)
    metrics = {
      "test_acc": 100.0 * jnp.mean(test_pred == y_test),
      "train_clean_acc": 100.0 * jnp.mean(train_pred == y_clean),
      "memorised": 100.0 * memorised,
    }
    return metrics, jax.nn.softmax(train_logits.astype(jnp.float32))

  return evaluate


def t_error(T_hat: np.ndarray, T: np.ndarray) -> dict[str, float]:
  """Mean absolute error over the C x C entries and the mean estimated diagonal."""
  return {"T_mae": float(np.mean(np.abs(T_hat - T))), "T_diag": float(np.mean(np.diag(T_hat)))}


class Setting(NamedTuple):
  name: str
  T: np.ndarray
  y_noisy: dict  # seed -> int32 [N_train]


def make_setting(name: str, config, y_clean) -> Setting:
  T = transition_for(name, config)
  # The noise draw depends on the setting and the seed only (not on the method).
  salt = sum(ord(ch) for ch in name) * 1000
  noisy = {s: nl.corrupt_labels(y_clean, T, seed=salt + s) for s in config.seeds}
  return Setting(name, T, noisy)


class Context(NamedTuple):
  config: Any
  optimizer: Any
  graphdef: Any
  evaluate: Any
  compiled: dict
  data: dict
  batch_idx: dict  # seed -> int [num_steps, batch]
  loggers: dict
  log: Any


class Segment(NamedTuple):
  """What one stretch of training returns."""

  state: Any
  records: list  # evaluation records (with the interval's train metrics)
  train: dict  # step key -> [steps] values


def train_segment(ctx: Context, kind, state, setting, seed, T, start, stop, on_eval=None) -> Segment:
  """Steps ``[start, stop)`` of one method kind; an evaluation every ``eval_every`` steps."""
  config, data = ctx.config, ctx.data
  if kind not in ctx.compiled:
    ctx.compiled[kind] = build_chunk(kind, config, ctx.optimizer, ctx.graphdef)
  comp = ctx.compiled[kind]
  y_clean = data["y_train"]
  y_noisy = setting.y_noisy[seed]
  idx = ctx.batch_idx[seed][start:stop]
  xs = data["x_train"][idx]
  ys = y_noisy[idx]
  cs = (y_noisy != y_clean)[idx].astype(np.float32)
  T_dev = jnp.asarray(T, jnp.float32)
  e = config.eval_every
  if comp.executable is None:  # compile outside the timed run
    comp(state, xs[:e], ys[:e], cs[:e], T_dev)
    ctx.log(f"  [{setting.name}] compiled {kind} in {comp.compile_s:.1f}s")
  records, train = [], {k: [] for k in STEP_KEYS + ("update_skipped",)}
  for c in range((stop - start) // e):
    sl = slice(c * e, (c + 1) * e)
    state, metrics = comp(state, xs[sl], ys[sl], cs[sl], T_dev)
    metrics = jax.device_get(metrics)
    for k in train:
      train[k].append(np.asarray(metrics[k], np.float64))
    rec = evaluate(ctx, state, setting, seed, start + (c + 1) * e)
    rec.update({k: float(np.mean(metrics[k])) for k in STEP_KEYS})
    rec["update_skipped"] = float(np.sum(metrics["update_skipped"]))
    if on_eval is not None:
      on_eval(rec, state)
    records.append(rec)
  return Segment(state, records, {k: np.concatenate(v) if v else np.zeros(0) for k, v in train.items()})


def evaluate(ctx: Context, state, setting: Setting, seed: int, step: int, with_probs: bool = False):
  data = ctx.data
  metrics, probs = ctx.evaluate(
    state,
    data["x_test_dev"],
    data["y_test_dev"],
    data["x_train_dev"],
    data["y_train_dev"],
    jnp.asarray(setting.y_noisy[seed]),
  )
  rec = {"step": step, "setting": setting.name, **{k: float(v) for k, v in jax.device_get(metrics).items()}}
  return (rec, np.asarray(probs)) if with_probs else rec


def summarise(records, train, corrupt_share, config, which, T, setting) -> dict[str, float]:
  """The per-run metrics from the evaluation records and the train metrics of the run."""
  acc = np.array([r["test_acc"] for r in records if r["step"] > 0])
  out = {
    "test_acc": float(acc[-1]),
    "best_test_acc": float(acc.max()),
    "memorised": records[-1]["memorised"],
    "train_clean_acc": records[-1]["train_clean_acc"],
    "mass_corrupt": float(np.mean(train["mass_corrupt"])),
    "corrupt_share": corrupt_share,
    "ess_fraction": float(np.mean(train["ess"])) / config.batch_size,
    "skipped_updates": float(np.sum(train["update_skipped"])),
  }
  if which == "est":
    out.update(t_error(T, setting.T))
  return out


def run_seed(ctx: Context, setting: Setting, methods, seed: int) -> tuple[dict, np.ndarray | None]:
  """Every method on one setting and seed: the shared CE warm-up, then each method.

  Returns:
    ``({method: metrics}, the estimated T (None on clean labels))``.
  """
  config = ctx.config
  w = config.warmup_steps
  y_noisy = setting.y_noisy[seed]
  corrupt_share = float(np.mean(y_noisy[ctx.batch_idx[seed]] != ctx.data["y_train"][ctx.batch_idx[seed]]))
  eye = np.eye(NUM_CLASSES, dtype=np.float32)
  ce_weighting = make_weighting("ce", config)
  _, state0 = jaxweights.init_train_state(make_model(config, seed), ctx.optimizer, ce_weighting, seed=seed)

  first = evaluate(ctx, state0, setting, seed, 0)
  T_hat: dict = {}

  def anchor(rec, state):
    if rec["step"] == w:  # the anchor points of the warmed-up CE model
      _, probs = evaluate(ctx, state, setting, seed, w, with_probs=True)
      T_hat["T"] = nl.estimate_transition_anchor(probs, y_noisy, percentile=config.anchor_percentile)

  t0 = time.perf_counter()
  warm = train_segment(ctx, "ce", state0, setting, seed, eye, 0, w, on_eval=anchor)
  T_est = T_hat["T"]
  warm_facts = {
    "memorised_at_warmup": warm.records[-1]["memorised"],
    "test_acc_at_warmup": warm.records[-1]["test_acc"],
  }
  warm_s = time.perf_counter() - t0
  head = [first] + warm.records
  out = {}
  for method in methods:
    kind, which = parse_method(method)
    T = eye if which is None else (setting.T if which == "true" else T_est)
    t0 = time.perf_counter()
    if kind == "ce" or config.continue_after_warmup:
      start_state = (
        warm.state if kind == "ce" else continue_as(kind, warm.state, make_weighting(kind, config).init(), T)
      )
      seg = train_segment(ctx, kind, start_state, setting, seed, T, w, config.num_steps)
      records = head + seg.records
      train = {k: np.concatenate([warm.train[k], seg.train[k]]) for k in warm.train}
      # Phase of each record: the CE warm-up (shared by every method) or the method's own.
      logged = [dict(r, phase="warmup_ce") for r in head] + [dict(r, phase=method) for r in seg.records]
    else:  # our older variant: restart from CE's initialisation, T fixed
      _, fresh = jaxweights.init_train_state(
        make_model(config, seed), ctx.optimizer, make_weighting(kind, config), seed=seed
      )
      seg = train_segment(ctx, kind, with_T(fresh, kind, T), setting, seed, T, 0, config.num_steps)
      records = [first] + seg.records
      train = seg.train
      logged = [dict(r, phase=method) for r in records]
    for rec in logged:
      ctx.loggers[(method, seed)].log(rec)
    out[method] = summarise(records, train, corrupt_share, config, which, T, setting)
    out[method].update(warm_facts)
    out[method]["run_s"] = time.perf_counter() - t0 + (warm_s if kind == "ce" else 0.0)
    shown = ", ".join(f"{k}={out[method][k]:.4g}" for k in ("test_acc", "best_test_acc", "memorised"))
    ctx.log(f"  [{setting.name}] {method:>13s} seed {seed}: {shown} ({out[method]['run_s']:.1f}s)")
  return out, (T_est if setting.name != CLEAN else None)


def run_volmin(ctx: Context, settings: list[Setting]) -> list[dict]:
  """VolMinNet on every setting and seed: learned T's error and the classifier's accuracy.

  Same MLP, initialisation, batches, optimiser and steps as the other methods;
  the classifier and ``T`` are trained jointly from the start (as in the
  authors' VolMinNet run) with :func:`jaxweights.families.noisy_labels.volmin_loss`.
  """
  config, data = ctx.config, ctx.data
  lam, init_diag = config.volmin.lam, config.volmin.init_diag
  tx = nl.volmin_optimizer(ctx.optimizer, optax.adam(config.volmin.t_learning_rate))
  graphdef, _ = jaxweights.init_train_state(
    nl.VolMinNet(make_model(config, 0), NUM_CLASSES, init_diag=init_diag), tx
  )
  step = jaxweights.make_train_step(graphdef, nl.volmin_loss(lam), tx)

  @jax.jit
  def train(state, xs, ys):
    return jax.lax.scan(lambda s, b: step(s, {"x": b[0], "y": b[1]}), state, (xs, ys))

  @jax.jit
  def finish(state, x_test, y_test):
    model = nnx.merge(graphdef, state.params, state.model_vars)
    return 100.0 * jnp.mean(jnp.argmax(model(x_test), -1) == y_test), model.transition()

  out = [{} for _ in config.seeds]
  for setting in settings:
    for i, seed in enumerate(config.seeds):
      t0 = time.perf_counter()
      _, state = jaxweights.init_train_state(
        nl.VolMinNet(make_model(config, seed), NUM_CLASSES, init_diag=init_diag), tx, seed=seed
      )
      idx = ctx.batch_idx[seed]
      state, metrics = train(
        state, jnp.asarray(data["x_train"][idx]), jnp.asarray(setting.y_noisy[seed][idx])
      )
      acc, T_hat = jax.device_get(finish(state, data["x_test_dev"], data["y_test_dev"]))
      T_hat = np.asarray(T_hat, np.float64)
      err = t_error(T_hat, setting.T)
      out[i].update(
        {
          f"{setting.name}_test_acc": float(acc),
          f"{setting.name}_T_mae": err["T_mae"],
          f"{setting.name}_T_diag": err["T_diag"],
          f"{setting.name}_skipped_updates": float(np.sum(metrics["update_skipped"])),
          f"{setting.name}_T_learned": T_hat.tolist(),
        }
      )
      ctx.log(
        f"  [{setting.name}] volmin seed {seed}: test_acc={float(acc):.2f} "
        f"T_mae={err['T_mae']:.4f} ({time.perf_counter() - t0:.1f}s)"
      )
  return out


# --- claims -------------------------------------------------------------------------


def add_delta_vs(per_seed: dict, key: str, base_kind: str) -> str:
  """``delta_<key>_vs_<base>``: each T-using method minus ``<base_kind>_<same T>``, per seed.

  ``common.add_paired_deltas`` takes one baseline for every method; here the
  baseline follows the method's T (``rent_est`` vs ``forward_est``). Returns the
  new metric's name (``<key>_vs_<base_kind>``), which every compared method (the
  baseline included) also carries as a copy of ``key``.
  """
  name = f"{key}_vs_{base_kind}"
  for method, runs in per_seed.items():
    _, which = parse_method(method)
    base = per_seed.get(f"{base_kind}_{which}") if which else None
    if base is None:
      continue
    for run, b in zip(runs, base):
      run[name] = run[key]
      run[f"delta_{name}"] = run[key] - b[key]
  return name


def make_claims(settings, which: str, methods) -> list[common.Claim]:
  """The paper's directions at the last epoch, per noise column, for the ``which`` T."""
  claims = []
  for s in settings:
    if s not in PAPER_CIFAR10["ce"]:
      continue
    p = {k: PAPER_CIFAR10[k][s] for k in PAPER_CIFAR10}
    for kind in ("rent", "dws"):
      method = f"{kind}_{which}"
      if method not in methods:
        continue
      for base in ("ce", "forward", "reweight"):
        baseline = "ce" if base == "ce" else f"{base}_{which}"
        if baseline not in methods:
          continue
        metric = f"{s}_test_acc" if base == "ce" else f"{s}_test_acc_vs_{base}"
        if kind == "rent":
          paper = f"the authors' code README, CIFAR-10 {s}: RENT {p['rent']} vs {LABELS[base]} {p[base]}"
        else:
          paper = (
            f"DWS is the paper's proposal (α = 10); CIFAR-10 {s}: RENT {p['rent']}, {LABELS[base]} "
            f"{p[base]} (the sheet records no DWS figure)"
          )
        claims.append(
          common.Claim(
            f"{s}: {LABELS[kind]} above {LABELS[base]} at the last epoch ({which} T)",
            paper,
            method,
            metric,
            lower_is_better=False,
            baseline=baseline,
          )
        )
  return claims


# --- the experiment ---------------------------------------------------------------------


def check_config(config) -> tuple[str, ...]:
  methods = tuple(config.methods)
  if methods[0] != "ce":
    raise ValueError("config.methods must start with 'ce' (the warm-up and the T estimates come from it).")
  for m in methods:
    parse_method(m)
  for s in config.settings:
    parse_setting(s)
  if config.headline_T not in ("est", "true"):
    raise ValueError(f"headline_T must be 'est' or 'true', got {config.headline_T!r}.")
  if config.num_steps % config.eval_every or config.warmup_steps % config.eval_every:
    raise ValueError("num_steps and warmup_steps must be multiples of eval_every.")
  if not 0 < config.warmup_steps < config.num_steps:
    raise ValueError("warmup_steps must be in (0, num_steps).")
  if len(config.asymmetric_map) != NUM_CLASSES:
    raise ValueError(f"asymmetric_map must list the noisy label of each of the {NUM_CLASSES} classes.")
  return methods


def train_and_evaluate(config, workdir, *, log=print) -> dict[str, Any]:
  """Runs every setting, method and seed, then the robustness studies.

  Writes into ``workdir``: ``summary.json``, ``claims.json`` (the paper's
  directions checked on the headline: last-epoch accuracy with ``headline_T``),
  ``table.md``, plots, ``t_estimates.json`` and per-run logs.

  Args:
    config: a config of :mod:`experiments.noisy_digits.configs`.
    workdir: the output folder.
    log: where progress lines go.

  Returns:
    The summary, read back from ``summary.json``.
  """
  t0 = time.perf_counter()
  methods = check_config(config)
  exp_dir = common.experiment_dir(workdir)
  data = jw_data.load_digits(seed=config.split_seed, test_fraction=config.test_fraction)
  for k in ("x_train", "y_train", "x_test", "y_test"):
    data[f"{k}_dev"] = jnp.asarray(data[k])
  optimizer = optax.adam(config.learning_rate)
  graphdef, _ = jaxweights.init_train_state(make_model(config, 0), optimizer)
  n = len(data["y_train"])
  batch_idx = {
    s: np.stack(
      [jw_data.batch_indices(n, config.batch_size, seed=s, step=i) for i in range(config.num_steps)]
    )
    for s in config.seeds
  }
  # One log per (method, seed); its records carry the setting's name and phase.
  loggers = {(m, s): common.run_logger(exp_dir, m, s) for m in methods for s in config.seeds}
  ctx = Context(config, optimizer, graphdef, build_eval(graphdef), {}, data, batch_idx, loggers, log)
  log(
    f"[{EXPERIMENT}] config={config.name} methods={list(methods)} seeds={list(config.seeds)} "
    f"steps={config.num_steps} warm-up={config.warmup_steps} settings={list(config.settings)} "
    f"continue_after_warmup={config.continue_after_warmup}"
  )

  per_seed: dict[str, list[dict]] = {m: [{} for _ in config.seeds] for m in methods}
  t_info: dict[str, dict] = {}
  noise_rates: dict[str, float] = {}
  settings = [make_setting(s, config, data["y_train"]) for s in config.settings]
  if config.clean_reference:
    settings.append(make_setting(CLEAN, config, data["y_train"]))
  for setting in settings:
    log(f"[{EXPERIMENT}] setting {setting.name}")
    chosen = ("ce",) if setting.name == CLEAN else methods
    results = {m: [] for m in chosen}
    T_est = {}
    for seed in config.seeds:
      out, T_hat = run_seed(ctx, setting, chosen, seed)
      for m in chosen:
        results[m].append(out[m])
      if T_hat is not None:
        T_est[seed] = T_hat
    for m, runs in results.items():
      for i, r in enumerate(runs):
        per_seed[m][i].update({f"{setting.name}_{k}": v for k, v in r.items()})
    noise_rates[setting.name] = float(
      np.mean([np.mean(setting.y_noisy[s] != data["y_train"]) for s in config.seeds])
    )
    if setting.name != CLEAN:
      t_info[setting.name] = {
        "T_true": setting.T.tolist(),
        "T_est": {str(s): T.tolist() for s, T in T_est.items()},
        "errors": {str(s): t_error(T, setting.T) for s, T in T_est.items()},
      }
  names = [s.name for s in settings if s.name != CLEAN]
  for s in names:
    common.add_paired_deltas(per_seed, f"{s}_test_acc", baseline="ce")
    for base in ("forward", "reweight"):
      add_delta_vs(per_seed, f"{s}_test_acc", base)

  if config.volmin is not None:
    noisy_settings = [s for s in settings if s.name != CLEAN]
    volmin = run_volmin(ctx, noisy_settings)
    for s in noisy_settings:
      t_info[s.name]["T_volmin"] = {
        str(seed): r.pop(f"{s.name}_T_learned") for seed, r in zip(config.seeds, volmin)
      }
    per_seed["volmin"] = volmin
  metrics = common.aggregate(per_seed)
  n_seeds = len(config.seeds)
  claims = common.write_claims(exp_dir, metrics, make_claims(names, config.headline_T, methods), n_seeds)

  sections = []
  for name, overrides in config.robustness.items():
    # Our settings (not the paper's), re-run in full into robustness/<name>/;
    # their tables are appended to this one under a label that says so.
    sub_config = common.replace(config, **overrides, robustness={})
    with sub_config.unlocked():
      sub_config.name = f"{config.name}/{name}"
    log(f"[{EXPERIMENT}] robustness study {name} (ours): {overrides}")
    sub_dir = exp_dir / "robustness" / name
    train_and_evaluate(sub_config, sub_dir, log=log)
    sections.append((name, overrides, (sub_dir / "table.md").read_text()))

  runtime = time.perf_counter() - t0
  (exp_dir / "t_estimates.json").write_text(json.dumps(t_info, indent=1) + "\n")
  curves = {
    m: {
      s: {
        key: [_curve(exp_dir, m, seed, s, key) for seed in config.seeds] for key in ("test_acc", "memorised")
      }
      for s in names + ([CLEAN] if m == "ce" and config.clean_reference else [])
    }
    for m in methods
  }
  for which in ("est", "true"):
    if any(m.endswith(f"_{which}") for m in methods):
      plot_runs(exp_dir / f"test_acc_{which}_T.png", config, curves, names, which)
  write_table(exp_dir, config, metrics, names, noise_rates, runtime, n, len(data["y_test"]), claims, sections)
  return common.finish(
    exp_dir,
    EXPERIMENT,
    config,
    metrics,
    runtime,
    log,
    runtime_s=runtime,
    realised_noise_rates=noise_rates,
    n_train=n,
    n_test=len(data["y_test"]),
  )


def _curve(exp_dir, method, seed, setting, key):
  records = [
    r
    for r in jaxweights.read_jsonl(common.run_log_path(exp_dir, method, seed))
    if r.get("setting") == setting
  ]
  return common.curve(records, key)


# --- plots ------------------------------------------------------------------------------


def _band(ax, runs, label, **kw):
  runs = [(s, v) for s, v in runs if len(s)]
  if not runs:
    return
  grid = runs[0][0]
  ys = np.stack([np.interp(grid, s, v) for s, v in runs])
  mean = ys.mean(axis=0)
  std = ys.std(axis=0, ddof=1) if len(ys) > 1 else np.zeros_like(mean)
  (line,) = ax.plot(grid, mean, label=label, lw=1.3, **kw)
  ax.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)


def plot_runs(path, config, curves, names, which):
  """Per setting: test accuracy (top) and memorised share (bottom) vs step, CE and the four kinds."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, len(names), figsize=(3.6 * len(names) + 0.6, 6.6), dpi=110, squeeze=False)
  for col, name in enumerate(names):
    for row, key in enumerate(("test_acc", "memorised")):
      ax = axes[row, col]
      _band(ax, curves["ce"][name][key], "CE", color="k")
      for kind in KINDS:
        method = f"{kind}_{which}"
        if method in curves:
          _band(ax, curves[method][name][key], LABELS[kind])
      if key == "test_acc" and CLEAN in curves["ce"]:
        clean = np.mean([v[-1] for _, v in curves["ce"][CLEAN]["test_acc"] if len(v)])
        ax.axhline(clean, color="gray", ls="--", lw=1, label="CE, clean labels")
      ax.axvline(config.warmup_steps, color="gray", ls=":", lw=0.8)
      ax.grid(alpha=0.3)
      if row == 0:
        ax.set_title(f"{name}, {which} T")
      else:
        ax.set_xlabel("step")
  axes[0, 0].set_ylabel("test accuracy (%), clean labels")
  axes[1, 0].set_ylabel("corrupted training labels fitted (%)")
  axes[0, 0].legend(fontsize=7)
  fig.suptitle(
    f"Noisy digits ({config.name}, {len(config.seeds)} seeds, mean ± std); dotted: end of the CE warm-up",
    fontsize=9,
  )
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# --- table ------------------------------------------------------------------------------


def regime_lines(metrics, names) -> list[str]:
  """Sentences on the regime, generated from CE's numbers."""
  ce = metrics["ce"]
  lines = []
  for s in names:
    drop = ce[f"{s}_best_test_acc"] - ce[f"{s}_test_acc"]
    lines.append(
      f"{s}: CE fits {ce[f'{s}_memorised']:.1f}% of the corrupted training labels at the end "
      f"({ce[f'{s}_memorised_at_warmup']:.1f}% when T is estimated); its last test accuracy "
      f"is {drop:.1f} pp below its best."
    )
  return lines


def paper_table(metrics, names, which) -> list[str]:
  """The paper's CIFAR-10 row next to ours for each noise column (last-epoch accuracy)."""
  cols = [s for s in names if s in PAPER_CIFAR10["ce"]]
  if not cols:
    return []
  lines = [
    "| method | " + " | ".join(f"{s} paper (CIFAR-10) | {s} ours" for s in cols) + " |",
    "|---|" + "---|---|" * len(cols),
  ]
  for kind in ("ce",) + KINDS:
    method = "ce" if kind == "ce" else f"{kind}_{which}"
    if method not in metrics:
      continue
    cells = []
    for s in cols:
      paper = PAPER_CIFAR10.get(kind, {}).get(s)
      cells.append("—" if paper is None else f"{paper:g}")
      cells.append(common.fmt(metrics[method][f"{s}_test_acc"], metrics[method][f"{s}_test_acc_std"]))
    lines.append(f"| {LABELS[kind]} | " + " | ".join(cells) + " |")
  return lines


def claim_lines(rows, source: str | None = "claims.json") -> list[str]:
  """The verdicts in a few generated lines: a count per verdict, then the claims that are not ties.

  The full table (the paper's figure, ours, the verdict per claim) is ``claims.json``,
  which the report prints.
  """
  count: dict[str, int] = {}
  for r in rows:
    count[r["verdict"]] = count.get(r["verdict"], 0) + 1
  lines = [
    f"{len(rows)} claims: "
    + ", ".join(f"{k} {v}" for k, v in sorted(count.items(), key=lambda kv: -kv[1]))
    + ". A direction counts when |paired Δ| > 2 standard errors over ≥ 3 seeds"
    + (f" (`{source}`)." if source else ".")
  ]
  for verdict in ("reproduces", "opposite direction"):
    for r in rows:
      if r["verdict"] == verdict:
        lines.append(f"{verdict}: {r['claim']} — {r['ours']}")
  return lines


def write_table(exp_dir, config, metrics, names, noise_rates, runtime, n_train, n_test, claims, sections=()):
  n = len(config.seeds)
  which = config.headline_T
  methods = [m for m in config.methods]
  head_methods = {m: metrics[m] for m in methods if m == "ce" or m.endswith(f"_{which}")}
  other = "true" if which == "est" else "est"
  other_methods = {m: metrics[m] for m in methods if m.endswith(f"_{other}")}
  schedule = (
    f"CE for the first {config.warmup_steps} steps (~{config.warmup_steps * config.batch_size / n_train:.0f} "
    f"epochs), then the same network and Adam state continue with each method's loss"
    if config.continue_after_warmup
    else f"every T-using run restarts from CE's initialisation with the T estimated at step "
    f"{config.warmup_steps} (our variant, not the authors' schedule)"
  )
  amap = {c: int(v) for c, v in enumerate(config.asymmetric_map) if int(v) != c}
  intro = (
    f"MLP 64-{'-'.join(map(str, config.hidden))}-10, Adam {config.learning_rate:g}, batch "
    f"{config.batch_size}, {config.num_steps} steps (~{config.num_steps * config.batch_size / n_train:.0f} "
    f"epochs over {n_train} training images); {schedule}. Test set: {n_test} clean images. "
    f"Noise on the training labels only: symmetric rate r (T = (1-r) I + r/9 off-diagonal) or "
    f"asymmetric flips {', '.join(f'{c}->{v}' for c, v in amap.items())} with rate r; realised "
    f"corrupted fractions "
    + ", ".join(f"{k} {100 * v:.1f}%" for k, v in noise_rates.items() if k != CLEAN)
    + f". `*_est`: anchor-point T ({config.anchor_percentile:g}th percentile among samples labelled i) "
    f"from the CE model at step {config.warmup_steps}, fixed; `*_true`: the T the noise was drawn from. "
    f"DWS: alpha {config.dws_alpha:g}, M = {config.dws_num_draws or config.batch_size}; RENT: N = "
    f"{config.rent_factor}. {n} seeds (noise draw, init, batch order, DWS/RENT draws), mean ± std; "
    f"config `{config.name}`, runtime {runtime:.0f}s."
  )
  blocks = [
    f"### The paper's claims (headline: last-epoch accuracy, {which} T)",
    "",
    *[f"- {line}" for line in claim_lines(claims)],
    "",
    "### The regime (CE)",
    "",
    *[f"- {line}" for line in regime_lines(metrics, names)],
    "",
    f"### Last-epoch test accuracy (%), {which} T — the paper's metric, next to the paper's CIFAR-10 row",
    "",
    *paper_table(metrics, names, which),
    "",
    f"### Headline ({which} T): last-epoch and best test accuracy, memorised share",
    "",
    common.markdown_table(
      head_methods,
      [(f"{s}_test_acc", f"{s} last") for s in names]
      + ([(f"{CLEAN}_test_acc", "clean labels (CE)")] if config.clean_reference else []),
    ),
    "",
    common.markdown_table(
      head_methods, [(f"{s}_best_test_acc", f"{s} best (on test, optimistic)") for s in names]
    ),
    "",
    common.markdown_table(head_methods, [(f"{s}_memorised", f"{s} memorised %") for s in names]),
    "",
    "### Paired Δ last test accuracy vs CE (percentage points, same seed)",
    "",
    common.markdown_table(
      {m: v for m, v in metrics.items() if m not in ("ce", "volmin")},
      [(f"delta_{s}_test_acc", s) for s in names],
    ),
    "",
  ]
  if other_methods:
    other_rows = [common.claim_verdict(metrics, c, n) for c in make_claims(names, other, methods)]
    blocks += [
      f"### The other T ({other}): last test accuracy, memorised share",
      "",
      f"The paper's directions checked with the {other} T (a diagnostic, not in `claims.json`):",
      "",
      *[f"- {line}" for line in claim_lines(other_rows, source=None)],
      "",
      common.markdown_table(other_methods, [(f"{s}_test_acc", f"{s} last") for s in names]),
      "",
      common.markdown_table(other_methods, [(f"{s}_memorised", f"{s} memorised %") for s in names]),
      "",
    ]
  est = [m for m in methods if m.endswith("_est")]
  if est:
    m0 = metrics[est[0]]
    rows = ["| setting | true diag mean | est. diag mean | MAE over entries |", "|---|---|---|---|"]
    for s in names:
      true_diag = float(np.mean(np.diag(transition_for(s, config))))
      rows.append(
        f"| {s} | {true_diag:.3f} | {common.fmt(m0[f'{s}_T_diag'], m0[f'{s}_T_diag_std'])} | "
        f"{common.fmt(m0[f'{s}_T_mae'], m0[f'{s}_T_mae_std'])} |"
      )
    blocks += ["### Estimated T (anchor points), mean ± std over seeds", "", *rows, ""]
  blocks += [
    "### Weight on corrupted samples",
    "",
    "Share of a batch's weight on corrupted samples, mean over all steps (the CE warm-up included); "
    "uniform weights (CE, Forward) give the corrupted share.",
    "",
    common.markdown_table(
      {m: v for m, v in metrics.items() if m != "volmin"}, [(f"{s}_mass_corrupt", s) for s in names]
    ),
    "",
  ]
  if "volmin" in metrics:
    v = metrics["volmin"]
    blocks += [
      f"### Learned T (VolMinNet, lam {config.volmin.lam:g}, initial diagonal {config.volmin.init_diag:g})",
      "",
      "Classifier and T trained jointly from the start, same MLP, batches and steps.",
      "",
      "| setting | test acc | learned-T MAE | learned-T diag mean |",
      "|---|---|---|---|",
      *[
        f"| {s} | {common.fmt(v[f'{s}_test_acc'], v[f'{s}_test_acc_std'])} | "
        f"{common.fmt(v[f'{s}_T_mae'], v[f'{s}_T_mae_std'])} | {common.fmt(v[f'{s}_T_diag'], v[f'{s}_T_diag_std'])} |"
        for s in names
      ],
      "",
    ]
  for name, overrides, text in sections:
    body = text.rstrip().splitlines()[1:]
    blocks += [
      f"### Robustness study (ours, not the paper's setting): `{name}` = {overrides}",
      "",
      f"Files in `robustness/{name}/`.",
      "",
      *["##" + line if line.startswith("#") else line for line in body],
      "",
    ]
  notes = [
    "Last epoch = the evaluation after the final step (the paper's metric); best = the max over "
    f"evaluations every {config.eval_every} steps, chosen on the test set (optimistic).",
    "memorised = % of the corrupted training samples the model predicts with their noisy label.",
    "The paper's figures are CIFAR-10 with a ResNet-34 for 200 epochs; this is a CPU-sized analogue "
    "(8x8 digits, an MLP), so directions are compared, not accuracies.",
  ]
  common.write_table(
    exp_dir,
    "Noisy labels on digits: CE / Forward / Reweight / DWS / RENT (Bae et al., ICLR 2024)",
    intro=intro,
    blocks=blocks,
    notes=notes,
    digits=3,
  )
