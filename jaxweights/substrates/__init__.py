"""What the families run on: models, adapters for models we did not write,
diffusion, LM decoding and datasets. Substrates depend on :mod:`jaxweights.core`
at most, never on a family.
"""
