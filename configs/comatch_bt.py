"""CoMatch + Barlow Twins (the CoMatch paper's stated future work): CoMatch's loss plus
lambda_bt times the Barlow Twins loss between the two strong views' projector outputs.

  python -m comatch_jax.main --config=configs/comatch_bt.py --workdir=/tmp/comatch_bt
"""

from comatch_jax import config_lib


def get_config(preset: str = ""):
    config = config_lib.apply_preset(config_lib.base_config(), preset)
    config.method = "comatch_bt"
    config.model.projector_widths = (256, 256, 256)
    return config
