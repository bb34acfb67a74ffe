"""Autoencoder pretraining: the backbone encodes, a small decoder reconstructs the weakly
augmented image (MSE; --config.autoencoder.loss=bce for BCE).

  python -m comatch_jax.main --config=configs/autoencoder.py --workdir=/tmp/ae
  python -m comatch_jax.commands.probe --workdir=/tmp/ae --mode=all
"""

import ml_collections

from comatch_jax import config_lib


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    config = config_lib.config_file("simclr", preset)
    config.method = "autoencoder"
    config.model.decoder = True
    return config
