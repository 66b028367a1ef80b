"""Self-influence weighting (PRESENCE, Thakkar et al., EMNLP 2023) and its norm engine.

:mod:`~jaxweights.families.self_influence.grad_norms` computes per-sample
gradient norms (exact ghost norms, exact ``vmap``, ``jvp`` sketches);
:mod:`~jaxweights.families.self_influence.presence` turns them into weights and
into a train-step weighting with a one-backward-pass gradient.
"""

from jaxweights.families.self_influence import grad_norms
from jaxweights.families.self_influence.grad_norms import GradNorms, ghost_plan, per_sample_grad_norms
from jaxweights.families.self_influence.presence import (
  presence_weighting,
  presence_weights,
  self_influence_scores,
  tracin_self_influence,
  two_stage_tau,
)

__all__ = [
  "GradNorms",
  "ghost_plan",
  "grad_norms",
  "per_sample_grad_norms",
  "presence_weighting",
  "presence_weights",
  "self_influence_scores",
  "tracin_self_influence",
  "two_stage_tau",
]
