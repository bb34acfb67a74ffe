"""The config schema shared by every config file, presets, and validation.

Config files in configs/ start from `base_config()` and override fields; every field can be
overridden on the command line (`--config.num_labels=250`). `validate_config` turns
mistakes into one clear line before anything expensive happens.
"""

from __future__ import annotations

import difflib

import ml_collections
from ml_collections import config_dict

FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
STL10_MEAN, STL10_STD = (0.4409, 0.4279, 0.3868), (0.2683, 0.2610, 0.2687)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def base_config() -> ml_collections.ConfigDict:
    """Defaults: CoMatch on offline Fashion-MNIST with 40 labels, sized for 2 CPU cores."""
    config = ml_collections.ConfigDict()
    config.method = "comatch"
    config.seed = 0
    config.num_labels = 40
    config.batch_size = 16  # labeled images per step
    config.mu = 7  # unlabeled images per labeled image
    config.num_steps = 2500
    config.log_every = 50
    config.eval_every = 500
    config.checkpoint_every = 500
    config.keep_checkpoints = 3
    config.eval_batch_size = 1000
    config.nonfinite_policy = "stop"  # stop: raise naming step and term; skip: skip the update
    # Whole arrays on the accelerator (batches drawn inside the step) or on the host (batches
    # gathered and prefetched there). None = decided from the data's size and the device's
    # free memory (training_data.choose_data_placement); True/False overrides.
    config.data_on_device = config_dict.placeholder(bool)

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "fashion_mnist"
    config.dataset.source = "auto"  # auto | tfds | idx
    config.dataset.data_dir = ml_collections.FieldReference(None, field_type=str)
    config.dataset.idx_dir = "/usr/share/datasets/fashion-mnist"
    config.dataset.train_split = "train"
    config.dataset.test_split = "test"
    config.dataset.extra_unlabeled_split = ml_collections.FieldReference(None, field_type=str)
    config.dataset.include_labeled_in_unlabeled = False
    # A CSV (id,label) of extra labeled train-split images, e.g. answered label requests
    # (comatch_jax.commands.request_labels); they join the labeled set and leave the unlabeled one.
    config.dataset.extra_labels_csv = ml_collections.FieldReference(None, field_type=str)
    # Rows answered __unknown__ (none of the classes) leave the unlabeled pool (default: stay).
    config.dataset.drop_unknown_answers = False
    # name=image_folder: ROOT/labeled/<class>/*, ROOT/unlabeled/**, optional ROOT/val/<class>/*.
    config.dataset.root = ml_collections.FieldReference(None, field_type=str)
    config.dataset.image_size = 96
    config.dataset.cache_dir = ml_collections.FieldReference(None, field_type=str)
    config.dataset.val_fraction = 0.1  # held out of labeled/ when there is no val/
    config.dataset.corrupt_policy = "fail"  # fail | skip (and count) unreadable images
    # Per-channel normalisation in [0, 1] units; () = from the data: a named dataset's standard
    # values, an image folder's measured ones (datasets.resolve_normalization).
    config.dataset.mean = ()
    config.dataset.std = ()

    config.model = ml_collections.ConfigDict()
    config.model.name = "small_cnn"
    config.model.widths = (24, 48, 96)  # measured: 0.18 s per CoMatch step on 2 CPU cores
    config.model.convs_per_stage = 1
    config.model.depth = 28  # wide_resnet / resnet
    config.model.widen_factor = 2  # wide_resnet
    config.model.stem = "imagenet"  # resnet: imagenet (7x7/2 + pool) or cifar (3x3/1)
    config.model.low_dim = 64
    config.model.projector_widths = ()  # SSL projector MLP (Barlow Twins, SimSiam); () = none
    config.model.predictor_widths = ()  # SimSiam's predictor MLP; () = none
    config.model.decoder = False  # the autoencoder's decoder
    config.model.decoder_width = 64
    # Flax convention (0.01 in PyTorch terms). The published 0.999 suits 2^19 steps; over a
    # few thousand steps it leaves the running statistics near their initial values.
    config.model.bn_momentum = 0.99
    # PyTorch (the official code) updates the running variance with the unbiased batch
    # variance (n / (n - 1)); False = flax's biased estimate.
    config.model.bn_unbiased_running_var = True
    config.model.dtype = "float32"
    # Over several devices: 'global' = BatchNorm statistics over the whole global batch
    # (synchronised; any device count computes what one device does), 'per_device' = each
    # device normalises its own shard (PyTorch DDP without SyncBatchNorm; no BN traffic).
    config.model.batch_norm = "global"
    # Pretrained PyTorch weights (comatch_jax.trainer.pretrained, torch_weights): a .safetensors /
    # .pth file of torchvision's or timm's ResNet-18/34/50 (model.name=resnet, same depth,
    # stem=imagenet) or of the official CoMatch WRN (model.name=wide_resnet), or a named
    # source 'torchvision:resnet50' / 'timm:resnet50.a1_in1k' (needs that package and the
    # network). Backbone loaded (raw and EMA), heads where shapes match, the classifier for
    # this dataset's classes fresh; dataset.mean/std default to ImageNet's. None = scratch.
    config.model.init_from_torch = ml_collections.FieldReference(None, field_type=str)
    # Fine-tuning: the backbone's BatchNorm layers use and keep their running statistics
    # (eval-mode BN while training; detectron2's FrozenBatchNorm). Off = the statistics adapt.
    config.model.freeze_backbone_bn = False

    # View slots -> augmentation names (comatch_jax.core.augment.VIEW_NAMES); the rest are options.
    config.augment = ml_collections.ConfigDict()
    config.augment.weak = "weak"
    config.augment.strong0 = "randaugment"
    config.augment.strong1 = "simclr"
    config.augment.flip = True
    config.augment.pad_fraction = 0.125
    config.augment.num_ops = 2
    config.augment.op_prob = 0.5
    config.augment.cutout_fraction = 0.5
    config.augment.crop_scale = (0.2, 1.0)
    config.augment.jitter_strength = (0.4, 0.4, 0.4, 0.1)
    config.augment.jitter_prob = 0.8
    config.augment.grayscale_prob = 0.2

    config.comatch = ml_collections.ConfigDict()
    config.comatch.alpha = 0.9  # weight of the model's own prediction in memory smoothing
    config.comatch.temperature = 0.2  # t
    config.comatch.contrast_threshold = 0.8  # T, pseudo-label graph
    config.comatch.threshold = 0.95  # tau, confidence mask (threshold_rule 'fixed')
    # 'fixed': tau above (the paper); 'freematch': FreeMatch's self-adaptive class thresholds
    # on the memory-smoothed pseudo-labels (EMAs from 1/C, momentum below); T stays fixed.
    # configs/comatch_adaptive.py sets it.
    config.comatch.threshold_rule = "fixed"
    config.comatch.threshold_momentum = 0.999  # lambda of the 'freematch' rule (FreeMatch's)
    config.comatch.lambda_cls = 1.0
    config.comatch.lambda_ctr = 1.0
    config.comatch.queue_size = 640  # K; the official CIFAR value is 5 batches: 5*(mu+1)*B
    config.comatch.distribution_alignment = True
    config.comatch.da_length = 32
    config.comatch.lambda_bt = 0.01  # method comatch_bt only: weight of the Barlow Twins term

    config.fixmatch = ml_collections.ConfigDict()
    config.fixmatch.threshold = 0.95  # tau
    config.fixmatch.lambda_u = 1.0
    # DA on the weak-view probabilities (the official CoMatch repository's Train_fixmatch.py
    # default, --DA True); off = the FixMatch paper. Preset suffix '_da' turns it on.
    config.fixmatch.distribution_alignment = False
    config.fixmatch.da_length = 32

    config.simclr = ml_collections.ConfigDict()
    config.simclr.temperature = 0.5

    config.barlow_twins = ml_collections.ConfigDict()
    config.barlow_twins.lambda_offdiag = 5e-3

    config.autoencoder = ml_collections.ConfigDict()
    config.autoencoder.loss = "mse"  # mse | bce

    # Fine-tuning: initialise the backbone from another run's latest checkpoint.
    config.init_from = ml_collections.FieldReference(None, field_type=str)

    # Frozen-feature evaluation of self-supervised runs (and the probe command).
    config.probe = ml_collections.ConfigDict()
    config.probe.knn_k = 200
    config.probe.knn_temperature = 0.07
    config.probe.linear_steps = 500
    config.probe.linear_lr = 0.1
    config.probe.linear_weight_decay = 5e-4

    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 0.03
    config.optim.momentum = 0.9
    config.optim.nesterov = True
    config.optim.weight_decay = 5e-4
    # 'fixmatch_cosine' = lr cos(7 pi k / 16 K), the official CoMatch/FixMatch schedule
    # (utils.py WarmupCosineLrScheduler, warmup_iter=0); 'cosine' decays to 0.
    config.optim.schedule = "fixmatch_cosine"
    config.optim.warmup_steps = 0
    # Fine-tuning a pretrained backbone (model.init_from_torch / init_from):
    # backbone_lr_scale: the backbone's learning rate is this times optim.lr (the heads get
    #   optim.lr); 1.0 = one rate for all (training from scratch).
    # head_warmup_steps: a linear-probe warm start, only the heads (classifier, embedding
    #   head, projector) are updated for the first N steps; the backbone's optimizer state
    #   (momentum) does not move either. Its BatchNorm statistics still adapt unless
    #   model.freeze_backbone_bn.
    # USB's pretrained presets (github microsoft/Semi-supervised-learning, config/usb_cv,
    # e.g. fixmatch_cifar100_200_0.yaml): ViT-S pretrained on ImageNet-1k, AdamW lr 5e-4,
    # weight decay 5e-4, layer-wise lr decay 0.5 (each transformer block's lr is 0.5 times the
    # next one's, the head's is lr), 5,120 linear warm-up iterations, 204,800 iterations,
    # batch 8 labeled + 8 unlabeled (uratio 1), no EMA (ema_m 0). What we copy: a lower rate
    # for the pretrained layers than for the fresh heads (one factor for the whole backbone,
    # e.g. backbone_lr_scale=0.1, instead of a per-layer decay), the warm-up
    # (optim.warmup_steps). What differs: our optimizer stays SGD (Nesterov), our backbones
    # are ResNets / WRNs, not ViTs, and USB has neither frozen BN nor a heads-only warm start.
    config.optim.backbone_lr_scale = 1.0
    config.optim.head_warmup_steps = 0

    config.ema = ml_collections.ConfigDict()
    # Horizon of ~100 steps for the 2,500-step CPU default; the presets use the published 0.999
    # (measured: at 0.999 the EMA model lags the raw one by 27 points after 1,000 steps).
    config.ema.decay = 0.99
    config.ema.average_batch_stats = False  # official: copy BN statistics into the EMA model
    config.ema.teacher_weak_views = False  # EMA model makes the weak views' pseudo-labels
    return config


