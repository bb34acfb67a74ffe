"""The config every config file starts from, and its validation.

`base_config()` holds every field with its default, locked: a config file (configs/*.py, with
the presets) or an override (`--config.num_labels=250`) may change a field but not add one,
so a misspelt field is refused with ml_collections' "Did you mean ...". `validate_config`
turns a value that cannot train into one line before anything expensive."""

from __future__ import annotations

import importlib.util
import os

import ml_collections
from ml_collections import config_dict

# What torchvision's and timm's ImageNet weights expect (datasets' own: data/normalization.py).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def base_config() -> ml_collections.ConfigDict:
    """Defaults: CoMatch on offline Fashion-MNIST with 40 labels, sized for 2 CPU cores.
    Locked: fields can be changed, not added."""
    config = ml_collections.ConfigDict()
    config.method = "comatch"  # an entry of comatch_jax.core.methods.METHODS
    config.seed, config.num_labels = 0, 40
    config.batch_size, config.mu = 16, 7  # labeled images per step, unlabeled per labeled
    config.num_steps = 2500
    config.log_every, config.eval_every, config.checkpoint_every = 50, 500, 500
    config.keep_checkpoints = 3  # the latest N checkpoints are kept
    config.eval_batch_size = 1000
    config.nonfinite_policy = "stop"  # stop: raise naming step and term; skip: skip the update
    # Data on the accelerator (True) or the host (False); None: from its size and free memory.
    config.data_on_device = config_dict.placeholder(bool)

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "fashion_mnist"  # a TFDS name, or image_folder
    config.dataset.source = "auto"  # auto | tfds | idx
    config.dataset.data_dir = config_dict.placeholder(str)
    config.dataset.idx_dir = "/usr/share/datasets/fashion-mnist"
    config.dataset.train_split, config.dataset.test_split = "train", "test"
    config.dataset.extra_unlabeled_split = config_dict.placeholder(str)
    config.dataset.include_labeled_in_unlabeled = False
    # Answers to label requests: the labelling page's CSV or a Label Studio export (data.answers).
    config.dataset.extra_labels_csv = config_dict.placeholder(str)
    # Rows answered __unknown__ (none of the classes) leave the unlabeled pool (default: stay).
    config.dataset.drop_unknown_answers = False
    # name=image_folder: ROOT/labeled/<class>/*, ROOT/unlabeled/**, optional ROOT/val/<class>/*.
    config.dataset.root = config_dict.placeholder(str)
    config.dataset.image_size, config.dataset.cache_dir = 96, config_dict.placeholder(str)
    config.dataset.val_fraction = 0.1  # held out of labeled/ when there is no val/
    config.dataset.corrupt_policy = "fail"  # fail | skip (and count) unreadable images
    # Per-channel normalisation in [0, 1] units; () = from the data: a named dataset's standard
    # values, an image folder's measured ones (data.normalization).
    config.dataset.mean, config.dataset.std = (), ()

    config.model = ml_collections.ConfigDict()
    config.model.name = "small_cnn"  # small_cnn | wide_resnet | resnet
    config.model.widths, config.model.convs_per_stage = (24, 48, 96), 1  # small_cnn
    config.model.depth, config.model.widen_factor = 28, 2  # wide_resnet (depth: resnet too)
    config.model.stem = "imagenet"  # resnet: imagenet (7x7/2 + pool) or cifar (3x3/1)
    config.model.low_dim = 64  # CoMatch's embedding size
    config.model.projector_widths = ()  # SSL projector MLP (Barlow Twins, SimSiam); () = none
    config.model.predictor_widths = ()  # SimSiam's predictor MLP; () = none
    config.model.decoder, config.model.decoder_width = False, 64  # the autoencoder's decoder
    config.model.bn_momentum = 0.99  # flax's convention (PyTorch's 0.01); the presets' 0.999
    # As PyTorch (the official code): the running variance takes the unbiased batch variance.
    config.model.bn_unbiased_running_var = True
    config.model.dtype = "float32"  # the backbone's activations: float32 | bfloat16 | float16
    # BatchNorm statistics over the 'global' batch, or 'per_device' (DDP without SyncBatchNorm).
    config.model.batch_norm = "global"
    # Pretrained PyTorch weights: a .safetensors / .pth file or 'torchvision:resnet50' /
    # 'timm:resnet50.a1_in1k' (comatch_jax.trainer.pretrained). None = from scratch.
    config.model.init_from_torch = config_dict.placeholder(str)
    # Fine-tuning: the backbone's BatchNorm keeps its statistics (detectron2's FrozenBatchNorm).
    config.model.freeze_backbone_bn = False

    # View slots -> augmentation names (comatch_jax.core.augment.VIEWS); the rest are options.
    config.augment = ml_collections.ConfigDict()
    config.augment.weak = "weak"
    config.augment.strong0, config.augment.strong1 = "randaugment", "simclr"
    config.augment.flip, config.augment.pad_fraction = True, 0.125
    config.augment.num_ops, config.augment.op_prob = 2, 0.5  # RandAugment
    config.augment.cutout_fraction = 0.5
    config.augment.crop_scale = (0.2, 1.0)
    config.augment.jitter_strength, config.augment.jitter_prob = (0.4, 0.4, 0.4, 0.1), 0.8
    config.augment.grayscale_prob = 0.2

    config.comatch = ml_collections.ConfigDict()
    config.comatch.alpha = 0.9  # weight of the model's own prediction in memory smoothing
    config.comatch.temperature = 0.2  # t
    config.comatch.contrast_threshold = 0.8  # T, pseudo-label graph
    config.comatch.threshold = 0.95  # tau, confidence mask (threshold_rule 'fixed')
    # 'fixed': tau above (the paper); 'freematch': FreeMatch's self-adaptive thresholds on q.
    config.comatch.threshold_rule = "fixed"
    config.comatch.threshold_momentum = 0.999  # lambda of the 'freematch' rule (FreeMatch's)
    config.comatch.lambda_cls, config.comatch.lambda_ctr = 1.0, 1.0
    config.comatch.queue_size = 640  # K; the official CIFAR value is 5 batches: 5*(mu+1)*B
    config.comatch.distribution_alignment, config.comatch.da_length = True, 32
    config.comatch.lambda_bt = 0.01  # method comatch_bt only: weight of the Barlow Twins term
    # Weigh each image's L_u^cls term by how like a labeled image it is (open-set pools:
    # losses.labeled_similarity_weights); off = the paper.
    config.comatch.unknown_weighting = False

    config.fixmatch = ml_collections.ConfigDict()
    config.fixmatch.threshold, config.fixmatch.lambda_u = 0.95, 1.0  # tau, lambda_u
    # DA as the official CoMatch repository's Train_fixmatch.py; off = the FixMatch paper.
    config.fixmatch.distribution_alignment, config.fixmatch.da_length = False, 32

    config.freematch = ml_collections.ConfigDict()
    config.freematch.momentum = 0.999  # lambda, the EMA of tau_t, p~_t and h~_t
    config.freematch.lambda_u = 1.0  # w_u
    config.freematch.lambda_f = 0.001  # w_f (official CIFAR configs; the code's default 0.01)

    config.softmatch = ml_collections.ConfigDict()
    config.softmatch.momentum = 0.999  # m, the EMA of mu_t, sigma_t^2 and E[p]
    config.softmatch.lambda_u = 1.0  # lambda_max
    config.softmatch.n_sigma = 2.0  # official code; 1 = the paper's printed equation
    config.softmatch.uniform_alignment = True

    config.simclr = ml_collections.ConfigDict({"temperature": 0.5})
    config.barlow_twins = ml_collections.ConfigDict({"lambda_offdiag": 5e-3})
    config.autoencoder = ml_collections.ConfigDict({"loss": "mse"})  # mse | bce

    config.init_from = config_dict.placeholder(str)  # fine-tuning: the run to start from

    # Frozen-feature evaluation of self-supervised runs (and the probe command).
    config.probe = ml_collections.ConfigDict()
    config.probe.knn_k, config.probe.knn_temperature = 200, 0.07
    config.probe.linear_steps, config.probe.linear_lr = 500, 0.1
    config.probe.linear_weight_decay = 5e-4

    config.optim = ml_collections.ConfigDict()
    config.optim.lr, config.optim.momentum, config.optim.nesterov = 0.03, 0.9, True
    config.optim.weight_decay = 5e-4
    config.optim.schedule = "fixmatch_cosine"  # | cosine | constant (train_state.py)
    config.optim.warmup_steps = 0  # steps of linear warm-up
    # Fine-tuning: the backbone's rate is backbone_lr_scale * lr (lower than the fresh heads',
    # as USB's pretrained presets); only the heads are updated for the first head_warmup_steps.
    config.optim.backbone_lr_scale, config.optim.head_warmup_steps = 1.0, 0

    config.ema = ml_collections.ConfigDict()
    config.ema.decay = 0.99  # a horizon of ~100 steps for the CPU default (GPU presets: 0.999)
    config.ema.average_batch_stats = False  # official: copy BN statistics into the EMA model
    config.ema.teacher_weak_views = False  # EMA model makes the weak views' pseudo-labels
    config.lock()
    return config


