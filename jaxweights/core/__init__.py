"""The contract and the composition layer; it knows no family.

* :mod:`~jaxweights.core.contract`: :class:`~jaxweights.Weighting` and what the
  step passes to it.
* :mod:`~jaxweights.core.step`: the compiled, sharded train and eval steps.
* :mod:`~jaxweights.core.normalize`: normalisers over the global batch.
* :mod:`~jaxweights.core.reductions`: global-batch reductions, masks and
  argument checks shared by every weight function.
* :mod:`~jaxweights.core.losses`: per-sample losses.
"""
