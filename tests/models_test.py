import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comatch_jax import config_lib, models


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
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
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


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown model.name"):
        models.create_model(_model_config(name="vgg"), 10)


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
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
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
