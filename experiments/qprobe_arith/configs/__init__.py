"""Configurations of the Q-probe experiment, one module per config.

``quick`` is the demo (the authors' recipe at CPU scale), ``full`` the longer
CPU run behind RESULTS.md, ``smoke`` the end-to-end test. Any field can be
overridden: ``python -m experiments.qprobe_arith --config=quick --config.probe.learning_rate=1e-3``.
"""

from experiments import common

get_config = common.config_getter("qprobe_arith")
