"""Test configuration: 8 fake CPU devices and loud numerics.

XLA_FLAGS must be set before jax is imported anywhere, so this runs first.
"""

import os

# The suite compiles hundreds of tiny programs whose run time is negligible: the
# CPU backend's cheaper optimisation level cuts about a fifth of the suite's time
# (results are checked to tolerances, never against the optimised program's bits).
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "")
  + " --xla_force_host_platform_device_count=8"
  + " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

# Silent broadcasting bugs fail loudly (as equinox's tests do).
jax.config.update("jax_numpy_rank_promotion", "raise")

import hypothesis  # noqa: E402

hypothesis.settings.register_profile("default", deadline=None, max_examples=40, print_blob=True)
hypothesis.settings.load_profile("default")
