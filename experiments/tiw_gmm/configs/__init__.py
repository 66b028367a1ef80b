"""Configurations of the TIW-DSM 2-D Gaussian-mixture experiment, one module per config.

``quick`` is the demo (the headline setting at CPU scale), ``full`` adds seeds,
steps and the ablation / oracle rows, ``smoke`` is the end-to-end test. Any field
can be overridden: ``python -m experiments.tiw_gmm --config=quick --config.num_steps=500``.
"""

from experiments import common

get_config = common.config_getter("tiw_gmm")
