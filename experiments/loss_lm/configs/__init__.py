"""Configurations of the LM-pretraining experiment, one module per config.

``quick`` (the demo) and ``full`` (5 seeds, a larger model) are the paper's
setting at CPU scale; ``accel`` is the accelerator-sized run; ``pod``,
``pod_gpu8`` and ``pod_smoke`` are the pod-scale pipeline (throughput and memory,
not pretraining runs); ``smoke`` is the end-to-end test. Any field can be
overridden: ``python -m experiments.loss_lm --config=quick --config.num_steps=200``.
"""

from experiments import common

get_config = common.config_getter("loss_lm")
