"""One 8-GPU node (80 GB H100/A100 class): the pod model on mesh (1, 8, 1).

8 sequences of 2048 tokens per GPU (64 per step); 1.6 GB of train state per GPU.
``python -m experiments.loss_lm --config pod_gpu8`` (one process drives the 8
GPUs); under SLURM across nodes add ``--distributed auto`` and scale ``mesh``.
"""

import ml_collections

from experiments.loss_lm.configs import pod


def get_config() -> ml_collections.ConfigDict:
  config = pod.get_config()
  config.name = "pod_gpu8"
  config.mesh = dict(data=1, fsdp=8, tensor=1)
  config.batch_size = 64
  config.eval_batch_size = 64
  return config
