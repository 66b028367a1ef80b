"""The pod pipeline at toy size for the tests: a 2-block Llama on a (data 2, fsdp 2,
tensor 2) mesh of 8 (fake) devices with a sharded state."""

import ml_collections

from experiments.presence_lm.configs import smoke


def get_config() -> ml_collections.ConfigDict:
  config = smoke.get_config()
  config.name = "pod_smoke"
  config.seeds = (0,)
  config.methods = ("uniform", "presence")
  config.model_kind = "llama"
  config.model = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, tied=False)
  config.mesh = dict(data=2, fsdp=2, tensor=2)
  config.layers = None
  config.diagnostic = None
  return config
