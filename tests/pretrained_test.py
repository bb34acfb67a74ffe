"""Starting from PyTorch weights: normalisation, loading into raw + EMA, the fine-tuning
options (backbone lr scale, heads-only warm start, frozen BatchNorm), and a short ResNet-18
run from converted weights that resumes identically. NumPy + safetensors only (no torch)."""

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from comatch_jax import config_lib, data as datasets
from comatch_jax.core import models, torch_weights
from comatch_jax.core import train_state
from comatch_jax.data import pipeline as training_data
from comatch_jax.trainer import pretrained, saved_runs as runs, train


def _leaves(tree):
    return [
        np.asarray(
            jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        )
        for x in jax.tree.leaves(jax.device_get(tree))
    ]


def _data(channels):
    """SemiSupervisedData as prepare_data leaves it, normalised with the data's own values."""
    images, labels = np.zeros((2, 4, 4, channels), np.uint8), np.zeros((2,), np.int32)
    return training_data.SemiSupervisedData(
        labeled_images=images,
        labels=labels,
        unlabeled_images=images,
        unlabeled_labels=labels,
        labeled_ids=labels,
        unlabeled_ids=labels,
        test_images=images,
        test_labels=labels,
        num_classes=2,
        class_names=("a", "b"),
        source="test",
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )


def test_imagenet_normalisation_unless_the_user_set_one():
    config = config_lib.base_config()
    data = _data(3)
    assert pretrained.with_pretrained_normalization(config, data) is data  # no torch weights
    config.model.init_from_torch = "w.safetensors"
    resolved = pretrained.with_pretrained_normalization(config, data)
    assert (resolved.mean, resolved.std) == (config_lib.IMAGENET_MEAN, config_lib.IMAGENET_STD)
    # 1-channel images: the single-channel equivalent, the mean of ImageNet's three.
    gray = pretrained.with_pretrained_normalization(config, _data(1))
    assert (gray.mean, gray.std) == ((0.449,), (0.226,))
    config.dataset.mean, config.dataset.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    assert pretrained.with_pretrained_normalization(config, data) is data  # the user's values


def _config(**optim):
    config = config_lib.base_config()
    config.model.update(name="resnet", depth=18, stem="imagenet", low_dim=8)
    config.num_steps = 10
    config.optim.update(schedule="constant", lr=0.1, **optim)
    return config


def _params():
    return {
        "backbone": {"Conv_0": {"kernel": jnp.ones((2, 2))}},
        "classifier": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros((3,))},
    }


def _updates(config, steps):
    tx = train_state.create_optimizer(config)
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    opt_state = tx.init(params)
    history = []
    for _ in range(steps):
        updates, opt_state = tx.update(grads, opt_state, params)
        history.append(updates)
    return history


def test_backbone_lr_scale_scales_the_backbone_update_only():
    plain = _updates(_config(), 2)
    scaled = _updates(_config(backbone_lr_scale=0.1), 2)
    for step in range(2):
        np.testing.assert_allclose(
            scaled[step]["backbone"]["Conv_0"]["kernel"],
            0.1 * plain[step]["backbone"]["Conv_0"]["kernel"],
            rtol=1e-6,
        )
        for a, b in zip(
            jax.tree.leaves(scaled[step]["classifier"]), jax.tree.leaves(plain[step]["classifier"])
        ):
            np.testing.assert_array_equal(a, b)
    assert np.all(plain[0]["backbone"]["Conv_0"]["kernel"] != 0)  # not vacuous


def test_head_warmup_trains_only_the_heads_then_the_backbone_starts_fresh():
    plain = _updates(_config(), 4)
    warm = _updates(_config(head_warmup_steps=2), 4)
    for step in range(4):
        for a, b in zip(
            jax.tree.leaves(warm[step]["classifier"]), jax.tree.leaves(plain[step]["classifier"])
        ):
            np.testing.assert_array_equal(a, b)
    for step in (0, 1):
        assert np.all(warm[step]["backbone"]["Conv_0"]["kernel"] == 0)
    # From step 2 the backbone moves as a fresh SGD (no momentum gathered while frozen).
    np.testing.assert_allclose(
        warm[2]["backbone"]["Conv_0"]["kernel"], plain[0]["backbone"]["Conv_0"]["kernel"]
    )
    np.testing.assert_allclose(
        warm[3]["backbone"]["Conv_0"]["kernel"], plain[1]["backbone"]["Conv_0"]["kernel"]
    )


