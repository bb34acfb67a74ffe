"""CoMatch with FreeMatch's self-adaptive threshold (comatch.threshold_rule='freematch').

CoMatch (Li, Xiong, Hoi 2021) whose L_u^cls keeps a memory-smoothed pseudo-label q where
max q >= tau_t(argmax q), FreeMatch's self-adaptive class thresholds (Wang et al., ICLR 2023,
Eq. 6-8: tau_t the EMA of the mean max q, p~_t the EMA of the mean q, tau_t(c) =
p~_t(c) / max p~_t * tau_t), both starting at 1/C with momentum 0.999, instead of the fixed
tau = 0.95, so that a young model learns from its unlabeled images from the first steps. The
pseudo-label graph keeps its fixed threshold T = comatch.contrast_threshold (see
methods.comatch_loss). This combination is in neither paper.

  python -m comatch_jax.main --config=configs/comatch_adaptive.py --workdir=/tmp/run

Takes configs/comatch.py's presets. The recommended start for a user's own colour folder on
a CPU (README):

  python -m comatch_jax.main --config=configs/comatch_adaptive.py:folder_cpu \\
      --config.dataset.root=DIR --workdir=/tmp/run

reaches 49.8 +- 0.7 % on a folder of CIFAR-10 photos with 25 labels per class and 5,000
unlabeled (3 seeds; about 20 minutes on 2 idle cores), against 44.4 +- 0.8 % for
configs/supervised.py:folder_cpu (experiments/RESULTS.md, "More steps in the same 20
minutes").
"""

import ml_collections

from comatch_jax import config_lib


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    config = config_lib.config_file("comatch", preset)
    config.comatch.threshold_rule = "freematch"
    config.comatch.threshold_momentum = 0.999  # FreeMatch's lambda
    return config
