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
  separates the objective from the discriminator's error;
* ``authors_code`` (ablation): what the authors' public code computes, taken
  literally, with the same time-dependent discriminator: ``w = 2 d``, the target
  correction ``-sigma^2 grad_x d`` (sign and function differ from the paper's
  ``+sigma^2 grad_x log w``) and the per-sample weights collapsed by a broadcast
  into one batch factor ``sum_j 2 d_j`` (every sample weighted alike). It lives
  here, never in the library (:func:`authors_code_weighting`).

Ratios are to the training mixture: ``w = r / (pi r + 1 - pi)`` with ``pi =
|D_ref| / |D_obs|``.
"""

from __future__ import annotations

import functools
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
from jaxweights.core import normalize
from jaxweights.substrates.data import batch_indices

DESCRIPTIONS = {
  "dsm_ref": "DSM on D_ref only",
  "dsm_obs": "DSM on D_obs = D_bias ∪ D_ref",
  "iw_dsm": "DSM on D_obs, weight w(x_0) (time-independent discriminator)",
  "tiw_dsm": "TIW-DSM: weight w_t and target + grad log w_t",
  "tiw_weight_only": "ablation: weight w_t only",
  "tiw_correction_only": "ablation: target correction only",
  "tiw_oracle": "TIW-DSM with the closed-form ratio (oracle)",
  "authors_code": "ablation: the authors' code literally (w = 2d, correction −σ²∇d, weights collapsed)",
}
#: The batch key of the authors' collapsed batch factor (``mean_j 2 d_j``).
BATCH_FACTOR_KEY = "authors_batch_factor"


def authors_code_weighting(ratio_model: dr.RatioModel, edm: df.EDMDiffusion) -> jaxweights.Weighting:
  """The authors' public TIW-DSM step, taken literally (an ablation, not the paper's objective).

  With ``d = sigmoid(logits)`` of the time-dependent discriminator at the noisy
  sample (EDM coordinate ``x = x_0 + s n``, the discriminator sees ``alpha(t) x``):

  * the score correction is ``-grad_x d`` (the regression target becomes
    ``x_0 - s^2 grad_x d``) instead of ``+grad_x log w``;
  * the weight is ``w = 2 d`` (the mixture formula for ``pi = 1/2``, while the
    score data have ``pi`` of a few percent);
  * a broadcast of ``[B, 1, 1, 1]`` weights against the ``[B, C, H, W]`` loss
    collapses the per-sample weights into one factor ``sum_j 2 d_j``: every
    sample gets the same weight. Here: uniform weights, and the loss of the batch
    is multiplied by ``mean_j 2 d_j`` in :func:`authors_code_loss_fn` (the
    constant ``B`` in between is immaterial under Adam).

  Args:
    ratio_model: the frozen time-dependent discriminator.
    edm: the score model's parameterisation.

  Returns:
    A :class:`~jaxweights.Weighting` (state: the discriminator's parameters)
    whose ``prepare`` adds the noise draw, ``"score_correction"`` and the batch
    factor, and whose ``update`` returns uniform weights.
  """
  sde = edm.sde

  def prepare(ctx):
    batch = df.perturb_batch(edm, ctx.batch, ctx.key, axis_name=ctx.axis_name)
    x = batch["x"] + df.expand_to(batch["sigma"], batch["x"]) * batch["noise"]
    t = batch["t"]
    scale = df.expand_to(sde.alpha(t), x)

    def prob(z):
      return jax.nn.sigmoid(ratio_model.apply(ctx.state, scale * z, t))

    d, vjp = jax.vjp(prob, x)
    (grad_d,) = vjp(jnp.ones_like(d))
    return {
      **batch,
      df.CORRECTION_KEY: jax.lax.stop_gradient(-grad_d),
      BATCH_FACTOR_KEY: jax.lax.stop_gradient(jnp.full_like(d, jnp.mean(2.0 * d))),
    }

  def update(inputs, state):
    return normalize.uniform(inputs.mask, axis_name=inputs.axis_name), state

  return jaxweights.Weighting(init=lambda: ratio_model.params, update=update, prepare=prepare)


def authors_code_loss_fn(edm: df.EDMDiffusion):
  """The DSM loss times the authors' collapsed batch factor ``mean_j 2 d_j`` (stop-gradient)."""
  base = df.dsm_loss_fn(edm)

  def loss_fn(model, batch):
    out = base(model, batch)
    return out._replace(loss=out.loss * jax.lax.stop_gradient(batch[BATCH_FACTOR_KEY]))

  return loss_fn


def loss_fn_for(method: str, edm: df.EDMDiffusion):
  """The per-sample loss of a method (the authors' row scales it by its batch factor)."""
  return authors_code_loss_fn(edm) if method == "authors_code" else df.dsm_loss_fn(edm)


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
  if method == "authors_code":
    return authors_code_weighting(time_dependent, edm)
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
    self.step = jaxweights.make_train_step(graphdef, loss_fn_for(method, edm), self.tx, weighting)
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
    self._heldout = _heldout_fn(graphdef, edm)

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
    run = _sampler_fn(self.graphdef, self.edm, shape, num_steps, sigma_max)
    key = jax.random.PRNGKey(10_000 + seed)
    return np.asarray(run(state.params, state.model_vars, key))


@functools.lru_cache(maxsize=32)
def _heldout_fn(graphdef, edm):
  """The held-out plain DSM loss, compiled once per architecture (methods share it)."""
  loss_fn = df.dsm_loss_fn(edm)

  @jax.jit
  def heldout(state, batch):
    model = nnx.merge(graphdef, state.params, state.model_vars)
    return jnp.mean(loss_fn(model, batch).loss)

  return heldout


@functools.lru_cache(maxsize=32)
def _sampler_fn(graphdef, edm, shape, num_steps, sigma_max):
  """Heun's sampler, compiled once per architecture and shape (methods share it)."""

  @jax.jit
  def run(params, rest, key):
    fn = df.denoiser(edm, graphdef, params, rest)
    return df.heun_sampler(fn, key, shape, num_steps=num_steps, sigma_max=sigma_max)

  return run


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
  pa, pb = _quantiles(a @ dirs, q), _quantiles(b @ dirs, q)
  return float(np.sqrt(np.mean((pa - pb) ** 2)))


def _quantiles(x: np.ndarray, q: np.ndarray) -> np.ndarray:
  """``np.quantile(x, q, axis=0)`` (linear interpolation) by one sort: fast for many ``q``."""
  s = np.sort(x, axis=0)
  pos = q * (len(s) - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, len(s) - 1)
  frac = (pos - lo)[:, None]
  return s[lo] * (1.0 - frac) + s[hi] * frac


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
