"""CoMatch (Li, Xiong, Hoi 2021), and the presets every other config file takes.

Default: a CPU-sized run on the real Fashion-MNIST (offline, Debian's dataset-fashion-mnist)
with 40 labels and a small CNN:

  python -m comatch_jax.main --config=configs/comatch.py --workdir=/tmp/run

It reaches 65.9 +- 6.6 % test accuracy (EMA model, 3 seeds) against 57.7 +- 4.7 % for
configs/supervised.py with the same labels and steps, in about 8 minutes on 2 idle CPU
cores; with --config.num_steps=10000, 69.0 +- 7.0 % vs 58.9 +- 5.1 % (experiments/RESULTS.md,
"Fidelity").

Presets (`--config=configs/comatch.py:NAME`; the other config files take the same names):

  cifar10_40, cifar10_250, cifar10_4000, cifar100_400, cifar100_2500, cifar100_10000:
      the official code's recipe (github salesforce/CoMatch, Train_CoMatch.py defaults):
      WRN-28-2 (CIFAR-100: WRN-28-8, weight decay 1e-3), B = 64, mu = 7, K = 2,560,
      512 x 1024 steps, SGD lr 0.03 Nesterov momentum 0.9 with weight decay on all but
      BatchNorm, lr cos(7 pi k / 16 K), BatchNorm momentum 0.001 (PyTorch terms) with the
      unbiased running variance, EMA 0.999, RandAugment(2, 10) + Cutout 16 and the weak
      pad-4 crop + flip. The paper reports 93.09 / 95.09 / 95.44 % on CIFAR-10.
  stl10: ResNet-18 at 96 px, 5,000 labels, the unlabelled split, 2^19 steps.
  competition96: the user's paper: ResNet-50 at 96 px, 800 classes from an image folder
      (5 % labels), B = 64, mu = 4, 400 epochs, a half-cosine lr 0.1, the EMA model making
      the weak views' pseudo-labels; competition96_7p5: its Table 1's 7.5 % row.
  folder_cpu: a user's own colour image folder on 2 CPU cores: 32 px, the small CNN,
      B = 16, mu = 3, 7,000 steps (about 20 minutes), meant with configs/comatch_adaptive.py.
  fmnist40_gpu: the CIFAR-10 recipe on Fashion-MNIST with 40 labels for a few minutes on
      one GPU (3,000 steps, EMA 0.995; experiments/gpu_evidence.py).

  python -m comatch_jax.main --config=configs/comatch.py:cifar10_40 --workdir=/tmp/c10_40
"""

import ml_collections

from comatch_jax import config_lib


def _gpu(config: ml_collections.ConfigDict) -> None:
    """What every GPU preset shares: bfloat16 activations, EMA 0.999, a sparser cadence."""
    config.model.dtype = "bfloat16"
    config.ema.decay = 0.999
    config.log_every, config.eval_every, config.checkpoint_every = 200, 5000, 5000


def cifar(config: ml_collections.ConfigDict, dataset: str, num_labels: int) -> None:
    """The official CIFAR recipe (see the module docstring); the optimizer, schedule,
    unbiased BatchNorm variance and views are base_config's defaults."""
    _gpu(config)
    config.dataset.name = dataset
    config.num_labels = num_labels
    config.model.name, config.model.depth = "wide_resnet", 28
    config.model.widen_factor = 2 if dataset == "cifar10" else 8
    config.model.bn_momentum = 0.999  # 0.001 in PyTorch terms
    config.batch_size, config.mu = 64, 7
    config.num_steps = 512 * 1024
    config.comatch.queue_size = 2560  # 5 batches of (mu + 1) B
    config.optim.weight_decay = 5e-4 if dataset == "cifar10" else 1e-3


def stl10(config: ml_collections.ConfigDict) -> None:
    _gpu(config)
    config.dataset.name = "stl10"
    config.dataset.extra_unlabeled_split = "unlabelled"
    config.dataset.include_labeled_in_unlabeled = True
    config.num_labels = 5000
    config.model.name, config.model.depth, config.model.stem = "resnet", 18, "imagenet"
    config.model.bn_momentum = 0.999
    config.batch_size, config.mu = 64, 7
    config.num_steps = 512 * 1024
    config.comatch.queue_size = 2560


def competition96(config: ml_collections.ConfigDict, label_percent: float = 5.0) -> None:
    """The user's paper: 96 px, 800 classes, ResNet-50, B = 64, mu = 4, 400 epochs over the
    512,000 unlabeled images, a half-cosine learning rate to 0 (the official ImageNet script,
    imagenet/Train_CoMatch.py --cos), the EMA model making the weak views' pseudo-labels."""
    _gpu(config)
    config.dataset.name = "image_folder"
    config.dataset.mean, config.dataset.std = config_lib.IMAGENET_MEAN, config_lib.IMAGENET_STD
    # For the record only: an image folder labels every image under labeled/.
    config.num_labels = round(512000 * label_percent / 100)
    config.model.name, config.model.depth, config.model.stem = "resnet", 50, "imagenet"
    config.model.bn_momentum = 0.9
    config.batch_size, config.mu = 64, 4
    config.num_steps = 400 * 512000 // (64 * 4)
    config.comatch.update(
        temperature=0.1, contrast_threshold=0.25, threshold=0.55, lambda_cls=10.0, lambda_ctr=5.0
    )
    config.comatch.queue_size = 30000
    config.optim.update(lr=0.1, nesterov=False, weight_decay=1e-4, schedule="cosine")
    config.ema.teacher_weak_views = True
    if label_percent == 7.5:  # the paper's Table 1, second row
        config.comatch.update(threshold=0.52, contrast_threshold=0.22, lambda_ctr=3.0)


def folder_cpu(config: ml_collections.ConfigDict) -> None:
    """mu = 3 instead of 7 halves the cost of a step, so twice the steps fit 20 minutes; the
    queue keeps K = 640 (10 steps of (mu + 1) B images); mean/std measured on the folder."""
    config.dataset.name = "image_folder"
    config.dataset.image_size = 32
    config.mu = 3
    config.num_steps = 7000
    config.log_every, config.eval_every, config.checkpoint_every = 100, 500, 500


def fmnist40_gpu(config: ml_collections.ConfigDict) -> None:
    """The CIFAR-10 recipe (WRN-28-2, B = 64, mu = 7, K = 2,560) on Fashion-MNIST with 40
    labels, 3,000 steps: CoMatch, FixMatch and supervised-only in a few minutes together."""
    _gpu(config)
    config.num_labels = 40
    config.model.name, config.model.depth, config.model.widen_factor = "wide_resnet", 28, 2
    config.batch_size, config.mu = 64, 7
    config.num_steps = 3000
    config.comatch.queue_size = 2560
    config.ema.decay = 0.995  # a horizon of ~200 steps: 0.999 lags over 3,000 steps
    config.log_every, config.eval_every, config.checkpoint_every = 100, 1000, 3000


PRESETS = {
    "": lambda config: None,
    **{f"cifar10_{n}": lambda c, n=n: cifar(c, "cifar10", n) for n in (40, 250, 4000)},
    **{f"cifar100_{n}": lambda c, n=n: cifar(c, "cifar100", n) for n in (400, 2500, 10000)},
    "stl10": stl10,
    "competition96": competition96,
    "competition96_7p5": lambda config: competition96(config, label_percent=7.5),
    "folder_cpu": folder_cpu,
    "fmnist40_gpu": fmnist40_gpu,
}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; expected {', '.join(map(repr, PRESETS))}")
    config = config_lib.base_config()
    config.method = "comatch"
    PRESETS[preset](config)
    return config
