"""SimCLR pretraining (Chen et al. 2020) on the unlabeled images: NT-Xent, temperature 0.5,
two SimCLR-style views; evaluated during training by weighted kNN on frozen features. The
other self-supervised config files build on this one; all take configs/comatch.py's presets.

  python -m comatch_jax.main --config=configs/simclr.py --workdir=/tmp/simclr
  python -m comatch_jax.commands.probe --workdir=/tmp/simclr --mode=all       # kNN + linear probe
  python -m comatch_jax.main --config=configs/finetune.py --config.init_from=/tmp/simclr --workdir=/tmp/simclr_ft
"""

import ml_collections

from comatch_jax import config_lib


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    config = config_lib.config_file("comatch", preset)
    config.method = "simclr"
    config.augment.strong0 = config.augment.strong1 = "simclr"  # two views of each image
    return config
