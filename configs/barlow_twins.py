"""Barlow Twins pretraining (Zbontar et al. 2021): 3-layer projector, cross-correlation
loss with lambda_offdiag = 5e-3, two SimCLR-style views (configs/simclr.py's).

  python -m comatch_jax.main --config=configs/barlow_twins.py --workdir=/tmp/bt
  python -m comatch_jax.commands.probe --workdir=/tmp/bt --mode=all
  python -m comatch_jax.main --config=configs/finetune.py --config.init_from=/tmp/bt --workdir=/tmp/bt_ft
"""

import ml_collections

from comatch_jax import config_lib


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    config = config_lib.config_file("simclr", preset)
    config.method = "barlow_twins"
    config.model.projector_widths = (256, 256, 256)
    return config
