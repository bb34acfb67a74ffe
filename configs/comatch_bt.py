"""CoMatch + Barlow Twins (the CoMatch paper's stated future work): CoMatch's loss plus
comatch.lambda_bt times the Barlow Twins loss between the two strong views' projector
outputs. Takes configs/comatch.py's presets.

  python -m comatch_jax.main --config=configs/comatch_bt.py --workdir=/tmp/comatch_bt
"""

import ml_collections

from comatch_jax import config_lib


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    config = config_lib.config_file("comatch", preset)
    config.method = "comatch_bt"
    config.model.projector_widths = (256, 256, 256)
    return config
