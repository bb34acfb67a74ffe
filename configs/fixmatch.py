"""FixMatch (Sohn et al. 2020): confidence-thresholded hard pseudo-labels, tau=0.95,
lambda_u=1, mu=7, EMA model for evaluation. Same data, model and loop as CoMatch.

  python -m comatch_jax.main --config=configs/fixmatch.py --workdir=/tmp/fixmatch

Takes comatch.py's presets (e.g. configs/fixmatch.py:cifar10_40; the FixMatch paper
reports 86.19 / 94.93 / 95.74 % on CIFAR-10 with 40 / 250 / 4000 labels). A preset with the
suffix '_da' (e.g. configs/fixmatch.py:cifar10_40_da) is the official CoMatch repository's
Train_fixmatch.py: FixMatch with distribution alignment, 1024 x 1024 steps
(config_lib.fixmatch_with_da).
"""

from comatch_jax import config_lib


def get_config(preset: str = ""):
    with_da = preset.endswith("_da")
    config = config_lib.apply_preset(config_lib.base_config(), preset[:-3] if with_da else preset)
    config.method = "fixmatch"
    return config_lib.fixmatch_with_da(config) if with_da else config
