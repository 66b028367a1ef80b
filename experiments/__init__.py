"""Reproduction experiments for jaxweights, one package per experiment.

Each package ``experiments.<name>`` has the flax examples' shape: ``main.py`` (the
shared command line of :mod:`experiments.cli`), ``configs/`` (one module per
config, ``smoke``, ``quick``, ``full`` and more, each an ``ml_collections``
``ConfigDict`` whose every field can be overridden with ``--config.<field>=``),
``train.py`` with ``train_and_evaluate(config, workdir) -> summary`` and a
README.md (the paper's setting vs ours, the paper's figure next to ours, the
verdict, the command). It runs as ``python -m experiments.<name> --config=quick
[--config.num_steps=...] [--workdir DIR | --out ROOT]`` and writes
``summary.json``, ``claims.json`` (the paper's claims checked against our paired
deltas), ``table.md``, PNG plots and per-run JSON-lines logs (see
:mod:`experiments.common`). ``python -m experiments.run_all`` runs every registered
experiment and then ``python -m experiments.report``.

To add an experiment, add its package name to :data:`EXPERIMENTS`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXPERIMENTS: tuple[str, ...] = (
  "loss_linreg",  # loss-based reweighting, linear regression (Sow et al. Fig. 7)
  "loss_lm",  # loss-based reweighting, LM pretraining on a mixture of offline domains
  "presence_lm",  # PRESENCE self-influence reweighting, LM pretraining on the same mixture
  "noisy_digits",  # noisy labels on digits: Forward / Reweight / DWS / RENT (Bae et al.)
  "tiw_gmm",  # TIW-DSM, 2-D Gaussian mixture with biased mode proportions (Kim et al.)
  "tiw_digits",  # TIW-DSM, long-tailed 8x8 digits with a 5% balanced reference
  "qprobe_arith",  # Q-probe, reach-the-target expressions with an executed check (Li et al.)
)


def load(name: str) -> ModuleType:
  """The experiment package ``experiments.<name>`` (imported on demand)."""
  if name not in EXPERIMENTS:
    raise ValueError(f"unknown experiment {name!r}; registered: {EXPERIMENTS}")
  return importlib.import_module(f"experiments.{name}")
