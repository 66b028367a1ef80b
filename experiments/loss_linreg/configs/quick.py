"""The demo: the paper's setting, 4 strategies x 5 seeds x 600 SGD steps; ~40 s on 2 CPU cores.

The paper's convergence analysis (Sow et al., ICLR 2025, Sec. 5 / Fig. 7) assumes a
convex problem under interpolation, so the data is a consistent linear model (no
label noise) with a share of easy, redundant rows. Label-noise outliers, a setting
the paper does not study, are our robustness study (``robustness``).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      name="quick",
      methods=("uniform", "linupper", "quadratic", "extremes"),
      seeds=(0, 1, 2, 3, 4),
      # Data (jaxweights.substrates.data.linear_regression_data). The headline is
      # the paper's interpolation regime: y = x @ w_true exactly, 40% easy
      # (redundant, quickly fitted) rows, no noisy rows.
      data=dict(
        n_train=2000,
        n_test=1000,
        dim=20,
        easy_fraction=0.4,
        noisy_fraction=0.0,
        noise_std=0.0,
        outlier_std=3.0,
      ),
      # The paper's linear-regression study uses r = 1 and delta = 1.
      r=1.0,
      delta=1.0,
      batch_size=32,
      learning_rate=0.02,
      num_steps=600,
      eval_every=5,
      # Two convergence-speed thresholds on the test-MSE curve, both fixed in
      # advance: "transient" = transient_fraction x the mean initial test MSE
      # (the speed of the descent), "asymptotic" = threshold_factor x the best
      # (lowest) mean final test MSE over methods (the approach to the noise
      # floor). Runs that never reach one count as num_steps (censored).
      transient_fraction=0.1,
      threshold_factor=2.0,
      # Under interpolation the floor is 0 (float round-off), so the asymptotic
      # threshold is never below floor_fraction x the mean initial test MSE.
      floor_fraction=1e-4,
      # Our robustness study (not the paper's setting): re-runs of every method and
      # seed on modified data, name -> data overrides. `label_noise` adds target
      # noise 0.1 and 20% outlier rows (target noise 3.0), which take the largest
      # losses of a batch.
      robustness={"label_noise": {"noisy_fraction": 0.2, "noise_std": 0.1}},
    )
  )
