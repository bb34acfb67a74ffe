"""Supervised-only baseline: the same model, data and loop with the unlabeled terms off.

  python -m comatch_jax.main --config=configs/supervised.py --workdir=/tmp/sup

Takes the same presets as configs/comatch.py (e.g. configs/supervised.py:cifar10_4000).
The default reaches 57.7 +- 4.7 % on Fashion-MNIST with 40 labels (3 seeds, about 2
minutes on 2 CPU cores; experiments/RESULTS.md); 58.9 +- 5.1 % with
--config.num_steps=10000 (before the official-recipe defaults), where CoMatch reached
69.0 +- 7.0 %.
"""

from comatch_jax import config_lib


def get_config(preset: str = ""):
    config = config_lib.apply_preset(config_lib.base_config(), preset)
    config.method = "supervised"
    config.mu = 0  # no unlabeled images are drawn
    return config
