import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comatch_jax import config_lib
from comatch_jax.core import models


def _model_config(**overrides):
    config = config_lib.base_config().model
    config.update(overrides)
    return config


@pytest.mark.parametrize(
    "overrides,size",
    [
        (dict(name="small_cnn", widths=(8, 16)), 28),
        (dict(name="wide_resnet", depth=10, widen_factor=1), 32),
        (dict(name="resnet", depth=18, stem="imagenet"), 64),
        (dict(name="small_cnn", widths=(8,), dtype="bfloat16"), 16),
    ],
)
def test_models_give_logits_and_unit_embeddings(overrides, size):
    model = models.create_model(_model_config(low_dim=16, **overrides), num_classes=5)
    x = jnp.ones((2, size, size, 3))
    # jitted: one program each instead of one per op
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), x)
    apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    out, updates = apply(variables, x)
    assert out["logits"].shape == (2, 5) and out["logits"].dtype == jnp.float32
    np.testing.assert_allclose(jnp.linalg.norm(out["embedding"], axis=-1), 1.0, rtol=1e-4)
    # Parameters stay float32 whatever the activation dtype.
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    assert "batch_stats" in updates


def test_wide_resnet_28_2_has_the_published_parameter_count():
    model = models.create_model(_model_config(name="wide_resnet", depth=28, widen_factor=2), 10)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.ones((1, 32, 32, 3)), train=False)
    )
    count = sum(np.prod(p.shape) for p in jax.tree.leaves(shapes["params"]["backbone"]))
    assert 1.46e6 < count < 1.48e6  # WRN-28-2: 1.47 M parameters without the heads


def test_optional_ssl_heads_and_decoder():
    config = _model_config(
        name="small_cnn",
        widths=(8, 16),
        projector_widths=(32, 32, 24),
        predictor_widths=(8, 24),
        decoder=True,
        decoder_width=8,
    )
    model = models.create_model(config, num_classes=3, image_shape=(14, 14, 1))
    x = jnp.ones((4, 14, 14, 1))
    # jitted: one program each instead of one per op
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), x)
    apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    out, _ = apply(variables, x)
    assert out["projection"].shape == (4, 24)
    assert out["prediction"].shape == (4, 24)
    assert out["reconstruction"].shape == (4, 14, 14, 1)
    assert set(variables["params"]) >= {
        "backbone",
        "classifier",
        "projector",
        "predictor",
        "decoder",
    }


def _bn_pair(dtype, momentum=0.9):
    ours = models.BatchNorm(use_running_average=False, momentum=momentum, dtype=dtype)
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=momentum, dtype=dtype)
    return ours, flax_bn


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_batch_norm_with_one_group_is_flax_batch_norm(dtype):
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 5, 5, 6)) * 3 + 1
    ours, flax_bn = _bn_pair(dtype)
    variables = flax_bn.init(jax.random.PRNGKey(1), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == jax.tree.map(
        jnp.shape, variables
    )
    variables = {
        "params": {"scale": jnp.linspace(0.5, 2, 6), "bias": jnp.linspace(-1, 1, 6)},
        "batch_stats": variables["batch_stats"],
    }
    y_ours, new_ours = ours.apply(variables, x, mutable=["batch_stats"])
    y_flax, new_flax = flax_bn.apply(variables, x, mutable=["batch_stats"])
    assert y_ours.dtype == y_flax.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.float32(y_ours), np.float32(y_flax), rtol=tol, atol=tol)
    for key in ("mean", "var"):
        np.testing.assert_allclose(
            new_ours["batch_stats"][key], new_flax["batch_stats"][key], rtol=1e-5, atol=1e-6
        )
    eval_ours = ours.clone(use_running_average=True).apply({**variables, **new_ours}, x)
    eval_flax = flax_bn.clone(use_running_average=True).apply({**variables, **new_flax}, x)
    np.testing.assert_allclose(np.float32(eval_ours), np.float32(eval_flax), rtol=tol, atol=tol)


