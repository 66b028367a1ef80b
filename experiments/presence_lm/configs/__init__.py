"""Configurations of the PRESENCE experiment, one module per config.

``quick`` (the demo) and ``full`` are the paper's setting at CPU scale, with the
injected-noise study as a labelled diagnostic; ``accel`` is the accelerator-sized
run; ``pod`` and ``pod_smoke`` are the pod-scale pipeline; ``smoke`` is the
end-to-end test. ``python -m experiments.presence_lm --config=quick
--config.switch_fraction=0.2`` overrides any field.
"""

from experiments import common

# method -> (tau: "two_stage" | "reversed" | number, microbatches: None | "config")
METHODS = {
  "uniform": None,
  "presence": ("two_stage", None),  # the paper's definition: weights over samples
  "presence_mb": ("two_stage", "config"),  # what the paper ran: weights over microbatches
  "direct_mb": (1.0, "config"),  # the paper's ablations, at microbatch level
  "inverse_mb": (-1.0, "config"),
  "reversed_mb": ("reversed", "config"),
  "direct": (1.0, None),
  "inverse": (-1.0, None),
}

get_config = common.config_getter("presence_lm")
