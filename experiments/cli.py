"""The command line every experiment shares (the flax examples' shape).

``python -m experiments.<name>.main --config=quick --config.num_steps=200 --workdir=DIR``

* ``--config`` names one of the experiment's configs (a module
  ``experiments/<name>/configs/<config>.py`` with ``get_config()``) or is a path to
  any config file, optionally ``path.py:arg`` (``ml_collections.config_flags``).
  Default ``quick``.
* ``--config.<field>=<value>`` overrides any field, nested ones included
  (``--config.data.n_train=500``); an unknown field is an error, as is a value of
  the wrong type. The parsing is ``ml_collections``'s.
* ``--workdir`` is where the experiment writes (default ``results/<name>``);
  ``--out ROOT`` is the shorthand ``--workdir ROOT/<name>`` that
  :mod:`experiments.run_all` uses.
* The multi-process flags of :func:`jaxweights.distributed.add_arguments` start
  ``jax.distributed`` before anything touches a device. Every process runs the
  same program; only process 0 writes to the workdir (the others write to
  ``<workdir>/.process<k>``).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxweights import distributed as jw_distributed

RESULTS = "results"


def config_path(experiment: str, name: str) -> str:
  """The file of a named config (``quick``) or ``name`` itself when it is a path."""
  if "/" in name or name.split(":")[0].endswith(".py"):
    return name
  package = importlib.import_module(f"experiments.{experiment}.configs")
  path = Path(package.__file__).parent / f"{name}.py"
  if not path.exists():
    names = sorted(p.stem for p in path.parent.glob("*.py") if not p.stem.startswith("_"))
    raise ValueError(f"unknown config {name!r} of {experiment}; choose from {names} or give a path")
  return str(path)


def _split(argv: Sequence[str]) -> tuple[str, list[str], list[str]]:
  """``(config spec, --config.* overrides, everything else)`` from ``argv``."""
  spec, overrides, rest = "quick", [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg == "--config" and i + 1 < len(args):
      spec, i = args[i + 1], i + 2
      continue
    if arg.startswith("--config="):
      spec = arg.split("=", 1)[1]
    elif arg.startswith("--config."):
      if "=" not in arg and i + 1 < len(args) and not args[i + 1].startswith("--"):
        arg, i = f"{arg}={args[i + 1]}", i + 1
      overrides.append(arg)
    else:
      rest.append(arg)
    i += 1
  return spec, overrides, rest


def parse_config(experiment: str, argv: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config named (or pointed to) by ``--config`` with the ``--config.*`` overrides applied.

  Args:
    experiment: the package name under ``experiments/``.
    argv: command-line arguments; only ``--config`` and ``--config.*`` are read.

  Returns:
    A locked ``ConfigDict`` (setting a field that does not exist raises).
  """
  spec, overrides, _ = _split(argv)
  return _load(experiment, spec, overrides)


def _load(experiment: str, spec: str, overrides: list[str]) -> ml_collections.ConfigDict:
  values = flags.FlagValues()
  argv = ["main", f"--config={config_path(experiment, spec)}", *overrides]
  holder = config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
  try:
    values(argv)
  except (AttributeError, KeyError, TypeError, flags.Error) as e:
    raise ValueError(f"bad --config override among {overrides} for {experiment}: {e}") from e
  return holder.value


def main(
  experiment: str,
  train_and_evaluate: Callable[..., dict],
  argv: Sequence[str] | None = None,
) -> dict:
  """Parses the shared command line and runs ``train_and_evaluate(config, workdir)``.

  Args:
    experiment: the package name under ``experiments/``.
    train_and_evaluate: the experiment's ``(config, workdir) -> summary``.
    argv: arguments (default ``sys.argv[1:]``).

  Returns:
    The summary ``train_and_evaluate`` returned.
  """
  import sys  # pylint: disable=import-outside-toplevel

  argv = sys.argv[1:] if argv is None else list(argv)
  spec, overrides, rest = _split(argv)
  parser = argparse.ArgumentParser(
    prog=f"python -m experiments.{experiment}",
    description=f"{experiment}; also --config=NAME|PATH and --config.FIELD=VALUE.",
  )
  where = parser.add_mutually_exclusive_group()
  where.add_argument("--workdir", default=None, help=f"output folder (default {RESULTS}/{experiment})")
  where.add_argument("--out", default=None, help="results root: --workdir OUT/<experiment>")
  jw_distributed.add_arguments(parser)
  args = parser.parse_args(rest)
  config = _load(experiment, spec, overrides)
  workdir = Path(args.workdir or Path(args.out or RESULTS) / experiment)
  if jw_distributed.initialize_from_args(args) and not jw_distributed.is_main():
    workdir = workdir / f".process{jax.process_index()}"
  return train_and_evaluate(config, workdir)
