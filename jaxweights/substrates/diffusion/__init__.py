"""Diffusion substrate: VP-SDE and EDM perturbations, per-sample DSM, score nets, samplers.

Modules: :mod:`~.sde` (the SDE and parameterisations), :mod:`~.objectives`
(the DSM loss and the noise draw), :mod:`~.networks`, :mod:`~.samplers`,
:mod:`~.toy` (closed-form Gaussian mixtures).

Everything here is the plain (unweighted) machinery that TIW-DSM
(:mod:`jaxweights.families.density_ratio`) builds on. All functions are pure and jit-able.

Two coordinates for one noisy sample
------------------------------------
The VP-SDE (Song et al., 2021; beta_min 0.1, beta_max 20) perturbs a clean
``x0`` to ``x_t = alpha(t) x0 + sigma(t) z``. Dividing by ``alpha(t)`` gives the
EDM ("variance-exploding") coordinate ``x = x0 + s z`` with noise level
``s = sigma(t) / alpha(t) = sqrt(exp(int_0^t beta) - 1)`` (Karras et al., 2022).
Both score-model parameterisations below share that EDM coordinate:

* :class:`VPDiffusion`: epsilon prediction on ``x_t`` (loss weight
  ``lambda(t) = sigma(t)^2`` in score units), t uniform or importance-sampled.
* :class:`EDMDiffusion`: the EDM preconditioned denoiser ``D(x; s)``,
  ``s ~ LogNormal(P_mean, P_std)``, loss weight
  ``lambda(s) = (s^2 + sigma_d^2) / (s sigma_d)^2``, ``sigma_d = 0.5``.

A time-dependent discriminator always sees the VP sample ``x_t = alpha(t) x``
at VP time ``t`` (that is what it is trained on), whichever parameterisation
the score model uses.

The batch of a DSM step (the noise draw)
----------------------------------------
A DSM step needs a noise level and a Gaussian draw per sample, and TIW-DSM's
pre-pass must see *the same* noisy sample as the loss. The draw is therefore
part of the batch: a dict batch with

* ``"x"``: ``[B, ...]`` clean samples;
* ``"t"``: ``[B]`` VP times and ``"sigma"``: ``[B]`` the matching EDM levels;
* ``"noise"``: ``[B, ...]`` standard normal draws;
* optionally ``"score_correction"``: ``[B, ...]`` ``grad_x log w_t`` in the EDM
  coordinate, added to the regression target (see :func:`dsm_loss_fn`).

The draw is made on the device in a weighting's ``prepare`` pre-pass from the
step's ``ctx.key`` (:func:`perturb_batch`; :func:`dsm_weighting` is the plain DSM
step with that pre-pass). Each sample's draw is keyed by its *global* batch
index, so the same global batch gets the same draw on 1 device, under ``jit``
over 8 and under ``shard_map`` over 8. A batch that already carries ``t``,
``sigma`` and ``noise`` (drawn on the host, e.g. to share them between a plain
``weighting=None`` step and a TIW-DSM step in a benchmark) is left as it is.
"""

from jaxweights.substrates.diffusion.networks import NoiseEmbedding, ScoreMLP, ScoreUNet, sinusoidal_embedding
from jaxweights.substrates.diffusion.objectives import (
  CORRECTION_KEY,
  PERTURBATION_KEYS,
  check_perturbed_batch,
  draw_perturbation,
  dsm_loss_fn,
  dsm_weighting,
  global_batch_size,
  global_indices,
  perturb_batch,
)
from jaxweights.substrates.diffusion.samplers import (
  denoiser,
  euler_maruyama_sampler,
  heun_sampler,
  karras_sigmas,
  vp_score_fn,
)
from jaxweights.substrates.diffusion.sde import (
  T_SAMPLINGS,
  VPSDE,
  Diffusion,
  EDMDiffusion,
  VPDiffusion,
  expand_to,
)
from jaxweights.substrates.diffusion.toy import GaussianMixture

__all__ = [
  "CORRECTION_KEY",
  "Diffusion",
  "EDMDiffusion",
  "GaussianMixture",
  "NoiseEmbedding",
  "PERTURBATION_KEYS",
  "ScoreMLP",
  "ScoreUNet",
  "T_SAMPLINGS",
  "VPDiffusion",
  "VPSDE",
  "check_perturbed_batch",
  "denoiser",
  "draw_perturbation",
  "dsm_loss_fn",
  "dsm_weighting",
  "euler_maruyama_sampler",
  "expand_to",
  "global_batch_size",
  "global_indices",
  "heun_sampler",
  "karras_sigmas",
  "perturb_batch",
  "sinusoidal_embedding",
  "vp_score_fn",
]
