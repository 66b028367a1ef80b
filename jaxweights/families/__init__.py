"""The five weighting families. Each depends on :mod:`jaxweights.core` (and on
substrates such as diffusion models), never on another family.

* :mod:`~jaxweights.families.loss_based`: LinUpper / Quadratic / Extremes (Sow et al., ICLR 2025).
* :mod:`~jaxweights.families.self_influence`: PRESENCE and per-sample gradient norms (Thakkar et al., EMNLP 2023).
* :mod:`~jaxweights.families.density_ratio`: TIW-DSM (Kim et al., ICLR 2024).
* :mod:`~jaxweights.families.noisy_labels`: importance reweighting, DWS and RENT (Bae et al., ICLR 2024).
* :mod:`~jaxweights.families.q_probe`: Q-probe (Li et al., ICML 2024).
"""
