"""Every ``python`` code block of the README and the docs site runs as written.

A page's blocks run in order in one namespace (a guide's later blocks build on
its earlier ones); the blocks carry their own ``assert``s.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _blocks(page: pathlib.Path) -> list[str]:
  return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


RUNNABLE = [p for p in PAGES if _blocks(p)]


def test_every_guide_has_a_runnable_example():
  guides = sorted((ROOT / "docs" / "guides").glob("*.md"))
  assert len(guides) == 5
  assert all(g in RUNNABLE for g in guides), [g.name for g in guides if g not in RUNNABLE]
  assert len(_blocks(ROOT / "README.md")) >= 2


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_runs(page):
  namespace = {}
  for i, block in enumerate(_blocks(page)):
    exec(compile(block, f"{page.relative_to(ROOT)} block {i}", "exec"), namespace)
  if "params" in namespace and isinstance(namespace["params"], dict) and "w" in namespace["params"]:
    # The README's hand-written loop really learns the regression weights.
    import numpy as np

    np.testing.assert_allclose(namespace["params"]["w"], [1.0, -2.0, 0.5], atol=1e-2)
  if "metrics" in namespace:
    assert namespace["metrics"]["update_skipped"] == 0
