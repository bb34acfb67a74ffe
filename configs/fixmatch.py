"""FixMatch (Sohn et al. 2020): confidence-thresholded hard pseudo-labels, tau = 0.95,
lambda_u = 1, mu = 7, EMA model for evaluation. Same data, model and loop as CoMatch.

  python -m comatch_jax.main --config=configs/fixmatch.py --workdir=/tmp/fixmatch

Takes configs/comatch.py's presets (e.g. configs/fixmatch.py:cifar10_40; the FixMatch paper
reports 86.19 / 94.93 / 95.74 % on CIFAR-10 with 40 / 250 / 4000 labels). A preset with the
suffix '_da' (e.g. configs/fixmatch.py:cifar10_40_da) is the official CoMatch repository's
Train_fixmatch.py (github salesforce/CoMatch): distribution alignment over 32 batch means
(--DA True) and, on CIFAR, 1024 epochs of 1024 steps (--n-epoches 1024, twice CoMatch's).
"""

import ml_collections

from comatch_jax import config_lib


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    with_da = preset.endswith("_da")
    config = config_lib.config_file("comatch", preset.removesuffix("_da"))
    config.method = "fixmatch"
    if with_da:
        config.fixmatch.distribution_alignment = True
        if config.dataset.name in ("cifar10", "cifar100"):
            config.num_steps = 1024 * 1024
    return config
