"""Every published preset builds its model and a whole train step, so presets cannot rot.

The heavy ones (WRN-28-8, ResNet-50 with 800 classes) are traced and shape-checked with
jax.eval_shape (the whole step: augment, forward, losses, update, queue, EMA); the CIFAR-10
preset (WRN-28-2) also runs one real step on tiny random inputs.
"""

import jax
import numpy as np
import pytest

from comatch_jax import config_lib, methods, models, train_state, train_step

PRESETS = {  # preset -> (image size used here, classes)
    "cifar10_40": (32, 10),
    "cifar10_250": (32, 10),
    "cifar10_4000": (32, 10),
    "cifar100_400": (32, 100),
    "cifar100_2500": (32, 100),
    "cifar100_10000": (32, 100),
    "stl10": (96, 10),
    "competition96": (96, 800),
}


def _step_and_inputs(preset, batch_size=2, mu=1):
    config = config_lib.apply_preset(config_lib.base_config(), preset)
    config_lib.validate_config(config)
    size, num_classes = PRESETS[preset]
    config.batch_size, config.mu = batch_size, mu
    method = methods.get_method(config.method)
    model = models.create_model(config.model, num_classes, (size, size, 3))
    tx = train_state.create_optimizer(config)
    init = lambda: train_state.create_train_state(
        jax.random.PRNGKey(0),
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


@pytest.mark.parametrize("preset", sorted(PRESETS))
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


def test_competition_preset_carries_the_papers_settings():
    config = config_lib.apply_preset(config_lib.base_config(), "competition96")
    assert (config.model.name, config.model.depth, config.batch_size, config.mu) == (
        "resnet",
        50,
        64,
        4,
    )
    c = config.comatch
    assert (
        c.lambda_cls,
        c.alpha,
        c.queue_size,
        c.temperature,
        c.threshold,
        c.contrast_threshold,
        c.lambda_ctr,
    ) == (10.0, 0.9, 30000, 0.1, 0.55, 0.25, 5.0)
    assert (
        config.optim.lr,
        config.optim.momentum,
        config.optim.weight_decay,
        config.optim.schedule,
    ) == (0.1, 0.9, 1e-4, "cosine")
    assert config.ema.teacher_weak_views and config.dataset.name == "image_folder"
