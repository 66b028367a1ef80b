"""Q-probe (Li et al., ICML 2024): a linear probe on embeddings reweights k candidates.

:mod:`~jaxweights.families.q_probe.probe` holds the math (the probe, its
selection weights and training objectives); :mod:`~.policies` the interface to a
base model and the stored-features ("API") mode; one module per base-model
adapter (:mod:`~.transformer_policy`, :mod:`~.hf_policy`).
"""

from jaxweights.families.q_probe.hf_policy import HFCausalLMPolicy
from jaxweights.families.q_probe.policies import Policy, PrecomputedEmbeddings, Tokens, pad_sequences
from jaxweights.families.q_probe.probe import (
  Probe,
  ProbeResult,
  bce_loss,
  bradley_terry_loss,
  expected_reward,
  hinge_loss,
  mse_loss,
  pg_groups,
  pg_loss,
  qprobe_weights,
  select,
  tilted_distribution,
  train_probe,
)
from jaxweights.families.q_probe.transformer_policy import TransformerPolicy

__all__ = [
  "HFCausalLMPolicy",
  "Policy",
  "PrecomputedEmbeddings",
  "Probe",
  "ProbeResult",
  "Tokens",
  "TransformerPolicy",
  "bce_loss",
  "bradley_terry_loss",
  "expected_reward",
  "hinge_loss",
  "mse_loss",
  "pad_sequences",
  "pg_groups",
  "pg_loss",
  "qprobe_weights",
  "select",
  "tilted_distribution",
  "train_probe",
]
