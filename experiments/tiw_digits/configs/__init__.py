"""Configurations of the TIW-DSM long-tailed digits experiment, one module per config.

``quick`` is the demo, ``full`` the 5-seed headline run with the ablation rows,
``smoke`` the end-to-end test. Any field can be overridden:
``python -m experiments.tiw_digits --config=quick --config.num_steps=1000``.
"""

from experiments import common

get_config = common.config_getter("tiw_digits")
