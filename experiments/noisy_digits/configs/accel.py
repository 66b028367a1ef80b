"""The accelerator run: the authors' full schedule (10 CE warm-up epochs + 200 epochs), 10 seeds.

Every method of ``full`` (estimated and true T, VolMinNet, the robustness studies) at
the paper's length: 112 warm-up steps + 2240 steps. Not run here (about 10x ``full``'s
CPU time); minutes per run on one GPU.
"""

import ml_collections

from experiments.noisy_digits.configs import full


def get_config() -> ml_collections.ConfigDict:
  config = full.get_config()
  config.name = "accel"
  config.seeds = tuple(range(10))
  # 112 warm-up steps (10 epochs) + 2240 steps (200 epochs), the authors' length.
  config.num_steps = 2352
  return config
