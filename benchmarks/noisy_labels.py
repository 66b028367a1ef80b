"""Benchmark cases for transition-matrix weighting: DWS and RENT (Bae et al., ICLR 2024).

The plain step is :func:`jaxweights.make_train_step` with ``weighting=None`` and
the SAME loss, :func:`jaxweights.families.noisy_labels.classification_loss` (whose aux
carries the softmax the weightings read), on the same MLP, batch and optimiser
(Adam 1e-3, the authors' optimiser); the weighted steps differ only in their
:func:`~jaxweights.dws_weighting` and its siblings.

* ``noisy_labels/step_b256``: MLP 64 -> 256 -> 256 -> 10, batch 256 (digits-sized
  inputs, the experiment's model family at benchmark width).
* ``noisy_labels/step_b1024``: the same MLP, batch 1024.
* ``noisy_labels/step_b256_wide``: batch 256 on MLP 64 -> 2048 -> 2048 -> 10
  (4.3M parameters).

Targets (from the issue): RENT (N = 1) and DWS (alpha 10, M = batch size) at
<= 1.05x the plain step's time and peak memory. Reweight (the deterministic
weights) and Forward (the corrected loss, uniform weights) are shown for
contrast, without targets. Every weighting does O(B) work on top of the forward
and backward pass except DWS, which draws ``M x B`` Gamma variates: O(B^2) at
its default M = B, against the MLP's O(B x params) step. RENT draws its
``N B`` indices by inverse-CDF lookup (``N B`` uniforms and a binary search),
O(N B log B).

DWS's floor on a CPU: an exact Gamma variate needs at least two uniforms per
accepted proposal (see :func:`jaxweights.families.noisy_labels.log_gamma`); threefry
makes them at ~6 ns each on this project's CPU, so 65k variates (M = B = 256)
cost >= 0.8 ms of random bits alone against a ~1.4 ms plain step. The 1.05x
target is reachable only where the step is ~20x the sampling cost: see the DWS
rows of ``python -m benchmarks.family_curves`` (ratio vs model width).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxweights
from benchmarks.harness import Case, Setup, measure_case
from jaxweights import noisy_labels as nl

CLASSES = 10
IN_FEATURES = 64
LEARNING_RATE = 1e-3
NOISE_RATE = 0.5
DWS_ALPHA = 10.0
TARGETED = ("rent", "dws")


def _forward_loss(T):
  def loss_fn(model, batch):
    return jaxweights.LossOutput(nl.forward_corrected_ce(model(batch["x"]), batch["y"], T))

  return loss_fn


def build(
  batch_size: int, hidden: tuple[int, ...], methods: tuple[str, ...] = ("rent", "dws", "reweight", "forward")
) -> Setup:
  """The plain step and the ``methods``' steps on one MLP and batch."""
  model = jaxweights.MLP(IN_FEATURES, hidden, CLASSES, rngs=nnx.Rngs(0))
  n_params = jaxweights.count_params(model)
  tx = optax.adam(LEARNING_RATE)
  graphdef, state = jaxweights.init_train_state(model, tx)
  T = nl.symmetric_transition(CLASSES, NOISE_RATE)
  loss_fn = nl.classification_loss()
  plain = jaxweights.make_train_step(graphdef, loss_fn, tx, weighting=None)
  weightings = {
    "rent": nl.rent_weighting(T, resample_factor=1),
    "dws": nl.dws_weighting(T, alpha=DWS_ALPHA, num_draws=batch_size),
    "reweight": nl.importance_weighting(T),
  }
  weighted, states = {}, {}
  for method, weighting in weightings.items():
    weighted[method] = jaxweights.make_train_step(graphdef, loss_fn, tx, weighting)
    # Same params and optimiser state; only the weighting state (T) differs.
    states[method] = state._replace(weighting_state=weighting.init())
  weighted["forward"] = jaxweights.make_train_step(graphdef, _forward_loss(T), tx, None)
  weighted = {m: weighted[m] for m in methods}
  states = {m: states[m] for m in methods if m in states}
  rng = np.random.default_rng(0)
  batch = {
    "x": jnp.asarray(rng.random((batch_size, IN_FEATURES), np.float32)),
    "y": jnp.asarray(rng.integers(0, CLASSES, (batch_size,), dtype=np.int32)),
  }
  sizes = "->".join(str(s) for s in (IN_FEATURES, *hidden, CLASSES))
  return Setup(
    plain,
    weighted,
    state,
    batch,
    f"MLP {sizes} ({n_params / 1e3:.1f}k params)",
    f"{batch_size} samples",
    weighted_states=states,
  )


NOTES = {
  "rent": "N=1: N·B indices by inverse-CDF lookup",
  "dws": "alpha 10, M=B draws: M·B log-gamma variates",
  "reweight": "contrast: deterministic w/Σw",
  "forward": "contrast: Forward-corrected loss, uniform weights",
}


def _with_notes(case: Case, settings, quick: bool) -> list[dict]:
  rows = measure_case(dataclasses.replace(case, measure=None), settings, quick=quick)
  for row in rows:
    row["note"] = NOTES.get(row["method"])
  return rows


def _case(
  name: str, batch_size: int, quick_batch: int, methods: tuple[str, ...], hidden: tuple[int, ...] = (256, 256)
) -> Case:
  def build_case(quick: bool) -> Setup:
    # quick: a narrow MLP and a small batch (a unit test checks the rows' schema).
    if quick:
      return build(quick_batch, (64,), methods)
    return build(batch_size, hidden, methods)

  return Case(
    name,
    build_case,
    target_time_ratio=1.05,
    target_memory_ratio=1.05,
    target_methods=TARGETED,
    measure=_with_notes,
  )


CASES: list[Case] = [
  _case("noisy_labels/step_b256", 256, 32, ("rent", "dws", "reweight", "forward")),
  _case("noisy_labels/step_b1024", 1024, 64, ("rent", "dws", "reweight", "forward")),
  # The same batch on a 4.3M-parameter MLP (hidden 2048 x 2): DWS's M x B
  # sampling is the same fixed cost, now small against the step.
  _case("noisy_labels/step_b256_wide", 256, 32, ("rent", "dws", "reweight", "forward"), hidden=(2048, 2048)),
]