def test_invalid_fine_tuning_options_are_one_line_errors():
    for field, value, match in [
        ("backbone_lr_scale", -1.0, "backbone_lr_scale must be >= 0"),
        ("head_warmup_steps", 10, r"head_warmup_steps must be in \[0, num_steps\)"),
    ]:
        config = _config(**{field: value})
        with pytest.raises(ValueError, match=match):
            config_lib.validate_config(config)
    config = _config()
    config.init_from, config.model.init_from_torch = "run", "w.safetensors"
    with pytest.raises(ValueError, match="set one of init_from"):
        config_lib.validate_config(config)


def test_frozen_backbone_batch_norm_keeps_its_statistics_and_uses_them():
    config = _config().model
    config.freeze_backbone_bn = True
    model = models.create_model(config, num_classes=10)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    # Non-trivial running statistics, so that using them differs from batch statistics (and
    # leaves the features non-zero: a shifted-up mean would make every ReLU output 0).
    moved_statistics = lambda path, v: v - 0.1 if path[-1].key == "mean" else v * 2.0
    stats = jax.tree_util.tree_map_with_path(moved_statistics, variables["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": stats}
    images = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    # The forwards jitted: one program each instead of one per op. The init stays eager: the
    # tests below that initialise the same model reuse its per-op programs.
    train_apply = lambda model: jax.jit(
        functools.partial(model.apply, train=True, mutable=["batch_stats"])
    )
    out, updates = train_apply(model)(variables, images)
    for a, b in zip(
        jax.tree.leaves(updates["batch_stats"]["backbone"]), jax.tree.leaves(stats["backbone"])
    ):
        np.testing.assert_array_equal(a, b)
    eval_out = jax.jit(functools.partial(model.apply, train=False))(variables, images)
    assert np.abs(out["features"]).max() > 0.1
    np.testing.assert_allclose(out["features"], eval_out["features"], rtol=1e-5, atol=1e-6)
    config.freeze_backbone_bn = False
    batch_out, moved = train_apply(models.create_model(config, num_classes=10))(variables, images)
    assert np.abs(batch_out["features"] - out["features"]).max() > 0.1  # batch statistics
    assert not np.allclose(
        moved["batch_stats"]["backbone"]["BatchNorm_0"]["mean"],
        stats["backbone"]["BatchNorm_0"]["mean"],
    )


def _synthetic(size=32, channels=3):
    rng = np.random.default_rng(0)

    def make(n):
        labels = np.arange(n, dtype=np.int32) % 4
        images = rng.integers(0, 40, size=(n, size, size, channels))
        images += labels[:, None, None, None] * 50
        return images.astype(np.uint8), labels

    (train_images, train_labels), (test_images, test_labels) = make(24), make(8)
    return datasets.ImageDataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=4,
        class_names=("a", "b", "c", "d"),
        source="synthetic (test)",
    )


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("weights") / "resnet18.safetensors")
    state = torch_weights.random_resnet_state_dict(18, seed=5)  # 1000-way fc: classifier fresh
    save_file(state, path)
    return path, state


def test_initialise_from_torch_loads_raw_and_ema_and_keeps_a_fresh_classifier(weights):
    path, state_dict = weights
    config = _config()
    config.model.init_from_torch = path
    config.dataset.mean, config.dataset.std = config_lib.IMAGENET_MEAN, config_lib.IMAGENET_STD
    _, model, _, init_state = runs.build_training(config, 4, (32, 32, 3))
    fresh = init_state(jax.random.key(0))
    lines = []
    state = pretrained.initialise_from_torch(fresh, config, log=lines.append)
    assert len(lines) == 1
    assert lines[0].startswith(f"Loaded 100 tensors of {path} (resnet, depth=18, stem=imagenet)")
    assert "into the backbone (raw and EMA); fresh: classifier, head_hidden, head_out" in lines[0]
    assert "mean (0.485, 0.456, 0.406)" in lines[0]
    expected, _ = torch_weights.convert(
        state_dict,
        "resnet",
        jax.device_get({"params": fresh.params, "batch_stats": fresh.batch_stats}),
        depth=18,
        log=None,
    )
    for tree in (state.params, state.ema_params):
        np.testing.assert_array_equal(
            tree["backbone"]["Conv_0"]["kernel"],
            np.transpose(state_dict["conv1.weight"], (2, 3, 1, 0)),
        )
        for a, b in zip(_leaves(tree), _leaves(expected["params"])):
            np.testing.assert_array_equal(a, b)
    for tree in (state.batch_stats, state.ema_batch_stats):
        np.testing.assert_array_equal(
            tree["backbone"]["BatchNorm_0"]["var"], state_dict["bn1.running_var"]
        )
    np.testing.assert_array_equal(  # the 4-way classifier keeps its initialisation
        state.params["classifier"]["kernel"], fresh.params["classifier"]["kernel"]
    )


