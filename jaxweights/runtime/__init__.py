"""Running a train step for many steps: the loop and its logs, checkpoints, and
multi-process set-up through ``jax.distributed``.
"""
