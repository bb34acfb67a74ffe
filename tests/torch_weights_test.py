"""Weight transplant: the official CoMatch WRN-28-2 (PyTorch) into our Flax WRN-28-2.

The fixture tests/testdata/official_wrn28_2.npz was written once by
experiments/make_wrn_fixture.py from the official definition (github salesforce/CoMatch,
WideResNet.py); this test needs NumPy only, no torch.
"""

import functools
import os
import sys
import types
import urllib.error

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comatch_jax import config_lib
from comatch_jax.core import models, torch_weights

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


def _template(model):
    """The model's variables as `convert` takes them: the shapes of model.init (traced with
    jax.eval_shape, nothing compiled), filled with positive values from a NumPy RNG (the
    leaves a state dict lacks keep them)."""
    init = functools.partial(model.init, train=False)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype), shapes)


def _apply(model, variables, x, **kwargs):
    # jitted: one program instead of one per op
    return jax.jit(functools.partial(model.apply, **kwargs))(variables, x)


@pytest.fixture(scope="module")
def converted(official):
    model = _model()
    template = _template(model)
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
    out = _apply(model, variables, jnp.asarray(official["input"]), train=False)
    np.testing.assert_allclose(out["logits"], official["eval_logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["embedding"], official["eval_embedding"], rtol=0, atol=1e-4)
    # Not vacuous: the logits are not all alike.
    assert np.std(official["eval_logits"]) > 0.1


@pytest.mark.parametrize("tag,momentum", [("official", 0.999), ("batch", 0.0)])
def test_batch_norm_statistics_after_one_train_mode_forward(official, converted, tag, momentum):
    _, variables, _ = converted
    model = _model(momentum)
    out, updates = _apply(
        model, variables, jnp.asarray(official["input"]), train=True, mutable=["batch_stats"]
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
    template = _template(model)
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


# torchvision / timm ResNet-18 / 50. The state dict is rebuilt here from a seeded NumPy RNG
# (torch_weights.random_resnet_state_dict); tests/testdata/torchvision_resnet.npz holds the
# eval-mode outputs plain torch computed from it (experiments/make_resnet_fixture.py, with
# torchvision's module names and architecture). No torch needed here.
RESNET_FIXTURE = os.path.join(os.path.dirname(__file__), "testdata", "torchvision_resnet.npz")
TORCHVISION_PARAMETERS = {18: 11_689_512, 50: 25_557_032}  # torchvision's documented counts


@pytest.fixture(scope="module")
def resnet_outputs():
    with np.load(RESNET_FIXTURE) as data:
        return {key: data[key] for key in data.files}


def _resnet(depth, num_classes=1000):
    config = config_lib.base_config().model
    config.update(name="resnet", depth=depth, stem="imagenet", low_dim=16)
    model = models.create_model(config, num_classes=num_classes)
    template = _template(model)
    return model, template


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet_converts_to_the_same_features_and_logits(depth, resnet_outputs):
    state = torch_weights.random_resnet_state_dict(depth, seed=depth)
    model, template = _resnet(depth)
    lines = []
    variables, report = torch_weights.convert(
        state, "resnet", template, depth=depth, log=lines.append
    )
    # Every torchvision key is used; only our embedding head has no torchvision counterpart.
    assert sorted(report.loaded + report.ignored) == sorted(state)
    assert lines == [  # in the template's order (JAX rebuilds dicts with sorted keys)
        f"not in table: params/{n}/{l}"
        for n in ("head_hidden", "head_out")
        for l in ("bias", "kernel")
    ]
    parameters = sum(v.size for k, v in state.items() if k.endswith(("weight", "bias")))
    assert parameters == TORCHVISION_PARAMETERS[depth]
    # Per layer, our leaves hold as many numbers as the torch module's tensors.
    for layer in torch_weights.resnet_mapping(depth):
        torch_count = sum(
            v.size
            for k, v in state.items()
            if k.rsplit(".", 1)[0] == layer.torch_name and not k.endswith("num_batches_tracked")
        )
        flax_count = 0
        for collection in ("params", "batch_stats"):
            tree = variables[collection]
            for name in layer.flax_path:
                tree = tree.get(name, {})
            flax_count += sum(np.size(leaf) for leaf in jax.tree.leaves(tree))
        assert flax_count == torch_count, layer.torch_name
    out = _apply(model, variables, jnp.asarray(resnet_outputs[f"resnet{depth}/input"]), train=False)
    expected = resnet_outputs[f"resnet{depth}/features"]
    np.testing.assert_allclose(out["features"], expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        out["logits"], resnet_outputs[f"resnet{depth}/logits"], rtol=0, atol=1e-4
    )
    assert np.std(expected) > 0.1  # not vacuous


def test_timm_resnet_uses_the_torchvision_table_and_module_prefixes_strip():
    # timm's resnet18/50 (default downsample) name every module as torchvision does.
    table = torch_weights.resnet_mapping(50)
    assert [l.torch_name for l in table[:2]] == ["conv1", "bn1"]
    assert table[-1].torch_name == "fc" and table[-1].flax_path == ("classifier",)
    assert sum(l.torch_name.endswith("downsample.0") for l in table) == 4
    assert sum(l.torch_name.endswith("downsample.0") for l in torch_weights.resnet_mapping(18)) == 3
    state = {f"module.{k}": v for k, v in torch_weights.random_resnet_state_dict(18).items()}
    _, template = _resnet(18, num_classes=10)
    lines = []
    _, report = torch_weights.convert(
        state, "resnet", template, depth=18, strip_prefix="module.", log=lines.append
    )
    # A 1000-way fc does not fit 10 classes: reported, and the classifier stays fresh.
    assert (
        "mis-shaped: fc.weight (1000, 512) -> params/classifier/kernel expects (512, 10)" in lines
    )
    assert "fc.weight" not in report.loaded and "conv1.weight" in report.loaded


def _one_line_error(function, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match) as error:
        function()
    assert "\n" not in str(error.value)
    return str(error.value)


def test_bad_state_dicts_are_one_line_errors(official):
    _, template = _resnet(18)
    state = torch_weights.random_resnet_state_dict(18)
    quiet = dict(depth=18, log=None)
    # Another architecture (the official WRN's keys).
    _one_line_error(
        lambda: torch_weights.convert(_state(official), "resnet", template, **quiet),
        r"another architecture: none of the .* required keys \(first 'conv1.weight'\)",
    )
    # Another depth: ResNet-18 weights into a ResNet-50.
    _, template50 = _resnet(50)
    _one_line_error(
        lambda: torch_weights.convert(state, "resnet", template50, depth=50, log=None),
        r"required \(backbone\) keys missing or mis-shaped",
    )
    missing = {k: v for k, v in state.items() if k != "layer3.1.bn2.running_var"}
    _one_line_error(
        lambda: torch_weights.convert(missing, "resnet", template, **quiet),
        r"1 required \(backbone\) keys .* first 'layer3.1.bn2.running_var'",
    )
    wrong = dict(state, **{"conv1.weight": np.zeros((64, 3, 3, 3), np.float32)})
    lines = []
    _one_line_error(
        lambda: torch_weights.convert(wrong, "resnet", template, depth=18, log=lines.append),
        r"first 'conv1.weight'",
    )
    assert lines[0] == (
        "mis-shaped: conv1.weight (64, 3, 3, 3) -> params/backbone/Conv_0/kernel expects "
        "(7, 7, 3, 64)"
    )
    with pytest.raises(ValueError, match="ResNet depth must be one of"):
        torch_weights.resnet_mapping(101)


def test_safetensors_file_round_trip_and_a_truncated_file(tmp_path):
    from safetensors.numpy import save_file

    state = torch_weights.random_resnet_state_dict(18, num_classes=10, seed=3)
    path = str(tmp_path / "resnet18.safetensors")
    save_file(state, path)
    loaded = torch_weights.load_state_dict(path)
    assert sorted(loaded) == sorted(state)
    for key in state:
        np.testing.assert_array_equal(loaded[key], state[key])
    with open(path, "rb") as f:
        data = f.read()
    truncated = str(tmp_path / "truncated.safetensors")
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    _one_line_error(lambda: torch_weights.load_state_dict(truncated), "may be truncated")
    _one_line_error(
        lambda: torch_weights.load_state_dict(str(tmp_path / "absent.safetensors")),
        "no such file",
    )
    other = str(tmp_path / "weights.npz")
    open(other, "wb").close()
    _one_line_error(lambda: torch_weights.load_state_dict(other), "expected a .safetensors")


def test_pth_without_torch_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "resnet.pth"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    message = _one_line_error(lambda: torch_weights.load_state_dict(str(path)), "needs PyTorch")
    assert message == (
        "reading .pth needs PyTorch: pip install torch, or convert the file to .safetensors"
    )


def test_pth_with_torch_round_trip_and_truncated(tmp_path):
    # Needs torch (not a dependency); the same conversion is covered by the safetensors test.
    torch = pytest.importorskip("torch")
    state = torch_weights.random_resnet_state_dict(18, num_classes=10, seed=4)
    path = str(tmp_path / "resnet18.pth")
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state.items()}}, path)
    loaded = torch_weights.load_state_dict(path)
    assert sorted(loaded) == sorted(state)
    np.testing.assert_array_equal(loaded["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])
    _one_line_error(lambda: torch_weights.load_state_dict(path), "may be truncated")


def test_named_sources_not_installed_and_offline(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    _one_line_error(
        lambda: torch_weights.load_state_dict("torchvision:resnet50"),
        r"needs the torchvision package, which is not installed \(pip install torchvision\)",
    )
    monkeypatch.setitem(sys.modules, "timm", None)
    _one_line_error(
        lambda: torch_weights.load_state_dict("timm:resnet50.a1_in1k"),
        "needs the timm package",
    )

    # Installed but offline: the package's download raises URLError (an OSError).
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(get_model=offline)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    _one_line_error(
        lambda: torch_weights.load_state_dict("torchvision:resnet50"),
        r"could not download the weights \(offline\?",
    )
    _one_line_error(lambda: torch_weights.load_state_dict("torchvision:"), "a named source is")
