"""The README's code blocks run as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
  assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
  namespace = {}
  exec(compile(BLOCKS[index], f"README block {index}", "exec"), namespace)
  if "params" in namespace and "w" in namespace["params"]:
    # The hand-written loop really learns the regression weights.
    import numpy as np
    np.testing.assert_allclose(namespace["params"]["w"], [1.0, -2.0, 0.5], atol=1e-2)
  if "metrics" in namespace:
    assert namespace["metrics"]["update_skipped"] == 0
