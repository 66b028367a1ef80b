"""The tree draws the architecture, and the public API documents itself.

* Import rules (read from the source with ``ast``, function-level imports
  included): core knows no family, substrate or runtime; a family depends on
  core and substrates, never on another family; substrates depend on core;
  runtime depends on core; nothing in the library imports experiments or
  benchmarks.
* Every public function and class in the flat namespace has a docstring with
  ``Args:`` and ``Returns:`` sections (classes: ``Args:`` or ``Attributes:``),
  and every public function is fully type-annotated.
* The wheel ships ``jaxweights`` only, with its LICENSE and ``py.typed``.
"""

from __future__ import annotations

import ast
import inspect
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import jaxweights as jw

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "jaxweights"


def _layer(module: str) -> str:
  """``jaxweights.families.q_probe.probe`` -> ``families.q_probe``; core/substrates/runtime whole."""
  parts = module.split(".")
  if len(parts) < 2 or parts[0] != "jaxweights":
    return parts[0]
  if parts[1] == "families" and len(parts) > 2:
    return f"families.{parts[2]}"
  return parts[1]


def _imports(path: Path) -> set[str]:
  tree = ast.parse(path.read_text())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      if node.module in ("jaxweights", "jaxweights.families"):
        out.update(f"{node.module}.{a.name}" for a in node.names)
  return out


def _edges() -> dict[str, set[str]]:
  edges: dict[str, set[str]] = {}
  for path in LIB.rglob("*.py"):
    rel = path.relative_to(ROOT).with_suffix("")
    module = ".".join(rel.parts).removesuffix(".__init__")
    if module in ("jaxweights", "jaxweights.families"):
      continue  # the public faces re-export every layer
    src = _layer(module)
    for imported in _imports(path):
      if imported.split(".")[0] in ("jaxweights", "experiments", "benchmarks", "tests"):
        edges.setdefault(src, set()).add(_layer(imported))
  return edges


ALLOWED = {
  "core": {"core"},
  "substrates": {"core", "substrates"},
  "runtime": {"core", "runtime"},
}


def test_import_graph_follows_the_layers():
  edges = _edges()
  assert {"core", "substrates", "runtime"} <= set(edges), edges
  families = {s for s in edges if s.startswith("families.")}
  assert families == {
    f"families.{f}" for f in ("loss_based", "self_influence", "density_ratio", "noisy_labels", "q_probe")
  }
  bad = []
  for src, dsts in edges.items():
    allowed = ALLOWED.get(src, {"core", "substrates", src})
    bad += [f"{src} -> {d}" for d in sorted(dsts - allowed)]
  assert not bad, f"imports across layers: {bad}"


def test_the_layer_reader_sees_a_family_to_family_edge():
  # The check above must be able to fail: a family importing another is seen.
  assert _layer("jaxweights.families.q_probe.probe") == "families.q_probe"
  assert _layer("jaxweights.families.loss_based") == "families.loss_based"
  assert _layer("experiments.common") == "experiments"


def _public():
  for name in jw.__all__:
    obj = getattr(jw, name)
    if inspect.isfunction(obj) or inspect.isclass(obj):
      yield name, obj


def _params(fn) -> list[inspect.Parameter]:
  return [
    p
    for p in inspect.signature(fn).parameters.values()
    if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
  ]


def test_every_public_callable_documents_its_arguments_and_result():
  missing = []
  for name, obj in _public():
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj):
      init = obj.__init__ if "__init__" in vars(obj) else None
      takes = init is not None and _params(init)
      if takes and "Args:" not in doc and "Attributes:" not in doc:
        missing.append(f"{name}: Args/Attributes")
      if tuple in obj.__mro__ and "Attributes:" not in doc and "Args:" not in doc:
        missing.append(f"{name}: Attributes (NamedTuple fields)")
      continue
    if _params(obj) and "Args:" not in doc:
      missing.append(f"{name}: Args")
    if "Returns:" not in doc:
      missing.append(f"{name}: Returns")
  assert not missing, missing


def test_every_public_function_is_annotated():
  missing = []
  for name, obj in _public():
    if inspect.isclass(obj):
      continue
    sig = inspect.signature(obj)
    missing += [f"{name}({p.name})" for p in _params(obj) if p.annotation is inspect.Parameter.empty]
    if sig.return_annotation is inspect.Signature.empty:
      missing.append(f"{name} -> ?")
  assert not missing, missing


def test_naming_rule():
  # <method>_weights returns weights; <method>_weighting returns a Weighting.
  for name, obj in _public():
    if name.endswith("_weighting"):
      assert "Weighting" in str(inspect.signature(obj).return_annotation), name
    if name.endswith("_weights"):
      assert "Weighting" not in str(inspect.signature(obj).return_annotation), name


@pytest.mark.slow
def test_wheel_ships_the_library_only(tmp_path):
  # Built from a fresh copy: setuptools' build/ folder in the checkout could hold
  # stale modules from an earlier layout.
  src = tmp_path / "src"
  shutil.copytree(
    ROOT,
    src,
    ignore=shutil.ignore_patterns(
      ".venv", ".git", "build", "results", "bench_results", "site", "__pycache__", "*.egg-info"
    ),
  )
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "--no-deps",
      "--no-build-isolation",
      "-q",
      "-w",
      str(tmp_path),
      str(src),
    ],
    check=True,
  )
  (wheel,) = tmp_path.glob("jaxweights-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split("/")[0] for n in names}
  assert tops == {"jaxweights", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, tops
  assert "jaxweights/py.typed" in names
  assert any(n.endswith(("licenses/LICENSE", "/LICENSE")) for n in names)