def test_a_model_without_a_torch_layout_is_one_line(weights):
    config = config_lib.base_config()
    config.model.init_from_torch = weights[0]
    _, _, _, init_state = runs.build_training(config, 4, (32, 32, 3))
    with pytest.raises(ValueError, match="needs model.name resnet or wide_resnet"):
        # init_state jitted: one program, not one per op
        pretrained.initialise_from_torch(jax.jit(init_state)(jax.random.key(0)), config)


def test_rgb_weights_on_gray_images_sum_conv1_over_its_input_channels(weights):
    """ImageNet weights on 1-channel images: conv1's kernel [64, 3, 7, 7] is summed over its
    input channels (timm's adapt_input_conv for in_chans=1), said in one log line (the run
    below trains so on gray images)."""
    path, state_dict = weights
    config = _config()
    config.model.init_from_torch = path
    _, _, _, init_state = runs.build_training(config, 4, (32, 32, 1))
    lines = []
    state = pretrained.initialise_from_torch(
        init_state(jax.random.key(0)), config, log=lines.append
    )
    assert lines[0] == (
        "The weights expect 3 input channels and the images have 1: their first convolution "
        "(conv1.weight) is summed over its input channels, as timm does for in_chans=1."
    )
    summed = np.transpose(state_dict["conv1.weight"].sum(axis=1, keepdims=True), (2, 3, 1, 0))
    np.testing.assert_array_equal(state.params["backbone"]["Conv_0"]["kernel"], summed)


def _run_config(path):
    config = config_lib.base_config()
    config.method = "supervised"
    config.mu = 0
    config.num_labels = 8
    config.batch_size = 4
    config.num_steps = 4
    config.log_every = config.eval_every = config.checkpoint_every = 2
    config.eval_batch_size = 8
    config.model.update(
        name="resnet",
        depth=18,
        stem="imagenet",
        low_dim=8,
        init_from_torch=path,
        freeze_backbone_bn=True,
    )
    config.optim.update(lr=0.01, backbone_lr_scale=0.1, head_warmup_steps=1)
    return config


class _Writer:
    def write_scalars(self, step, scalars):
        pass

    def flush(self):
        pass


def test_a_short_run_from_converted_weights_resumes_identically(weights, tmp_path):
    """On 1-channel images: ImageNet's RGB weights with conv1 summed over its input channels
    and ImageNet's single-channel mean/std (the user set none)."""
    path, state_dict = weights
    gray = _synthetic(channels=1)
    full, _ = train.train_and_evaluate(
        _run_config(path), str(tmp_path / "full"), writer=_Writer(), dataset=gray
    )
    with open(tmp_path / "full" / "config.json") as f:
        saved = json.load(f)["dataset"]
    assert (tuple(saved["mean"]), tuple(saved["std"])) == ((0.449,), (0.226,))
    # Frozen backbone BN: its statistics are still the converted ones after training.
    np.testing.assert_array_equal(
        full.batch_stats["backbone"]["BatchNorm_0"]["mean"], state_dict["bn1.running_mean"]
    )
    # A run killed after its step-2 checkpoint resumes to the same final state.
    shutil.copytree(tmp_path / "full", tmp_path / "killed")
    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "4")
    resumed, _ = train.train_and_evaluate(
        _run_config(path), str(tmp_path / "killed"), writer=_Writer(), dataset=gray
    )
    assert int(resumed.step) == 4
    for a, b in zip(_leaves(full), _leaves(resumed)):
        np.testing.assert_array_equal(a, b)
