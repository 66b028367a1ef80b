"""Configurations of the linear-regression experiment, one module per config.

``quick`` is the demo (the paper's setting, a few seconds per run on a laptop
CPU); ``full`` adds seeds and steps (still CPU-sized: a linear model needs no
accelerator); ``smoke`` is the end-to-end test. Any field can be overridden on the
command line: ``python -m experiments.loss_linreg --config=quick --config.num_steps=300``.
"""

from experiments import common

get_config = common.config_getter("loss_linreg")