def config_file(name: str, preset: str = "") -> ml_collections.ConfigDict:
    """configs/<name>.py's get_config(preset): what --config=configs/<name>.py:<preset> gives.
    Config files build on each other with it (e.g. configs/fixmatch.py on comatch.py's
    presets). Raises FileNotFoundError outside a checkout (configs/ is not installed)."""
    path = os.path.join(CONFIGS_DIR, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError with one line for a config that cannot train: an unknown method
    (methods.get_method), else 'Invalid config: ...' for the first check that fails. Every
    method's options are checked whichever method runs (their defaults pass)."""
    # Imported here: loading a config file (flag parsing) must not import JAX (seconds).
    from comatch_jax.core import methods

    c, name, m = config, config.method, methods.get_method(config.method)
    must_be = {  # (what a value must be, its test): the fields
        ("positive", lambda v: v > 0): "batch_size num_steps num_labels log_every eval_every "
        "checkpoint_every keep_checkpoints eval_batch_size optim.lr comatch.temperature "
        "comatch.queue_size comatch.da_length fixmatch.da_length softmatch.n_sigma "
        "simclr.temperature dataset.image_size",
        (">= 0", lambda v: v >= 0): "seed mu optim.backbone_lr_scale fixmatch.lambda_u "
        "freematch.lambda_u freematch.lambda_f softmatch.lambda_u barlow_twins.lambda_offdiag",
        ("in [0, 1]", lambda v: 0 <= v <= 1): "comatch.alpha comatch.threshold fixmatch.threshold",
        ("in [0, 1)", lambda v: 0 <= v < 1): "ema.decay comatch.threshold_momentum "
        "freematch.momentum softmatch.momentum",
        ("in (0, 1)", lambda v: 0 < v < 1): "dataset.val_fraction",
    }
    one_of = {  # the values a field may take
        "nonfinite_policy": ("stop", "skip"),
        "comatch.threshold_rule": ("fixed", "freematch"),
        "autoencoder.loss": ("mse", "bce"),
        "optim.schedule": ("fixmatch_cosine", "cosine", "constant"),
        "dataset.source": ("auto", "tfds", "idx"),
        "dataset.corrupt_policy": ("fail", "skip"),
        "model.name": ("small_cnn", "wide_resnet", "resnet"),
        "model.stem": ("imagenet", "cifar"),
        "model.dtype": ("float32", "bfloat16", "float16"),
        "model.batch_norm": ("global", "per_device"),
    }
    checks = [
        (test(c[f]), f"{f} must be {what}, got {c[f]!r}")
        for (what, test), fields in must_be.items()
        for f in fields.split()
    ]
    checks += [
        (c[f] in values, f"{f} must be {' or '.join(map(repr, values))}, got {c[f]!r}")
        for f, values in one_of.items()
    ]
    needs_model = {
        "projector_widths": ("barlow_twins", "simsiam", "comatch_bt"),
        "predictor_widths": ("simsiam",),
        "decoder": ("autoencoder",),
    }
    checks += [
        (c.model[f] or name not in readers, f"method={name} needs model.{f} set")
        for f, readers in needs_model.items()
    ]
    checks += [
        (
            0 <= c.optim.head_warmup_steps < c.num_steps,
            f"optim.head_warmup_steps must be in [0, num_steps), got {c.optim.head_warmup_steps}",
        ),
        (c.mu > 0 or not m.unlabeled_views, f"method={name} needs unlabeled data: mu must be > 0"),
        (
            name != "softmatch" or c.batch_size * c.mu >= 2,
            "softmatch estimates a variance: batch_size * mu must be >= 2",
        ),
        (c.init_from != "", "fine-tuning needs --config.init_from=PRETRAINING_WORKDIR"),
        (
            not (c.init_from and c.model.init_from_torch),
            "set one of init_from (a comatch_jax run) and model.init_from_torch (PyTorch weights)",
        ),
    ]
    # An image folder's options on another dataset would train on that dataset instead.
    checks += [
        (
            c.dataset.name == "image_folder" or not c.dataset[f],
            f"dataset.{f} is set but dataset.name={c.dataset.name}; add "
            "--config.dataset.name=image_folder or use a :folder_cpu preset "
            "(e.g. --config=configs/comatch_adaptive.py:folder_cpu)",
        )
        for f in ("root", "cache_dir")
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"Invalid config: {message}")
