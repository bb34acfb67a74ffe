"""Weight transplant: the official CoMatch WRN-28-2 (PyTorch) into our Flax WRN-28-2.

The fixture tests/testdata/official_wrn28_2.npz was written once by
experiments/make_wrn_fixture.py from the official definition (github salesforce/CoMatch,
WideResNet.py); this test needs NumPy only, no torch.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comatch_jax import config_lib, models, torch_weights

FIXTURE = os.path.join(os.path.dirname(__file__), "testdata", "official_wrn28_2.npz")


@pytest.fixture(scope="module")
def official():
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


def _state(official):
    return {k[len("state/") :]: v for k, v in official.items() if k.startswith("state/")}


def _model(momentum=0.999):
    config = config_lib.base_config().model
    config.update(
        name="wide_resnet",
        depth=28,
        widen_factor=2,
        low_dim=64,
        bn_momentum=momentum,
        bn_unbiased_running_var=True,
    )
    return models.create_model(config, num_classes=10)


@pytest.fixture(scope="module")
def converted(official):
    model = _model()
    template = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    variables, report = torch_weights.convert(
        _state(official), "wide_resnet", template, depth=28, widen_factor=2
    )
    return model, variables, report


def test_every_official_key_is_loaded_and_every_flax_leaf_filled(official, converted):
    _, variables, report = converted
    state = _state(official)
    assert report.lines() == []  # nothing missing, unexpected, mis-shaped or unmapped
    assert sorted(report.loaded + report.ignored) == sorted(state)
    assert all(key.endswith("num_batches_tracked") for key in report.ignored)
    assert len(report.ignored) == 25  # one per BatchNorm: 12 blocks x 2 + bn_last


def test_parameter_counts_are_equal_per_layer(official, converted):
    _, variables, _ = converted
    state = _state(official)
    torch_counts, flax_counts = {}, {}
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            module = key.rsplit(".", 1)[0]
            torch_counts[module] = torch_counts.get(module, 0) + value.size
    for layer in torch_weights.wide_resnet_mapping(28, 2):
        count = 0
        for collection in ("params", "batch_stats"):
            tree = variables[collection]
            for name in layer.flax_path:
                tree = tree.get(name, {})
            count += sum(np.size(leaf) for leaf in jax.tree.leaves(tree))
        flax_counts[layer.torch_name] = count
    assert flax_counts == torch_counts
    assert sum(torch_counts.values()) == 1_495_994  # parameters + running statistics


def test_eval_mode_logits_and_embeddings_match_the_official_model(official, converted):
    model, variables, _ = converted
    out = model.apply(variables, jnp.asarray(official["input"]), train=False)
    np.testing.assert_allclose(out["logits"], official["eval_logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["embedding"], official["eval_embedding"], rtol=0, atol=1e-4)
    # Not vacuous: the logits are not all alike.
    assert np.std(official["eval_logits"]) > 0.1


@pytest.mark.parametrize("tag,momentum", [("official", 0.999), ("batch", 0.0)])
def test_batch_norm_statistics_after_one_train_mode_forward(official, converted, tag, momentum):
    _, variables, _ = converted
    model = _model(momentum)
    out, updates = model.apply(
        variables, jnp.asarray(official["input"]), train=True, mutable=["batch_stats"]
    )
    if tag == "official":
        np.testing.assert_allclose(out["logits"], official["train_logits"], rtol=0, atol=1e-4)
    expected = {k[len(tag) + 1 :]: v for k, v in official.items() if k.startswith(tag + "/")}
    table = {layer.torch_name: layer for layer in torch_weights.wide_resnet_mapping(28, 2)}
    assert len(expected) == 50
    for key, value in expected.items():
        module, leaf = key.rsplit(".", 1)
        stats = updates["batch_stats"]
        for name in table[module].flax_path:
            stats = stats[name]
        ours = stats["mean" if leaf == "running_mean" else "var"]
        np.testing.assert_allclose(ours, value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_missing_backbone_key_is_one_line_error_and_head_keys_are_optional(official):
    model = _model()
    template = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    state = _state(official)
    lines = []
    heads_dropped = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    variables, report = torch_weights.convert(
        heads_dropped, "wide_resnet", template, depth=28, widen_factor=2, log=lines.append
    )
    assert lines == ["missing: classifier.weight", "missing: classifier.bias"]
    np.testing.assert_array_equal(
        variables["params"]["classifier"]["kernel"], template["params"]["classifier"]["kernel"]
    )
    broken = dict(state)
    del broken["backbone.layer2.0.conv1.weight"]
    broken["backbone.layer3.0.bn1.weight"] = np.ones(3, np.float32)
    broken["extra.weight"] = np.ones(2, np.float32)
    lines = []
    with pytest.raises(ValueError, match=r"2 required \(backbone\) keys") as error:
        torch_weights.convert(
            broken, "wide_resnet", template, depth=28, widen_factor=2, log=lines.append
        )
    assert "\n" not in str(error.value)
    assert lines == [
        "missing: backbone.layer2.0.conv1.weight",
        "unexpected: extra.weight",
        "mis-shaped: backbone.layer3.0.bn1.weight (3,) -> params/backbone/layer3_0/bn1/scale "
        "expects (64,)",
    ]
    with pytest.raises(ValueError, match="Unknown architecture"):
        torch_weights.convert(state, "vgg", template)


def test_mapping_tables():
    table = torch_weights.wide_resnet_mapping(28, 2)
    assert len(table) == 1 + 3 * 4 * 4 + 3 + 1 + 3  # stem, blocks, downsamples, bn_last, heads
    narrow = torch_weights.wide_resnet_mapping(10, 1)  # widen 1: no downsample in layer1
    assert not any(l.torch_name == "backbone.layer1.0.downsample" for l in narrow)
    assert any(l.torch_name == "backbone.layer2.0.downsample" for l in narrow)
    with pytest.raises(ValueError, match="6n\\+4"):
        torch_weights.wide_resnet_mapping(27, 2)
    with pytest.raises(ValueError, match="kind"):
        torch_weights.LayerMapping("a", ("a",), "pool")
