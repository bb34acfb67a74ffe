"""SimCLR pretraining (Chen et al. 2020) on the unlabeled images: NT-Xent, temperature 0.5,
two SimCLR-style views. Evaluated during training by weighted kNN on frozen features.

  python -m comatch_jax.main --config=configs/simclr.py --workdir=/tmp/simclr
  python -m comatch_jax.commands.probe --workdir=/tmp/simclr --mode=all       # kNN + linear probe
  python -m comatch_jax.main --config=configs/finetune.py --config.init_from=/tmp/simclr --workdir=/tmp/simclr_ft
"""

from comatch_jax import config_lib


def get_config(preset: str = ""):
    config = config_lib.self_supervised_config(preset)
    config.method = "simclr"
    return config
