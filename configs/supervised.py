"""Supervised-only baseline: the same model, data and loop with the unlabeled terms off.

  python -m comatch_jax.main --config=configs/supervised.py --workdir=/tmp/sup

Takes configs/comatch.py's presets (e.g. configs/supervised.py:cifar10_4000). The default
reaches 57.7 +- 4.7 % on Fashion-MNIST with 40 labels (3 seeds, about 2 minutes on 2 CPU
cores; experiments/RESULTS.md), 58.9 +- 5.1 % with --config.num_steps=10000, where CoMatch
reaches 69.0 +- 7.0 %.
"""

import ml_collections

from comatch_jax import config_lib


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    config = config_lib.config_file("comatch", preset)
    config.method = "supervised"
    config.mu = 0  # no unlabeled images are drawn
    return config