def test_grouped_batch_norm_normalises_each_chunk_with_its_own_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3, 3, 4)).astype(np.float32) * rng.uniform(0.5, 4, size=4) + 2.0
    groups, momentum, eps = 3, 0.9, 1e-5
    bn = models.BatchNorm(use_running_average=False, momentum=momentum, groups=groups)
    variables = bn.init(jax.random.PRNGKey(0), x)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    # NumPy: chunk g = images 4g..4g+3, statistics over its images and pixels.
    chunks = x.reshape(groups, 4, 3, 3, 4)
    means = chunks.mean(axis=(1, 2, 3), keepdims=True)
    variances = chunks.var(axis=(1, 2, 3), keepdims=True)
    expected = ((chunks - means) / np.sqrt(variances + eps)).reshape(x.shape)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        updates["batch_stats"]["mean"], (1 - momentum) * means.mean(axis=0).ravel(), rtol=1e-5
    )
    np.testing.assert_allclose(
        updates["batch_stats"]["var"],
        momentum + (1 - momentum) * variances.mean(axis=0).ravel(),
        rtol=1e-5,
    )
    # It differs from one-group (global) statistics on data whose chunks differ.
    y_global = models.BatchNorm(use_running_average=False).apply(
        variables, x + np.arange(12).reshape(12, 1, 1, 1), mutable=["batch_stats"]
    )[0]
    y_grouped = bn.apply(
        variables, x + np.arange(12).reshape(12, 1, 1, 1), mutable=["batch_stats"]
    )[0]
    assert np.abs(np.asarray(y_global) - np.asarray(y_grouped)).max() > 0.1


@pytest.mark.parametrize("groups", [1, 2])
def test_unbiased_running_variance_is_pytorchs(groups):
    # torch.nn.BatchNorm2d: running_var <- (1 - m) running_var + m * unbiased batch variance.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3, 3, 2)).astype(np.float32) * 2 + 1
    bn = models.BatchNorm(
        use_running_average=False, momentum=0.9, groups=groups, unbiased_running_var=True
    )
    variables = bn.init(jax.random.PRNGKey(0), x)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    chunks = x.reshape(groups, -1, 2)
    unbiased = chunks.var(axis=1, ddof=1).mean(axis=0)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * unbiased, rtol=1e-5)
    # Normalisation itself uses the biased variance.
    biased = chunks.var(axis=1, keepdims=True)
    expected = (chunks - chunks.mean(axis=1, keepdims=True)) / np.sqrt(biased + 1e-5)
    np.testing.assert_allclose(y, expected.reshape(x.shape), rtol=1e-4, atol=1e-4)


def test_every_batch_norm_takes_the_model_configs_settings():
    """One BatchNorm setting per model config, for the backbone and the heads alike: the
    base default (PyTorch's unbiased running variance) reaches them, as do the others."""
    config = config_lib.base_config().model
    assert config.bn_unbiased_running_var
    config.update(bn_momentum=0.5, dtype="bfloat16", freeze_backbone_bn=True)
    model = models.create_model(config, 10)
    backbone, heads = model.backbone.norm.keywords, model.norm.keywords
    for settings in (backbone, heads):
        assert (settings["momentum"], settings["unbiased_running_var"]) == (0.5, True)
    assert (backbone["dtype"], backbone["frozen"]) == (jnp.bfloat16, True)
    assert heads["dtype"] == jnp.float32 and "frozen" not in heads


def test_batch_norm_mode_sets_the_groups():
    config = config_lib.base_config().model
    assert models.create_model(config, 10, num_devices=4).bn_groups == 1  # global
    config.batch_norm = "per_device"
    model = models.create_model(config, 10, num_devices=4)
    assert model.bn_groups == 4
    assert model.backbone.norm.keywords["groups"] == model.norm.keywords["groups"] == 4


@pytest.mark.parametrize("shape", [(3, 8, 8, 4), (2, 7, 9, 3)])
def test_max_pool_2x2_is_flax_max_pool_with_the_same_gradient(shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    reference = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
    # Both sides jitted alike: one program each instead of one per op.
    np.testing.assert_array_equal(jax.jit(models.max_pool_2x2)(x), jax.jit(reference)(x))
    loss = lambda pool: lambda x: jnp.sum(pool(x) ** 2 * jnp.arange(shape[-1]))
    np.testing.assert_array_equal(
        jax.jit(jax.grad(loss(models.max_pool_2x2)))(x), jax.jit(jax.grad(loss(reference)))(x)
    )


def test_default_xla_cpu_flag_respects_the_users_flags(monkeypatch):
    from comatch_jax import cli

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=reduce")
    cli.apply_default_cpu_flags()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=reduce"
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    monkeypatch.setenv("COMATCH_JAX_KEEP_XLA_FLAGS", "1")
    cli.apply_default_cpu_flags()
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    monkeypatch.delenv("COMATCH_JAX_KEEP_XLA_FLAGS")
    cli.apply_default_cpu_flags()
    from importlib.metadata import version

    if version("jaxlib").startswith("0.10."):
        assert os.environ["XLA_FLAGS"] == (
            "--xla_force_host_platform_device_count=2 " + cli.DEFAULT_CPU_FLAG
        )
