"""SimSiam pretraining (Chen & He 2021): projector + bottleneck predictor, symmetric
negative cosine with stop-gradient, two SimCLR-style views (configs/simclr.py's).

  python -m comatch_jax.main --config=configs/simsiam.py --workdir=/tmp/simsiam
  python -m comatch_jax.commands.probe --workdir=/tmp/simsiam --mode=all
"""

import ml_collections

from comatch_jax import config_lib


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    config = config_lib.config_file("simclr", preset)
    config.method = "simsiam"
    config.model.projector_widths = (256, 256, 256)
    config.model.predictor_widths = (64, 256)
    return config
