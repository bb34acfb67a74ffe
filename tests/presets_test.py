"""Every published preset validates, builds its model and a whole train step, so presets
cannot rot, and keeps the published values. Presets that differ only in num_labels (which the
step never reads) build the same step: it is traced once for them.

The heavy ones (WRN-28-8, ResNet-50 with 800 classes) are traced and shape-checked with
jax.eval_shape (the whole step: augment, forward, losses, update, queue, EMA); the CIFAR-10
preset (WRN-28-2) also runs one real step on tiny random inputs.
"""

import os

import jax
import numpy as np
import pytest

from comatch_jax import config_lib
from comatch_jax.core import methods, models, train_state, train_step
from comatch_jax.data import dataset

from adaptive_losses_test import jitted_loss

_config_file = config_lib.config_file


PRESETS = {  # preset -> (image size used here, classes)
    "cifar10_40": (32, 10),
    "cifar10_250": (32, 10),
    "cifar10_4000": (32, 10),
    "cifar100_400": (32, 100),
    "cifar100_2500": (32, 100),
    "cifar100_10000": (32, 100),
    "stl10": (96, 10),
    "competition96": (96, 800),
    "competition96_7p5": (96, 800),
}


def _step_and_inputs(preset, batch_size=2, mu=1):
    config = _config_file("comatch", preset)
    config_lib.validate_config(config)
    size, num_classes = PRESETS[preset]
    config.batch_size, config.mu = batch_size, mu
    if not config.dataset.mean:  # the data's own, as the trainer resolves them
        config.dataset.mean, config.dataset.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    method = methods.get_method(config.method)
    model = models.create_model(config.model, num_classes, (size, size, 3))
    tx = train_state.create_optimizer(config)
    init = lambda: train_state.create_train_state(
        jax.random.key(0),
        model=model,
        tx=tx,
        method=method,
        config=config,
        image_shape=(size, size, 3),
        num_classes=num_classes,
    )
    rng = np.random.default_rng(0)
    batch = {
        "labeled_images": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
        "labels": np.arange(batch_size, dtype=np.int32) % num_classes,
        "unlabeled_images": rng.integers(0, 256, (batch_size * mu, size, size, 3), dtype=np.uint8),
        "unlabeled_labels": np.zeros(batch_size * mu, np.int32),
    }
    return (
        config,
        init,
        train_step.make_train_step(model=model, tx=tx, method=method, config=config),
        batch,
    )


def _step_key(preset):
    """What the traced step depends on: the preset's config but num_labels (the data split),
    and the image size and classes used here."""
    config = _config_file("comatch", preset)
    config.num_labels = 0
    return config.to_json(), PRESETS[preset]


# The first preset of each group with the same _step_key (CIFAR-10's 40/250/4000, ...).
TRACED = sorted({_step_key(p): p for p in reversed(PRESETS)}.values())


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_validates(preset):
    config_lib.validate_config(_config_file("comatch", preset))


@pytest.mark.parametrize("preset", TRACED)
def test_preset_traces_a_whole_train_step(preset):
    config, init, step, batch = _step_and_inputs(preset)
    state = jax.eval_shape(init)
    new_state, metrics = jax.eval_shape(step, state, batch)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert metrics["loss"].shape == ()
    assert state.method_state["queue_embeddings"].shape == (
        config.comatch.queue_size,
        config.model.low_dim,
    )


def test_cifar10_preset_runs_one_real_step():
    config, init, step, batch = _step_and_inputs("cifar10_40")
    assert config.model.name == "wide_resnet" and config.model.widen_factor == 2
    assert (
        config.comatch.queue_size,
        config.comatch.threshold,
        config.comatch.contrast_threshold,
    ) == (2560, 0.95, 0.8)
    state, metrics = jax.jit(step)(jax.jit(init)(), batch)
    assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1


