"""Configurations of the noisy-digits experiment, one module per config.

``quick`` is the demo (the paper's setting at CPU scale: its four noise columns,
the authors' schedule and asymmetric map, last-epoch accuracy with the estimated
T, long enough that CE memorises the noise); ``full`` adds seeds, epochs and the
robustness studies; ``smoke`` is the end-to-end test. Any field can be overridden:
``python -m experiments.noisy_digits --config=quick --config.num_steps=1120``.

Method names: ``ce`` (plain cross-entropy, no T) and ``<kind>_<T>`` with kind in
``forward``/``reweight``/``dws``/``rent`` and T ``est`` (the anchor-point
estimate from the warmed-up CE model, the paper's table) or ``true`` (the matrix
the noise was drawn from). ``ce`` comes first: the warm-up and the estimates
come from it. Noise settings: ``sym<percent>`` / ``asym<percent>``.
"""

from experiments import common

get_config = common.config_getter("noisy_digits")
