"""jaxweights: per-sample training weights for JAX and Flax NNX.

The public API is this flat namespace. The tree draws the architecture:

* :mod:`jaxweights.core`: the :class:`Weighting` contract and the composition
  layer (compiled, sharded train steps), normalisers, reductions, losses;
* :mod:`jaxweights.families`: one package or module per weighting family;
* :mod:`jaxweights.substrates`: models, adapters, diffusion, decoding, data;
* :mod:`jaxweights.runtime`: the loop, checkpoints, multi-process set-up.

Naming rule: ``<method>_weights(...)`` maps arrays to a ``[batch]`` weight
vector (pure, jit-able, under ``stop_gradient``); ``<method>_weighting(...)``
builds the :class:`Weighting` that :func:`make_train_step` composes.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

# Public modules, reachable as ``jw.<name>`` (implementations live in the tree).
from jaxweights.core import losses, normalize

# Core: the contract and the composition layer.
from jaxweights.core.contract import (
  GradientContext,
  GradientOutput,
  PrepareContext,
  Weighting,
  WeightInputs,
  stateless,
  uniform_weighting,
)
from jaxweights.core.losses import cross_entropy, squared_error, token_mean_cross_entropy
from jaxweights.core.normalize import effective_sample_size
from jaxweights.core.sharding import (
  BATCH_AXES,
  DEFAULT_RULES,
  bytes_per_device,
  make_mesh,
  place,
  state_shardings,
  tree_shardings,
)
from jaxweights.core.step import (
  LossOutput,
  TrainState,
  data_mesh,
  host_metrics,
  init_train_state,
  make_eval_step,
  make_train_step,
  replicate,
  shard_batch,
)
from jaxweights.families import density_ratio, loss_based, noisy_labels, q_probe, self_influence

# Families.
from jaxweights.families.density_ratio import (
  RatioModel,
  TimeDiscriminator,
  iw_dsm_weighting,
  ratio_from_prob,
  tiw_dsm_weighting,
  train_discriminator,
)
from jaxweights.families.loss_based import (
  extremes_weighting,
  extremes_weights,
  linupper_weighting,
  linupper_weights,
  quadratic_weighting,
  quadratic_weights,
  warmup_temperature,
)
from jaxweights.families.noisy_labels import (
  TransitionState,
  asymmetric_transition,
  classification_loss,
  corrupt_labels,
  dirichlet_weights,
  dws_weighting,
  estimate_transition_anchor,
  importance_weighting,
  importance_weights,
  rent_weighting,
  resampling_weights,
  symmetric_transition,
)
from jaxweights.families.q_probe import (
  HFCausalLMPolicy,
  PrecomputedEmbeddings,
  Probe,
  TransformerPolicy,
  qprobe_weights,
  train_probe,
)
from jaxweights.families.self_influence import (
  GradNorms,
  ghost_plan,
  grad_norms,
  per_sample_grad_norms,
  presence_weighting,
  presence_weights,
  self_influence_scores,
  tracin_self_influence,
  two_stage_tau,
)
from jaxweights.runtime import distributed

# Substrates and runtime.
from jaxweights.runtime.checkpoint import Checkpointer
from jaxweights.runtime.loop import JsonlLogger, read_jsonl, train_loop
from jaxweights.substrates import adapters, data, decoding, diffusion
from jaxweights.substrates.adapters import LinenModel, hf_causal_lm
from jaxweights.substrates.models import (
  MLP,
  Llama,
  LlamaConfig,
  TransformerConfig,
  TransformerLM,
  count_params,
)

try:
  __version__ = _version("jaxweights")
except PackageNotFoundError:  # imported from a source tree that was never installed
  __version__ = "0+unknown"

__all__ = [
  # modules
  "adapters",
  "data",
  "decoding",
  "density_ratio",
  "diffusion",
  "distributed",
  "grad_norms",
  "loss_based",
  "losses",
  "noisy_labels",
  "normalize",
  "q_probe",
  "self_influence",
  # core
  "GradientContext",
  "GradientOutput",
  "LossOutput",
  "PrepareContext",
  "TrainState",
  "WeightInputs",
  "Weighting",
  "BATCH_AXES",
  "DEFAULT_RULES",
  "bytes_per_device",
  "make_mesh",
  "place",
  "state_shardings",
  "tree_shardings",
  "cross_entropy",
  "data_mesh",
  "effective_sample_size",
  "host_metrics",
  "init_train_state",
  "make_eval_step",
  "make_train_step",
  "replicate",
  "shard_batch",
  "squared_error",
  "stateless",
  "token_mean_cross_entropy",
  "uniform_weighting",
  # loss-based
  "extremes_weighting",
  "extremes_weights",
  "linupper_weighting",
  "linupper_weights",
  "quadratic_weighting",
  "quadratic_weights",
  "warmup_temperature",
  # self-influence
  "GradNorms",
  "ghost_plan",
  "per_sample_grad_norms",
  "presence_weighting",
  "presence_weights",
  "self_influence_scores",
  "tracin_self_influence",
  "two_stage_tau",
  # density ratio
  "RatioModel",
  "TimeDiscriminator",
  "iw_dsm_weighting",
  "ratio_from_prob",
  "tiw_dsm_weighting",
  "train_discriminator",
  # noisy labels
  "TransitionState",
  "asymmetric_transition",
  "classification_loss",
  "corrupt_labels",
  "dirichlet_weights",
  "dws_weighting",
  "estimate_transition_anchor",
  "importance_weighting",
  "importance_weights",
  "rent_weighting",
  "resampling_weights",
  "symmetric_transition",
  # q-probe
  "HFCausalLMPolicy",
  "PrecomputedEmbeddings",
  "Probe",
  "TransformerPolicy",
  "qprobe_weights",
  "train_probe",
  # substrates and runtime
  "Checkpointer",
  "JsonlLogger",
  "LinenModel",
  "Llama",
  "LlamaConfig",
  "MLP",
  "TransformerConfig",
  "TransformerLM",
  "count_params",
  "hf_causal_lm",
  "read_jsonl",
  "train_loop",
]