def apply_preset(config: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
    """Published settings. '' = the CPU default. Names: cifar10_{40,250,4000},
    cifar100_{400,2500,10000}, stl10, competition96 (5 % labels), competition96_7p5 (7.5 %),
    folder_cpu (an image folder at 32 px for 2 CPU cores, about 20 minutes), fmnist40_gpu
    (Fashion-MNIST with 40 labels, WRN-28-2 at B = 64, mu = 7, sized for a few minutes per
    run on one H100; experiments/gpu_evidence.py).

    The CIFAR presets are the official CoMatch code's recipe (github salesforce/CoMatch,
    Train_CoMatch.py defaults): WRN-28-k (models.WideResNet, official blocks and init),
    B = 64, mu = 7, 512 x 1024 steps, SGD lr 0.03 Nesterov momentum 0.9, weight decay on
    all but BatchNorm parameters, lr cos(7 pi k / 16 K) without warm-up, BatchNorm momentum
    0.001 (PyTorch terms) with PyTorch's unbiased running variance, EMA 0.999 evaluation,
    RandAugment(2, 10) + Cutout 16 and the weak pad-4 crop + flip (comatch_jax.core.augment).
    A suffix '_da' (for configs/fixmatch.py) adds `fixmatch_with_da` on top.
    """
    if not preset:
        return config
    name, _, labels = preset.partition("_")
    if name == "cifar10" and labels in ("40", "250", "4000"):
        # CoMatch paper / official code: WRN-28-2, B=64, mu=7, 2^19 steps.
        _cifar(config, "cifar10", int(labels), CIFAR10_MEAN, CIFAR10_STD, widen_factor=2)
        config.optim.weight_decay = 5e-4
    elif name == "cifar100" and labels in ("400", "2500", "10000"):
        _cifar(config, "cifar100", int(labels), CIFAR100_MEAN, CIFAR100_STD, widen_factor=8)
        config.optim.weight_decay = 1e-3
    elif preset == "stl10":
        config.dataset.name = "stl10"
        config.dataset.extra_unlabeled_split = "unlabelled"
        config.dataset.include_labeled_in_unlabeled = True
        config.dataset.mean, config.dataset.std = STL10_MEAN, STL10_STD
        config.num_labels = 5000
        config.model.name = "resnet"
        config.model.bn_momentum = 0.999
        config.model.depth = 18
        config.model.stem = "imagenet"
        config.batch_size, config.mu = 64, 7
        config.num_steps = 512 * 1024
        config.comatch.queue_size = 2560
        config.optim.lr = 0.03
        config.optim.weight_decay = 5e-4
        _gpu_cadence(config)
    elif preset in ("competition96", "competition96_7p5"):
        # The user's paper: 96 px, 800 classes, ResNet-50, B=64, mu=4, 400 epochs.
        config.dataset.name = "image_folder"
        config.dataset.mean, config.dataset.std = IMAGENET_MEAN, IMAGENET_STD
        # The paper's label count (5 % of 512,000 images), for the record only: an image
        # folder labels every image under labeled/ (num_labels does not apply to it).
        config.num_labels = 25600
        config.model.name = "resnet"
        config.model.depth = 50
        config.model.stem = "imagenet"
        config.model.bn_momentum = 0.9
        config.batch_size, config.mu = 64, 4
        config.num_steps = 400 * 512000 // (64 * 4)  # 400 epochs over the unlabeled set
        config.comatch.update(
            alpha=0.9,
            temperature=0.1,
            contrast_threshold=0.25,
            threshold=0.55,
            lambda_cls=10.0,
            lambda_ctr=5.0,
            queue_size=30000,
        )
        # Half-cosine to 0 (the official ImageNet script, imagenet/Train_CoMatch.py --cos).
        config.optim.update(
            lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4, schedule="cosine"
        )
        config.ema.teacher_weak_views = True
        if preset == "competition96_7p5":
            # The paper's Table 1, second row: 7.5 % labels, tau 0.52, T 0.22, lambda_ctr 3.
            config.num_labels = 38400  # 7.5 % of 512,000, for the record: labeled/ decides
            config.comatch.update(threshold=0.52, contrast_threshold=0.22, lambda_ctr=3.0)
        _gpu_cadence(config)
    elif preset == "folder_cpu":
        # A user's own colour image folder on 2 CPU cores (issue 21; experiments/RESULTS.md,
        # "More steps in the same 20 minutes"): 32 px, the small CNN at B = 16, mu = 3, 7,000
        # steps (about 20 minutes for a semi-supervised method on 2 idle cores), the folder's
        # own mean/std. mu = 3 instead of 7 halves the cost of a step (6.2 vs 2.9 steps/s),
        # so twice the steps fit the budget: adaptive CoMatch rose from 48.4 +- 1.9 % (mu = 7,
        # 3,500 steps) to 49.8 +- 0.7 % (mu = 3, 7,000 steps) on a CIFAR-10 folder with 250
        # labels, 3 seeds, against 44.4 +- 0.8 % supervised-only. The queue keeps the base
        # K = 640 (10 steps of (mu + 1) B images). Meant with configs/comatch_adaptive.py.
        config.dataset.name = "image_folder"
        config.dataset.image_size = 32
        config.mu = 3
        config.num_steps = 7000
        config.log_every, config.eval_every, config.checkpoint_every = 100, 500, 500
    elif preset == "fmnist40_gpu":
        # The CIFAR-10 recipe (WRN-28-2, B=64, mu=7, K=2560) on Fashion-MNIST with 40 labels,
        # for one GPU. Steps: a plain Flax WRN-28-2 step at the CIFAR shape takes 14 ms in
        # bf16 on an H100 (issue 17's anchor); at 28 x 28 x 1 about (28/32)^2 of that plus our
        # augmentation, ~13 ms, so 3,000 steps ~ 40 s of training + ~20 s of compilation and
        # evaluation per run: CoMatch, FixMatch and supervised-only ~ 3-4 minutes together.
        config.dataset.name = "fashion_mnist"
        config.dataset.mean, config.dataset.std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
        config.num_labels = 40
        config.model.name = "wide_resnet"
        config.model.depth, config.model.widen_factor = 28, 2
        config.batch_size, config.mu = 64, 7
        config.num_steps = 3000
        config.comatch.queue_size = 2560
        config.optim.update(lr=0.03, momentum=0.9, nesterov=True, schedule="fixmatch_cosine")
        _gpu_cadence(config)
        config.ema.decay = 0.995  # a horizon of ~200 steps: 0.999 lags over 3,000 steps
        config.log_every, config.eval_every, config.checkpoint_every = 100, 1000, 3000
    else:
        raise ValueError(
            f"Unknown preset {preset!r}; expected '', cifar10_40, cifar10_250, cifar10_4000, "
            "cifar100_400, cifar100_2500, cifar100_10000, stl10, competition96, "
            "competition96_7p5, folder_cpu or fmnist40_gpu"
        )
    return config


def fixmatch_with_da(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The official repository's FixMatch script on top of a preset (github
    salesforce/CoMatch Train_fixmatch.py defaults): method fixmatch with distribution
    alignment on (--DA True, 32 batch means), tau 0.95, lambda_u 1, and for the CIFAR
    presets 1024 epochs of 1024 steps (--n-epoches 1024, twice CoMatch's 512)."""
    config.method = "fixmatch"
    config.fixmatch.update(distribution_alignment=True, da_length=32, threshold=0.95, lambda_u=1.0)
    if config.dataset.name in ("cifar10", "cifar100"):
        config.num_steps = 1024 * 1024
    return config


def self_supervised_config(preset: str = "") -> ml_collections.ConfigDict:
    """Shared by the self-supervised configs: two SimCLR-style views of unlabeled images."""
    config = apply_preset(base_config(), preset)
    config.augment.strong0 = "simclr"
    config.augment.strong1 = "simclr"
    return config


def _cifar(config, name, num_labels, mean, std, *, widen_factor):
    config.model.bn_momentum = 0.999  # official: 0.001 in PyTorch terms
    config.dataset.name = name
    config.dataset.mean, config.dataset.std = mean, std
    config.num_labels = num_labels
    config.model.name = "wide_resnet"
    config.model.depth = 28
    config.model.widen_factor = widen_factor
    config.batch_size, config.mu = 64, 7
    config.num_steps = 512 * 1024
    config.comatch.queue_size = 2560
    config.optim.lr = 0.03
    config.optim.momentum, config.optim.nesterov = 0.9, True
    config.optim.schedule, config.optim.warmup_steps = "fixmatch_cosine", 0
    config.model.bn_unbiased_running_var = True
    _gpu_cadence(config)


def _gpu_cadence(config):
    config.ema.decay = 0.999
    config.log_every = 200
    config.eval_every = 5000
    config.checkpoint_every = 5000
    config.model.dtype = "bfloat16"


def method_checks(config: ml_collections.ConfigDict) -> list[tuple[bool, str]]:
    """The checks config.method's declaration (comatch_jax.core.methods.Method) implies: its
    unlabeled data (mu > 0), no option set that it would ignore (methods.unread_option_checks),
    its config sections, the model fields its heads need, and its own option checks.
    ValueError for an unknown method."""
    # Imported here, not at the top: loading a config file (flag parsing, before a
    # multi-process run holds its signals) must not import JAX, which takes seconds.
    from comatch_jax.core import methods

    method = methods.get_method(config.method)
    name = config.method
    checks = []
    if method.needs_unlabeled_data:
        checks.append((config.mu > 0, f"method={name} needs unlabeled data: mu must be > 0"))
    checks += methods.unread_option_checks(config)  # e.g. comatch.threshold_rule on FixMatch
    missing = [section for section in method.config_sections if section not in config]
    if missing:  # the option checks below read these sections
        return checks + [(False, f"method={name} needs config.{missing[0]} (see base_config)")]
    for field in method.model_fields:
        checks.append((bool(config.model[field]), f"method={name} needs model.{field} set"))
    return checks + list(method.check_config(config))


def dataset_checks(config: ml_collections.ConfigDict) -> list[tuple[bool, str]]:
    """An image folder's options (dataset.root, dataset.cache_dir) set for another dataset
    would be silently ignored: the run would train on that dataset (e.g. the default
    Fashion-MNIST) instead of the folder."""
    dataset = config.dataset
    if dataset.get("name") == "image_folder":
        return []
    return [
        (
            not dataset.get(field),
            f"dataset.{field} is set but dataset.name={dataset.get('name')}; add "
            "--config.dataset.name=image_folder or use a :folder_cpu preset "
            "(e.g. --config=configs/comatch_adaptive.py:folder_cpu)",
        )
        for field in ("root", "cache_dir")
    ]


def _field_names(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every field's dotted name, sub-configs included (themselves and their fields)."""
    names = []
    for key, value in config.items():
        names.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            names += _field_names(value, f"{prefix}{key}.")
    return names


def _method_only_sections() -> dict[str, set[str]]:
    """Sections a method reads (methods.Method.config_sections) that base_config lacks, with
    the fields each may hold (Method.section_fields): its config file adds them
    (configs/freematch.py: config.freematch, configs/softmatch.py: config.softmatch)."""
    from comatch_jax.core import methods  # imported here: see method_checks

    base = base_config()
    sections: dict[str, set[str]] = {}
    for method in methods.METHODS.values():
        for section in method.config_sections:
            if section not in base:
                sections.setdefault(section, set()).update(method.section_fields)
    return sections


def unknown_fields(config: ml_collections.ConfigDict) -> list[tuple[str, str | None]]:
    """(field, closest known field or None) for every field of `config` that base_config()
    does not have (recursively), e.g. `comatch.treshold_rule` set in a config file, which
    would otherwise train silently with the default of the field meant. A method's own
    section outside base_config (_method_only_sections) may hold the fields its Method
    declares (section_fields). The closest name is difflib's, among the known fields."""
    sections = _method_only_sections()
    known = _field_names(base_config()) + [
        f"{section}.{field}" for section, fields in sections.items() for field in sorted(fields)
    ]
    known_set = set(known) | set(sections)
    unknown = []
    for name in _field_names(config):
        if name in known_set:
            continue
        parent = name.rpartition(".")[0]
        if parent and parent not in known_set:  # inside an unknown section: reported once
            continue
        candidates = [k for k in known if k.rpartition(".")[0] == parent] or known
        closest = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        unknown.append((name, closest[0] if closest else None))
    return unknown


def unknown_field_message(unknown: tuple[str, str | None]) -> str:
    """The one line for unknown_fields' first entry."""
    name, closest = unknown
    hint = f"did you mean {closest}?" if closest else "see config_lib.base_config for the fields"
    return f"no such config field {name} ({hint}; a config file may only set known fields)"


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError with one clear line for a config that cannot train.

    First unknown_field_checks (a misspelt field in a config file), then the generic checks,
    then the dataset's (dataset_checks), then those config.method's declaration implies
    (method_checks).
    """
    unknown = unknown_fields(config)
    if unknown:
        raise ValueError(f"Invalid config: {unknown_field_message(unknown[0])}")
    checks = [
        (config.batch_size > 0, f"batch_size must be positive, got {config.batch_size}"),
        (config.mu >= 0, f"mu must be >= 0, got {config.mu}"),
        (config.num_steps > 0, f"num_steps must be positive, got {config.num_steps}"),
        (config.num_labels > 0, f"num_labels must be positive, got {config.num_labels}"),
        (
            config.log_every > 0 and config.eval_every > 0 and config.checkpoint_every > 0,
            "log_every, eval_every and checkpoint_every must be positive",
        ),
        (0.0 <= config.ema.decay < 1.0, f"ema.decay must be in [0, 1), got {config.ema.decay}"),
        (
            len(config.dataset.mean) == len(config.dataset.std),
            "dataset.mean and dataset.std must have the same length",
        ),
        (config.eval_batch_size > 0, "eval_batch_size must be positive"),
        (
            config.nonfinite_policy in ("stop", "skip"),
            f"nonfinite_policy must be 'stop' or 'skip', got {config.nonfinite_policy!r}",
        ),
    ]
    checks.append(
        (config.get("init_from") != "", "fine-tuning needs --config.init_from=PRETRAINING_WORKDIR")
    )
    optim = config.optim
    checks += [
        (
            optim.get("backbone_lr_scale", 1.0) >= 0,
            f"optim.backbone_lr_scale must be >= 0, got {optim.get('backbone_lr_scale')}",
        ),
        (
            0 <= optim.get("head_warmup_steps", 0) < config.num_steps,
            f"optim.head_warmup_steps must be in [0, num_steps), got "
            f"{optim.get('head_warmup_steps')}",
        ),
        (
            not (config.get("init_from") and config.model.get("init_from_torch")),
            "set one of init_from (a comatch_jax run) and model.init_from_torch (PyTorch weights)",
        ),
        (
            config.model.get("init_from_torch") != "",
            "model.init_from_torch needs a .safetensors / .pth file or torchvision:NAME",
        ),
    ]
    checks += dataset_checks(config)
    checks += method_checks(config)
    for ok, message in checks:
        if not ok:
            raise ValueError(f"Invalid config: {message}")
