"""The TIW-DSM baselines on the composition layer, shared by ``tiw_gmm`` and ``tiw_digits``.

Every method trains the same score network (EDM preconditioning,
:class:`jaxweights.substrates.diffusion.EDMDiffusion`) with the same per-sample loss
(:func:`jaxweights.substrates.diffusion.dsm_loss_fn`), optimiser, initialisation, batch
order and noise stream (the noise is drawn in each weighting's ``prepare`` from
the step key, which the seed fixes); methods differ only in their training set
and their :class:`~jaxweights.Weighting`:

* ``dsm_ref``: plain DSM on the reference set only;
* ``dsm_obs``: plain DSM on ``D_obs = D_bias ∪ D_ref``;
* ``iw_dsm``: DSM on ``D_obs`` weighted by a time-independent ratio ``w(x_0)``
  (a discriminator trained at ``t = t_min`` only);
* ``tiw_dsm``: the paper's objective, weight ``w_t`` and target corrected by
  ``grad_x log w_t`` from the time-dependent discriminator;
* ``tiw_weight_only`` / ``tiw_correction_only``: the ablations;
* ``tiw_oracle`` (toy data only): TIW-DSM with the closed-form ratio, which
  separates the objective from the discriminator's error.

Ratios are to the training mixture: ``w = r / (pi r + 1 - pi)`` with ``pi =
|D_ref| / |D_obs|``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxweights
from experiments import common
from jaxweights import density_ratio as dr
from jaxweights import diffusion as df
from jaxweights.substrates.data import batch_indices

DESCRIPTIONS = {
  "dsm_ref": "DSM on D_ref only",
  "dsm_obs": "DSM on D_obs = D_bias ∪ D_ref",
  "iw_dsm": "DSM on D_obs, weight w(x_0) (time-independent discriminator)",
  "tiw_dsm": "TIW-DSM: weight w_t and target + grad log w_t",
  "tiw_weight_only": "ablation: weight w_t only",
  "tiw_correction_only": "ablation: target correction only",
  "tiw_oracle": "TIW-DSM with the closed-form ratio (oracle)",
}


def uses_reference_only(method: str) -> bool:
  return method == "dsm_ref"


def make_weighting(
  method: str,
  edm: df.EDMDiffusion,
  *,
  time_dependent: dr.RatioModel,
  time_independent: dr.RatioModel,
  oracle: dr.RatioModel | None,
  ref_fraction: float,
  t_range,
) -> jaxweights.Weighting:
  """The method's weighting (ratio models' params are its state)."""
  kw = dict(ref_fraction=ref_fraction)
  if method in ("dsm_ref", "dsm_obs"):
    return df.dsm_weighting(edm)
  if method == "iw_dsm":
    return dr.iw_dsm_weighting(time_independent, edm, **kw)
  if method == "tiw_dsm":
    return dr.tiw_dsm_weighting(time_dependent, edm, t_range=t_range, **kw)
  if method == "tiw_weight_only":
    return dr.tiw_dsm_weighting(time_dependent, edm, correction=False, **kw)
  if method == "tiw_correction_only":
    return dr.tiw_dsm_weighting(time_dependent, edm, weight=False, t_range=t_range, **kw)
  if method == "tiw_oracle":
    if oracle is None:
      raise ValueError("tiw_oracle needs a closed-form ratio model.")
    return dr.tiw_dsm_weighting(oracle, edm, t_range=t_range, **kw)
  raise ValueError(f"unknown method {method!r}; known: {sorted(DESCRIPTIONS)}")


def ratio_params_for(method: str, *, time_dependent, time_independent, oracle):
  """The (seed's) ratio-model parameters the method's weighting state holds."""
  if method in ("dsm_ref", "dsm_obs"):
    return ()
  if method == "iw_dsm":
    return time_independent.params
  if method == "tiw_oracle":
    return oracle.params
  return time_dependent.params


class ScoreTrainer:
  """One compiled step and evaluation per method, reused across seeds.

  Args:
    method: one of :data:`DESCRIPTIONS`.
    model_fn: ``model_fn(seed) -> nnx.Module`` (the score network).
    weighting: from :func:`make_weighting` (built with *template* ratio models;
      each seed's parameters are swapped into the state).
    edm: the parameterisation.
    learning_rate, batch_size: Adam's step size, batch size.
    eval_x: ``[N, ...]`` held-out unbiased samples for the held-out DSM loss.
  """

  def __init__(self, method, model_fn, weighting, edm, *, learning_rate, batch_size, eval_x, eval_seed=1234):
    self.method, self.model_fn, self.weighting, self.edm = method, model_fn, weighting, edm
    self.batch_size = batch_size
    self.tx = optax.adam(learning_rate)
    graphdef, _ = jaxweights.init_train_state(model_fn(0), self.tx, weighting)
    self.graphdef = graphdef
    self.step = jaxweights.make_train_step(graphdef, df.dsm_loss_fn(edm), self.tx, weighting)
    # A fixed noise draw on held-out unbiased data: the plain (unweighted) DSM
    # loss of p_data, the quantity TIW-DSM's Theorem 1 says it minimises.
    rng = np.random.default_rng(eval_seed)
    n = len(eval_x)
    sigma = np.exp(edm.p_mean + edm.p_std * rng.standard_normal(n)).astype(np.float32)
    self.eval_batch = {
      "x": jnp.asarray(eval_x, jnp.float32),
      "t": jnp.clip(edm.sde.t_from_edm_sigma(jnp.asarray(sigma)), edm.sde.t_min, 1.0),
      "sigma": jnp.asarray(sigma),
      "noise": jnp.asarray(rng.standard_normal(eval_x.shape).astype(np.float32)),
    }
    loss_fn = df.dsm_loss_fn(edm)

    @jax.jit
    def heldout(state, batch):
      model = nnx.merge(graphdef, state.params, state.model_vars)
      return jnp.mean(loss_fn(model, batch).loss)

    self._heldout = heldout
    self._samplers = {}

  def init(self, seed: int, ratio_params):
    _, state = jaxweights.init_train_state(self.model_fn(seed), self.tx, self.weighting, seed=seed)
    return state._replace(weighting_state=ratio_params)

  def heldout_dsm(self, state) -> float:
    return float(self._heldout(state, self.eval_batch))

  def train(
    self, state, x_train: np.ndarray, *, seed: int, num_steps: int, exp_dir, log_every: int, eval_every: int
  ):
    logger = common.run_logger(exp_dir, self.method, seed)
    logger.log({"step": 0, "heldout_dsm": self.heldout_dsm(state)})

    def batch_fn(i):
      idx = batch_indices(len(x_train), self.batch_size, seed=seed, step=i)
      return {"x": x_train[idx]}

    t0 = time.perf_counter()
    state, history = jaxweights.train_loop(
      self.step,
      state,
      batch_fn,
      num_steps,
      logger=logger,
      log_every=log_every,
      eval_fn=lambda s: {"heldout_dsm": self.heldout_dsm(s)},
      eval_every=eval_every,
      desc=f"{self.method}/{seed}",
      show_progress=False,
    )
    train = [r for r in history if "loss_mean" in r]
    tail = train[-max(1, len(train) // 10) :]
    return state, {
      "heldout_dsm": history[-1]["heldout_dsm"],
      "ess_fraction": float(np.mean([r["ess"] for r in tail])) / self.batch_size,
      "train_time_s": time.perf_counter() - t0,
    }

  def sample(self, state, n: int, *, seed: int, num_steps: int, sigma_max: float = 80.0) -> np.ndarray:
    """``n`` samples by Heun's probability-flow ODE (``2 num_steps - 1`` evaluations)."""
    shape = (n,) + tuple(np.shape(self.eval_batch["x"])[1:])
    cache_key = (shape, num_steps, sigma_max)
    if cache_key not in self._samplers:
      graphdef, edm = self.graphdef, self.edm

      @jax.jit
      def run(params, rest, key):
        fn = df.denoiser(edm, graphdef, params, rest)
        return df.heun_sampler(fn, key, shape, num_steps=num_steps, sigma_max=sigma_max)

      self._samplers[cache_key] = run
    key = jax.random.PRNGKey(10_000 + seed)
    return np.asarray(self._samplers[cache_key](state.params, state.model_vars, key))


def train_discriminators(
  x_ref,
  x_bias,
  *,
  disc_fn: Callable[[int], nnx.Module],
  seed: int,
  num_steps: int,
  batch_size: int,
  learning_rate: float,
  t_sampling: str = "importance",
):
  """The time-dependent and the time-independent (t = t_min) discriminators."""
  out = {}
  for name, ti in (("time_dependent", False), ("time_independent", True)):
    model, history = dr.train_discriminator(
      disc_fn(seed),
      x_ref,
      x_bias,
      num_steps=num_steps,
      batch_size=batch_size,
      learning_rate=learning_rate,
      t_sampling=t_sampling,
      time_independent=ti,
      seed=seed,
      log_every=max(1, num_steps // 10),
    )
    out[name] = (model, history)
  return out


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, *, num_projections: int = 256, seed: int = 0) -> float:
  """Sliced 2-Wasserstein distance between two equal-dimension point clouds.

  Random unit directions (fixed by ``seed``); each 1-D distance compares the
  sorted projections at matched quantiles (``min(len(a), len(b))`` of them).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  rng = np.random.default_rng(seed)
  dirs = rng.standard_normal((a.shape[1], num_projections))
  dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
  n = min(len(a), len(b))
  q = (np.arange(n) + 0.5) / n
  pa = np.quantile(a @ dirs, q, axis=0)
  pb = np.quantile(b @ dirs, q, axis=0)
  return float(np.sqrt(np.mean((pa - pb) ** 2)))


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
  """Fréchet distance between Gaussians fitted to two feature sets (FID's formula).

  ``eps I`` is added to both covariances (dead ReLU features make them singular).
  """
  from scipy import linalg

  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  mu_a, mu_b = a.mean(0), b.mean(0)
  eye = eps * np.eye(a.shape[1])
  ca, cb = np.cov(a, rowvar=False) + eye, np.cov(b, rowvar=False) + eye
  covmean = linalg.sqrtm(ca @ cb)
  covmean = np.real(covmean)
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(ca + cb - 2 * covmean))


def paired_verdict(per_seed, metric: str, method: str, baseline: str) -> str:
  """``method − baseline`` paired by seed: mean ± std and better/worse at 2 s.e."""
  if method not in per_seed or baseline not in per_seed:
    return ""
  d = np.array([m[metric] - b[metric] for m, b in zip(per_seed[method], per_seed[baseline])])
  n = len(d)
  mean, std = float(d.mean()), float(d.std(ddof=1)) if n > 1 else 0.0
  if n < 3:
    word = "too few seeds to tell"
  elif abs(mean) > 2 * std / np.sqrt(n):
    word = "lower" if mean < 0 else "higher"
  else:
    word = "no clear difference"
  return f"`{metric}` {method} − {baseline}: {mean:+.4g} ± {std:.2g} ({word})"
