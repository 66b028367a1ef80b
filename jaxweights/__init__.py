"""jaxweights: per-sample training weights for JAX and Flax NNX.

The public API is this flat namespace; implementations live in submodules.
"""

from jaxweights import (
    adapters,
    density_ratio,
    diffusion,
    distributed,
    grad_norms,
    loss_based,
    noisy_labels,
    normalize,
    q_probe,
    self_influence,
)
from jaxweights.checkpoint import Checkpointer
from jaxweights.grad_norms import GradNorms, per_sample_grad_norms
from jaxweights.loss_based import (
    STRATEGIES,
    extremes,
    linupper,
    loss_reweighting,
    loss_weights,
    quadratic,
    strategy_scores,
    warmup_temperature,
)
from jaxweights.loop import JsonlLogger, read_jsonl, train_loop
from jaxweights.losses import cross_entropy, squared_error, token_mean_cross_entropy
from jaxweights.models import MLP, Llama, LlamaConfig, TransformerConfig, TransformerLM, count_params
from jaxweights.normalize import effective_sample_size
from jaxweights.self_influence import presence, presence_weights, tracin_self_influence, two_stage_tau
from jaxweights.train import (
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
from jaxweights.weighting import (
    GradientContext,
    GradientOutput,
    PrepareContext,
    WeightInputs,
    Weighting,
    stateless,
    uniform_weighting,
)

__version__ = "0.1.0"

__all__ = [
    "Checkpointer",
    "adapters",
    "GradNorms",
    "GradientContext",
    "GradientOutput",
    "JsonlLogger",
    "LossOutput",
    "Llama",
    "LlamaConfig",
    "MLP",
    "PrepareContext",
    "STRATEGIES",
    "TrainState",
    "TransformerConfig",
    "TransformerLM",
    "WeightInputs",
    "Weighting",
    "count_params",
    "cross_entropy",
    "data_mesh",
    "density_ratio",
    "diffusion",
    "distributed",
    "effective_sample_size",
    "extremes",
    "grad_norms",
    "host_metrics",
    "init_train_state",
    "linupper",
    "loss_based",
    "loss_reweighting",
    "loss_weights",
    "make_eval_step",
    "make_train_step",
    "noisy_labels",
    "normalize",
    "per_sample_grad_norms",
    "q_probe",
    "presence",
    "presence_weights",
    "quadratic",
    "read_jsonl",
    "replicate",
    "self_influence",
    "shard_batch",
    "squared_error",
    "stateless",
    "strategy_scores",
    "token_mean_cross_entropy",
    "tracin_self_influence",
    "train_loop",
    "two_stage_tau",
    "uniform_weighting",
    "warmup_temperature",
]
