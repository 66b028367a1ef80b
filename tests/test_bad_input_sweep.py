"""A hypothesis sweep over the public weight API with bad inputs.

Every call must either raise ValueError/TypeError with a message that names the
offending argument, or return finite, documented weights (non-negative, summing
to 1 over valid entries, or all 0 when nothing is valid). The test counts the
cases tried and fails on the first call that does neither.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxweights as jw
from jaxweights import noisy_labels as nl
from jaxweights import normalize
from jaxweights import q_probe as qp

SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, -1e30, 1e-30, 3.4e38, -3.4e38, 1e-40]
DTYPES = [np.float32, np.float16, jnp.bfloat16, np.int32, np.float64]
TRIED = collections.Counter()


@st.composite
def bad_arrays(draw, max_rank=3):
  rank = draw(st.integers(0, max_rank))
  shape = tuple(draw(st.lists(st.integers(0, 5), min_size=rank, max_size=rank)))
  dtype = draw(st.sampled_from(DTYPES))
  values = draw(
    st.lists(
      st.one_of(st.sampled_from(SPECIAL), st.floats(-10, 10)),
      min_size=int(np.prod(shape)),
      max_size=int(np.prod(shape)),
    )
  )
  arr = np.array(values, np.float64).reshape(shape).astype(np.float32)
  with np.errstate(invalid="ignore", over="ignore"):
    if np.issubdtype(np.dtype(dtype) if dtype is not jnp.bfloat16 else np.float32, np.integer):
      arr = np.nan_to_num(arr, posinf=7, neginf=-7).clip(-100, 100).astype(np.int32)
    else:
      arr = jnp.asarray(arr, dtype=dtype if dtype is not np.float64 else np.float32)
  return arr


hyper = st.one_of(st.sampled_from([0.0, -1.0, np.nan, np.inf, 1e-12, 1e12]), st.floats(0.01, 10))


def check(name, call, arg_names, *, sums_to_one=True, propagates=(), allow_inf=False):
  """``propagates``: inputs whose NaN/inf may legitimately reach the output (the
  per-sample loss helpers: documented; the train step masks such samples)."""
  TRIED[name] += 1
  try:
    out = call()
  except (ValueError, TypeError) as error:
    msg = str(error).lower()
    assert any(a in msg for a in arg_names), f"{name}: unclear error {error!r}"
    return
  out = np.asarray(jax.device_get(out), np.float64)
  if any(not np.isfinite(np.asarray(p, np.float32)).all() for p in propagates):
    return
  if allow_inf:  # a per-sample loss may overflow to inf (masked by the train step), never NaN
    assert not np.isnan(out).any(), f"{name}: NaN output {out}"
    return
  assert np.isfinite(out).all(), f"{name}: non-finite output {out}"
  if sums_to_one:
    assert np.all(out >= 0), f"{name}: negative weights {out}"
    total = out.sum(axis=-1) if out.ndim > 1 else out.sum()
    assert np.all(np.isclose(total, 1.0, atol=1e-3) | np.isclose(total, 0.0)), f"{name}: sum {total}"


WEIGHT_ARGS = [
  "losses",
  "scores",
  "w",
  "mask",
  "temperature",
  "delta",
  "strategy",
  "tau",
  "floating",
  "rank-1",
  "empty",
  "shape",
]


@settings(max_examples=80)
@given(bad_arrays(), st.one_of(st.none(), bad_arrays()), hyper, st.sampled_from(tuple(jw.loss_based.WEIGHTS)))
def test_loss_based_and_normalisers(x, mask, r, strategy):
  m = None if mask is None else mask
  check("loss_weights", lambda: jw.loss_based.WEIGHTS[strategy](x, r=float(r), mask=m), WEIGHT_ARGS)
  check("loss_weights/delta", lambda: jw.loss_based.WEIGHTS[strategy](x, delta=float(r)), WEIGHT_ARGS)
  check("softmax", lambda: normalize.softmax(x, m, temperature=float(r)), WEIGHT_ARGS)
  check("sum_to_one", lambda: normalize.sum_to_one(x, m), WEIGHT_ARGS, sums_to_one=False)
  check("minmax", lambda: normalize.minmax(x, m), WEIGHT_ARGS, sums_to_one=False)
  check("zscore", lambda: normalize.zscore(x, m), WEIGHT_ARGS, sums_to_one=False)
  check("presence_weights", lambda: jw.presence_weights(x, tau=float(r), mask=m), WEIGHT_ARGS)
  check("reweight", lambda: nl.reweight(x, m), WEIGHT_ARGS)
  check(
    "resampling",
    lambda: nl.resampling_weights(jax.random.key(0), x, num_draws=8, mask=m),
    WEIGHT_ARGS + ["num_draws"],
  )
  check(
    "dirichlet",
    lambda: nl.dirichlet_weights(jax.random.key(0), x, alpha=float(r), num_draws=4, mask=m),
    WEIGHT_ARGS + ["alpha"],
  )


@settings(max_examples=80)
@given(bad_arrays(), bad_arrays(), bad_arrays(), hyper)
def test_classification_and_probe_api(a, b, c, beta):
  names = [
    "probs",
    "labels",
    "t ",
    "t has",
    "shape",
    "q",
    "k >=",
    "beta",
    "rewards",
    "mask",
    "logits",
    "targets",
    "predictions",
    "integer",
    "int",
    "dtype",
  ]
  check(
    "importance_weights", lambda: nl.importance_weights(a, b, c), names, sums_to_one=False, propagates=(a, c)
  )
  check(
    "forward_corrected_ce",
    lambda: nl.forward_corrected_ce(a, b, c),
    names,
    sums_to_one=False,
    propagates=(a, c),
    allow_inf=True,
  )
  check(
    "volmin_losses",
    lambda: nl.volmin_losses(a, b, c, lam=float(beta)),
    names + ["lam"],
    sums_to_one=False,
    propagates=(a, c),
    allow_inf=True,
  )
  check("qprobe_weights", lambda: qp.qprobe_weights(a, float(beta), None), names)
  check(
    "expected_reward",
    lambda: qp.expected_reward(a, b, float(beta)),
    names,
    sums_to_one=False,
    propagates=(b,),
  )
  check(
    "token_mean_ce",
    lambda: jw.token_mean_cross_entropy(a, b, None)[0],
    names,
    sums_to_one=False,
    propagates=(a,),
    allow_inf=True,
  )
  check(
    "cross_entropy", lambda: jw.cross_entropy(a, b), names, sums_to_one=False, propagates=(a,), allow_inf=True
  )
  check(
    "squared_error",
    lambda: jw.squared_error(a, b),
    names,
    sums_to_one=False,
    propagates=(a, b),
    allow_inf=True,
  )


WRAPS = {
  "python": float,
  "numpy": np.float32,
  "jax": lambda v: jnp.asarray(v, jnp.float32),
}


def _with(kind, fn, value):
  """``fn(value)`` with the hyper-parameter as a Python/numpy/jax scalar, or traced."""
  if kind == "traced":
    return jax.jit(fn)(jnp.asarray(value, jnp.float32))
  return fn(WRAPS[kind](value))


@settings(max_examples=30)
@given(
  bad_arrays(),
  hyper,
  st.sampled_from(["python", "numpy", "jax", "traced"]),
  st.sampled_from(tuple(jw.loss_based.WEIGHTS)),
)
def test_hyperparameters_of_every_type(x, value, kind, strategy):
  """numpy and jax scalars are checked like Python numbers; a traced invalid value
  gives the documented safe weights (finite, summing to 1), never NaN."""
  names = WEIGHT_ARGS + ["beta", "alpha"]
  check(
    f"loss_weights/r[{kind}]",
    lambda: _with(kind, lambda r: jw.loss_based.WEIGHTS[strategy](x, r=r), value),
    names,
  )
  check(
    f"loss_weights/delta[{kind}]",
    lambda: _with(kind, lambda d: jw.loss_based.WEIGHTS[strategy](x, delta=d), value),
    names,
  )
  check(
    f"presence_weights/tau[{kind}]",
    lambda: _with(kind, lambda t: jw.presence_weights(x, tau=t), value),
    names,
  )
  check(f"qprobe_weights/beta[{kind}]", lambda: _with(kind, lambda b: qp.qprobe_weights(x, b), value), names)
  if kind != "traced":  # alpha sets the draws' shapes: concrete only (a traced alpha raises)
    check(
      f"dirichlet/alpha[{kind}]",
      lambda: nl.dirichlet_weights(jax.random.key(0), x, alpha=WRAPS[kind](value), num_draws=3),
      names + ["num_draws"],
    )


def test_report_counts():
  # Runs last in this file: the sweep really tried many cases of every function.
  assert sum(TRIED.values()) >= 1200, TRIED
  print(f"\nbad-input sweep: {sum(TRIED.values())} calls over {len(TRIED)} functions: {dict(TRIED)}")