def test_competition_preset_behaves_as_the_papers_setup():
    """What the preset does, not what it sets: a ResNet-50 backbone over 96 px colour images
    with an 800-way classifier, a 30,000-entry queue, the teacher making the weak views'
    pseudo-labels, L = L_x + 10 L_cls + 5 L_ctr, a cosine learning rate from 0.1 to 0 and
    400 epochs of the 512,000 unlabeled images."""
    config, init, step, batch = _step_and_inputs("competition96")
    state = jax.eval_shape(init)
    backbone = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params["backbone"]))
    assert 23.4e6 < backbone < 23.6e6, backbone  # ResNet-50 without its fc: 23.5M
    assert state.params["classifier"]["kernel"].shape == (2048, 800)
    assert state.method_state["queue_embeddings"].shape[0] == 30000
    assert config.dataset.name == "image_folder" and config.dataset.image_size == 96

    # The student's one forward sees the labeled and the two strong views only: the weak
    # unlabeled view goes through the EMA model (eval mode), so the traced step applies the
    # backbone's first convolution to B + 2 B mu images, not B + 3 B mu.
    jaxpr = str(jax.make_jaxpr(step)(state, batch))
    size = 96
    student = config.batch_size * (1 + 2 * config.mu)
    assert f"f32[{student},{size},{size},3]" in jaxpr
    assert f"f32[{config.batch_size * (1 + 3 * config.mu)},{size},{size},3]" not in jaxpr

    # The loss weights, measured on the loss itself.
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    outputs = {
        name: {
            "logits": rng.normal(size=(4, 800)).astype(np.float32) * 5,
            "embedding": unit(rng.normal(size=(4, 64))).astype(np.float32),
        }
        for name in ("labeled_weak", "unlabeled_weak", "unlabeled_strong0", "unlabeled_strong1")
    }
    method = methods.get_method(config.method)
    loss, (_, metrics) = jitted_loss(method, config)(
        outputs,
        {"labels": np.arange(4, dtype=np.int32), "unlabeled_labels": np.zeros(4, np.int32)},
        method.init_state(config, 800, 64),
    )
    terms = metrics["loss_x"] + 10 * metrics["loss_u"] + 5 * metrics["loss_ctr"]
    assert float(loss) == pytest.approx(float(terms), rel=1e-6)

    schedule = train_state.learning_rate_schedule(config)
    total = config.num_steps
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(total // 2)) == pytest.approx(0.05, rel=1e-3)
    assert float(schedule(total)) == pytest.approx(0.0, abs=1e-9)
    published = _config_file("comatch", "competition96")
    epochs = total * published.batch_size * published.mu / 512000  # (here B=2, mu=1)
    assert epochs == pytest.approx(400, abs=0.01)


@pytest.mark.parametrize("preset", ["competition96", "competition96_7p5"])
def test_competition_rows_of_the_papers_table_1(preset):
    config = _config_file("comatch", preset)
    c = config.comatch
    if preset == "competition96":
        expected = (25600, 0.55, 0.25, 5.0)
    else:  # 7.5 % labels: tau 0.52, T 0.22, lambda_ctr 3, the rest as competition96
        expected = (38400, 0.52, 0.22, 3.0)
    assert (config.num_labels, c.threshold, c.contrast_threshold, c.lambda_ctr) == expected
    assert (c.lambda_cls, c.alpha, c.queue_size, c.temperature) == (10.0, 0.9, 30000, 0.1)
    assert (config.model.depth, config.batch_size, config.mu, config.optim.lr) == (50, 64, 4, 0.1)


@pytest.mark.parametrize("preset", ["cifar10_40", "cifar10_250", "cifar100_2500"])
def test_cifar_presets_are_the_official_train_comatch_recipe(preset):
    # github salesforce/CoMatch Train_CoMatch.py defaults and datasets/cifar.py views.
    config = _config_file("comatch", preset)
    assert config.method == "comatch"
    assert (config.batch_size, config.mu, config.num_steps) == (64, 7, 512 * 1024)
    o = config.optim
    assert (o.lr, o.momentum, o.nesterov, o.schedule, o.warmup_steps) == (
        0.03,
        0.9,
        True,
        "fixmatch_cosine",
        0,
    )
    assert o.weight_decay == (5e-4 if preset.startswith("cifar10_") else 1e-3)
    m = config.model
    assert (m.name, m.depth, m.low_dim, m.bn_momentum, m.bn_unbiased_running_var) == (
        "wide_resnet",
        28,
        64,
        0.999,
        True,
    )
    assert m.widen_factor == (2 if preset.startswith("cifar10_") else 8)
    c = config.comatch
    assert (c.alpha, c.temperature, c.contrast_threshold, c.threshold) == (0.9, 0.2, 0.8, 0.95)
    assert (c.lambda_cls, c.lambda_ctr, c.queue_size, c.da_length) == (1.0, 1.0, 2560, 32)
    assert c.queue_size == 5 * (config.mu + 1) * config.batch_size  # queue_batch 5
    assert c.distribution_alignment
    a = config.augment
    assert (a.weak, a.strong0, a.strong1) == ("weak", "randaugment", "simclr")
    assert (a.num_ops, a.op_prob, a.flip) == (2, 0.5, True)
    assert round(a.pad_fraction * 32) == 4 and round(a.cutout_fraction * 32) == 16
    assert (config.ema.decay, config.ema.average_batch_stats) == (0.999, False)
    # Normalised with the official code's CIFAR statistics, which the data carries (the
    # preset leaves dataset.mean/std to it).
    assert config.dataset.mean == config.dataset.std == ()
    assert (
        dataset.STANDARD_STATISTICS[config.dataset.name]
        == {
            "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
            "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        }[config.dataset.name]
    )


def test_every_config_file_takes_every_preset():
    """The config files only change fields of base_config, which is locked (a misspelt field
    would raise); each takes configs/comatch.py's presets."""
    names = sorted(n[:-3] for n in os.listdir(config_lib.CONFIGS_DIR) if n.endswith(".py"))
    assert len(names) == 12
    for preset in ["", *PRESETS, "folder_cpu", "fmnist40_gpu"]:
        reference = _config_file("comatch", preset)
        for name in names:
            config = _config_file(name, preset)
            assert config.is_locked
            assert (config.dataset.name, config.model.name, config.batch_size) == (
                reference.dataset.name,
                reference.model.name,
                reference.batch_size,
            )
    with pytest.raises(ValueError, match="Unknown preset 'cifar10_41'; expected '', 'cifar10_40'"):
        _config_file("fixmatch", "cifar10_41")


def test_the_gpu_evidence_and_stl10_presets():
    config = _config_file("comatch", "fmnist40_gpu")  # experiments/gpu_evidence.py, the notebook
    assert (config.dataset.name, config.num_labels, config.dataset.mean) == (
        "fashion_mnist",
        40,
        (),
    )
    m = config.model
    assert (m.name, m.depth, m.widen_factor, m.bn_momentum, m.dtype) == (
        "wide_resnet",
        28,
        2,
        0.99,
        "bfloat16",
    )
    assert (config.batch_size, config.mu, config.num_steps, config.comatch.queue_size) == (
        64,
        7,
        3000,
        2560,
    )
    assert (config.ema.decay, config.log_every, config.eval_every, config.checkpoint_every) == (
        0.995,
        100,
        1000,
        3000,
    )
    config = _config_file("comatch", "stl10")
    d, m = config.dataset, config.model
    assert (d.extra_unlabeled_split, d.include_labeled_in_unlabeled, config.num_labels) == (
        "unlabelled",
        True,
        5000,
    )
    assert (m.name, m.depth, m.stem, m.bn_momentum, config.num_steps) == (
        "resnet",
        18,
        "imagenet",
        0.999,
        512 * 1024,
    )
    assert dataset.STANDARD_STATISTICS["stl10"] == (
        (0.4409, 0.4279, 0.3868),
        (0.2683, 0.2610, 0.2687),
    )


def test_fixmatch_with_da_preset_is_the_official_train_fixmatch_script():
    config = _config_file("fixmatch", "cifar10_40_da")
    assert config.method == "fixmatch"
    f = config.fixmatch
    assert (f.distribution_alignment, f.da_length, f.threshold, f.lambda_u) == (True, 32, 0.95, 1.0)
    assert config.num_steps == 1024 * 1024  # --n-epoches 1024 of 1024 steps
    assert config.optim.schedule == "fixmatch_cosine" and config.dataset.name == "cifar10"
    plain = _config_file("fixmatch", "cifar10_40")
    assert not plain.fixmatch.distribution_alignment  # the FixMatch paper
    assert plain.num_steps == 512 * 1024
    assert not config_lib.base_config().fixmatch.distribution_alignment


@pytest.mark.parametrize("name", ["comatch_adaptive", "supervised", "fixmatch"])
def test_folder_cpu_preset_is_an_image_folder_at_32_px_for_20_minutes(name):
    config = _config_file(name, "folder_cpu")
    assert config.dataset.name == "image_folder" and config.dataset.image_size == 32
    assert config.num_steps == 7000 and config.dataset.mean == () and config.dataset.std == ()
    mu = 0 if name == "supervised" else 3  # supervised draws no unlabeled images
    assert config.model.name == "small_cnn" and (config.batch_size, config.mu) == (16, mu)
    assert config.method == {"supervised": "supervised"}.get(name, name.split("_")[0])
    if name == "comatch_adaptive":
        assert config.comatch.threshold_rule == "freematch"
    config.dataset.root = "/some/folder"
    config_lib.validate_config(config)  # a root is all a user adds
