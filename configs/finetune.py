"""Fine-tune a pretrained encoder on the labeled images (supervised loss, whole network).

  python -m comatch_jax.main --config=configs/finetune.py --config.init_from=PRETRAIN_WORKDIR --workdir=/tmp/ft

The model.* fields must match the pretraining run's (its config.json); the backbone's
params and BatchNorm statistics come from its latest checkpoint (EMA weights). Takes
configs/comatch.py's presets.
"""

import ml_collections

from comatch_jax import config_lib


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    config = config_lib.config_file("comatch", preset)
    config.method = "supervised"
    config.mu = 0
    config.num_steps = 1000
    config.optim.lr = 0.01
    config.init_from = ""  # must be set on the command line
    return config
