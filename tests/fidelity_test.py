"""The official CoMatch recipe, fact by fact (github salesforce/CoMatch).

Learning-rate schedule (utils.py), weight decay (Train_CoMatch.py), WRN block structure and
initialisation (WideResNet.py), DA without NaN, float32 heads and losses under bfloat16.
The weight transplant is tests/torch_weights_test.py; augmentations tests/augment_test.py;
presets tests/presets_test.py.
"""

import functools

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comatch_jax import config_lib
from comatch_jax.core import losses, methods, models, torch_weights, train_state


def _schedule_config(schedule="fixmatch_cosine", steps=1000, warmup=0):
    config = config_lib.base_config()
    config.num_steps = steps
    config.optim.update(lr=0.03, schedule=schedule, warmup_steps=warmup)
    return config


# ----------------------------------------------------------------------------- 1. schedule
def test_official_schedule_values_at_0_half_and_last_step():
    k_total = 1000
    lr = train_state.learning_rate_schedule(_schedule_config(steps=k_total))
    for k in (0, k_total // 2, k_total - 1):
        expected = 0.03 * np.cos(7 * np.pi * k / (16 * k_total))
        np.testing.assert_allclose(float(lr(k)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(lr(0)), 0.03, rtol=1e-7)  # no warm-up
    np.testing.assert_allclose(float(lr(500)), 0.03 * 0.773010, rtol=1e-5)  # cos(7 pi / 32)
    np.testing.assert_allclose(float(lr(999)), 0.03 * 0.196437, rtol=1e-5)  # ~cos(7 pi / 16)


def test_official_schedule_is_the_base_and_cifar_preset_default():
    assert config_lib.base_config().optim.schedule == "fixmatch_cosine"
    config = config_lib.config_file("comatch", "cifar10_40")
    assert (config.optim.schedule, config.optim.warmup_steps) == ("fixmatch_cosine", 0)


def test_optimizer_step_k_uses_lr_k():
    # Momentum 0, no decay: the k-th update is -lr(k) * gradient (the official scheduler
    # steps after optim.step, so step 0 uses lr(0) = lr).
    config = _schedule_config(steps=8)
    config.optim.update(momentum=0.0, nesterov=False, weight_decay=0.0)
    tx = train_state.create_optimizer(config)
    params = {"w": jnp.ones(())}
    opt_state = tx.init(params)
    for k in range(3):
        updates, opt_state = tx.update({"w": jnp.ones(())}, opt_state, params)
        np.testing.assert_allclose(
            float(updates["w"]), -0.03 * np.cos(7 * np.pi * k / (16 * 8)), rtol=1e-6
        )


# ----------------------------------------------------------------------------- 4. decay
@functools.cache  # three tests read (never modify) the same variables
def _wrn_variables(depth=28, widen=2, dtype="float32", num_classes=10):
    config = config_lib.base_config().model
    config.update(name="wide_resnet", depth=depth, widen_factor=widen, dtype=dtype)
    model = models.create_model(config, num_classes)
    init = jax.jit(functools.partial(model.init, train=False))  # one program, not one per op
    return model, init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)))


def test_weight_decay_covers_every_parameter_but_batch_norm_as_the_official_rule():
    _, variables = _wrn_variables()
    mask = flax.traverse_util.flatten_dict(train_state.weight_decay_mask(variables["params"]))
    # Official: `'bn' in name` -> no decay, on the PyTorch names (Train_CoMatch.py).
    torch_names = {}
    for layer in torch_weights.wide_resnet_mapping(28, 2):
        for path, decayed in mask.items():
            if path[:-1] == layer.flax_path:
                torch_names[(layer.torch_name, path[-1])] = decayed
    assert len(torch_names) == len(mask)  # every parameter has its official name
    for (torch_name, leaf), decayed in torch_names.items():
        assert decayed == ("bn" not in torch_name), (torch_name, leaf)
    # Biases of the linear layers are decayed; BatchNorm scale and bias are not.
    assert mask[("classifier", "bias")] and mask[("head_out", "bias")]
    assert not mask[("backbone", "bn_last", "scale")]
    assert not mask[("backbone", "layer2_0", "bn1", "bias")]
    assert sum(mask.values()) == 2 * 12 + 3 + 1 + 6  # block convs, downsamples, stem, linears


# ----------------------------------------------------------------------------- 2. blocks
def _block(pre_res_act, in_width, width, stride):
    norm = lambda **kw: models.BatchNorm(use_running_average=True, **kw)
    block = models.WideBasicBlock(
        width=width,
        stride=stride,
        pre_res_act=pre_res_act,
        norm=norm,
        leaky_slope=0.1,
        dtype=jnp.float32,
    )
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, in_width))
    variables = block.init(jax.random.PRNGKey(0), x)
    params = flax.traverse_util.flatten_dict(variables["params"])
    # Zero the residual branch: the output is the shortcut alone.
    params = {k: (jnp.zeros_like(v) if k[0] == "conv2" else v) for k, v in params.items()}
    params[("bn1", "bias")] = jnp.full((in_width,), -0.5)  # so that act != x
    variables = {**variables, "params": flax.traverse_util.unflatten_dict(params)}
    act = jax.nn.leaky_relu(x * (1 / np.sqrt(1 + 1e-5)) - 0.5, 0.1)
    return block.apply(variables, x), x, act, params


def test_block_structure_matches_basic_block_pre_act():
    # Same width, stride 1: no downsample; the shortcut is act with pre_res_act, else x.
    out, x, act, params = _block(True, 8, 8, 1)
    assert set(k[0] for k in params) == {"bn1", "conv1", "bn2", "conv2"}
    np.testing.assert_allclose(out, act, atol=1e-5)
    out, x, act, _ = _block(False, 8, 8, 1)
    np.testing.assert_allclose(out, x, atol=1e-5)
    # Width/stride change: a 1x1 strided conv on act (first stage) or on the raw x (others).
    for pre_res_act in (True, False):
        out, x, act, params = _block(pre_res_act, 4, 8, 2)
        kernel = params[("downsample", "kernel")]
        assert kernel.shape == (1, 1, 4, 8)
        source = act if pre_res_act else x
        expected = jnp.einsum("bhwc,cd->bhwd", source[:, ::2, ::2], kernel[0, 0])
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_wrn_28_2_layout_is_the_official_one():
    _, variables = _wrn_variables()
    backbone = variables["params"]["backbone"]
    blocks = [name for name in backbone if name.startswith("layer")]
    assert blocks == [f"layer{s}_{b}" for s in (1, 2, 3) for b in range(4)]
    for name in blocks:
        expected = {"bn1", "conv1", "bn2", "conv2"} | ({"downsample"} if name[-1] == "0" else set())
        assert set(backbone[name]) == expected, name
    assert backbone["layer1_0"]["bn1"]["scale"].shape == (16,)  # BN on the raw stem output
    assert backbone["layer2_0"]["bn1"]["scale"].shape == (32,)  # BN before conv1 in stage 2
    assert backbone["layer3_0"]["conv1"]["kernel"].shape == (3, 3, 64, 128)


# ----------------------------------------------------------------------------- 3. init
def test_initialisation_is_the_official_one():
    _, variables = _wrn_variables()
    params = variables["params"]
    # Conv: kaiming_normal_(a=0, mode='fan_in', 'leaky_relu'): std sqrt(2 / fan_in).
    kernel = np.asarray(params["backbone"]["layer3_1"]["conv1"]["kernel"])  # fan_in 9 * 128
    np.testing.assert_allclose(kernel.std(), np.sqrt(2 / (9 * 128)), rtol=0.02)
    assert abs(kernel.mean()) < 0.002
    # BatchNorm: scale 1, bias 0.
    np.testing.assert_array_equal(params["backbone"]["bn_last"]["scale"], 1.0)
    np.testing.assert_array_equal(params["backbone"]["bn_last"]["bias"], 0.0)
    # Linear heads: PyTorch's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
    bound = 1 / np.sqrt(128)
    for name in ("classifier", "head_hidden", "head_out"):
        for leaf in ("kernel", "bias"):
            value = np.asarray(params[name][leaf])
            assert np.abs(value).max() <= bound and np.abs(value).max() > 0.8 * bound
    hidden = np.asarray(params["head_hidden"]["kernel"])  # 16384 draws: uniform variance
    np.testing.assert_allclose(hidden.var(), bound**2 / 3, rtol=0.05)


# ----------------------------------------------------------------------------- 8. DA floor
_distribution_alignment = jax.jit(losses.distribution_alignment)  # one program, not one per op


def test_distribution_alignment_with_saturated_logits_gives_no_nan():
    logits = jnp.where(jnp.arange(5)[None, :] == jnp.array([0, 0, 1, 0])[:, None], 80.0, -80.0)
    probs = jax.nn.softmax(logits, axis=-1)
    assert float(probs.min()) == 0.0  # float32: exactly one-hot; the official code's 0 / 0
    history, count = jnp.zeros((32, 5)), jnp.zeros((), jnp.int32)
    for _ in range(40):  # past the ring buffer's wrap-around
        aligned, history, count = _distribution_alignment(probs, history, count)
        assert np.all(np.isfinite(aligned))
        np.testing.assert_allclose(aligned.sum(-1), 1.0, rtol=1e-6)
        np.testing.assert_array_equal(jnp.argmax(aligned, -1), [0, 0, 1, 0])


def test_distribution_alignment_floor_leaves_normal_inputs_unchanged():
    rng = np.random.default_rng(0)
    history, count = jnp.zeros((4, 10)), jnp.zeros((), jnp.int32)
    means = []
    for _ in range(6):
        logits = rng.normal(size=(16, 10)) * 3
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        got, history, count = _distribution_alignment(jnp.float32(p), history, count)
        means.append(p.mean(0))
        expected = p / np.mean(means[-4:], axis=0)  # the official formula, float64
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def _official_distribution_alignment(prob_list, probs):
    """The official code's DA in float64 (Train_CoMatch.py: prob_list of the last 32 batch
    means, probs / prob_avg, renormalised), without any floor."""
    prob_avg = np.mean(prob_list[-32:], axis=0)
    aligned = probs / prob_avg
    return aligned / aligned.sum(1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_distribution_alignment_with_confident_logits_is_the_official_formula(seed):
    """One class +30 over the rest: a class's mean probability over the history is ~1e-13,
    positive but tiny. The official float64 result must hold (a floor at 1e-12 changed
    aligned probabilities by up to 0.46 here); only exact zeros may be floored."""
    rng = np.random.default_rng(seed)
    num_classes, batch = 10, 16
    history, count = jnp.zeros((32, num_classes)), jnp.zeros((), jnp.int32)
    prob_list, worst = [], 0.0
    for _ in range(40):
        logits = rng.normal(size=(batch, num_classes))
        logits[np.arange(batch), rng.integers(0, 3, size=batch)] += 30.0  # classes 0-2 only
        probs32 = np.asarray(jax.nn.softmax(jnp.float32(logits), axis=-1))
        assert 0 < probs32[:, 3:].mean() < 1e-12  # the regime the old floor distorted
        aligned, history, count = _distribution_alignment(jnp.asarray(probs32), history, count)
        prob_list.append(probs32.astype(np.float64).mean(0))
        expected = _official_distribution_alignment(prob_list, probs32.astype(np.float64))
        worst = max(worst, float(np.abs(np.asarray(aligned) - expected).max()))
    assert worst < 1e-5, worst


def test_distribution_alignment_floor_is_float32_tiny_hand_checked():
    """History of one batch [[1, 0], [1, 0]] (class 1 never predicted): mean [1, 0]; the
    floor turns 0 into float32's tiny, class 1's probability 0 stays 0: [[1, 0], [1, 0]]."""
    assert losses.DA_FLOOR == float(np.finfo(np.float32).tiny)
    aligned, _, _ = _distribution_alignment(
        jnp.array([[1.0, 0.0], [1.0, 0.0]]), jnp.zeros((4, 2)), jnp.zeros((), jnp.int32)
    )
    np.testing.assert_array_equal(aligned, [[1.0, 0.0], [1.0, 0.0]])
    # A positive mean of 1e-13 is divided by as it is: probs [[1, 2e-13], [1, 0]] have the
    # mean [1, 1e-13]; row 0 becomes [1, 2] / 3, row 1 stays [1, 0].
    probs = jnp.array([[1.0, 2e-13], [1.0, 0.0]], jnp.float32)
    aligned, _, _ = _distribution_alignment(probs, jnp.zeros((4, 2)), jnp.zeros((), jnp.int32))
    np.testing.assert_allclose(aligned, [[1 / 3, 2 / 3], [1.0, 0.0]], rtol=1e-5)


# ----------------------------------------------------------------------------- 9. bf16
def test_bfloat16_model_runs_the_backbone_in_bf16_and_heads_and_losses_in_float32():
    config = config_lib.base_config()
    config.model.update(name="wide_resnet", depth=10, widen_factor=1, dtype="bfloat16")
    model = models.create_model(config.model, 10)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 32, 3))
    # jitted: one program each instead of one per op
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(1), x)
    apply = functools.partial(
        model.apply,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=True,
    )
    out, state = jax.jit(apply)(variables, x)
    inter = flax.traverse_util.flatten_dict(state["intermediates"])
    backbone = {k: v for k, v in inter.items() if k[0] == "backbone" and len(k) > 2}
    assert backbone and all(v[0].dtype == jnp.bfloat16 for v in backbone.values())
    for head in ("classifier", "head_hidden", "head_out"):
        assert inter[(head, "__call__")][0].dtype == jnp.float32, head
    assert all(v.dtype == jnp.float32 for v in out.values())
    # Every CoMatch loss term and metric in float32.
    config.comatch.queue_size = 16
    method = methods.get_method("comatch")

    @jax.jit  # one program instead of one per op
    def loss_fn(out):
        method_state = method.init_state(config, 10, config.model.low_dim)
        view = lambda i: {k: v[2 * i : 2 * i + 2] for k, v in out.items()}
        outputs = {
            "labeled_weak": view(0),
            "unlabeled_weak": view(1),
            "unlabeled_strong0": view(2),
            "unlabeled_strong1": view(3),
        }
        batch = {"labels": jnp.array([1, 2]), "unlabeled_labels": jnp.array([3, 4])}
        return method.loss(outputs, batch, method_state, config)

    loss, (_, metrics) = loss_fn(out)
    assert loss.dtype == jnp.float32
    assert all(v.dtype == jnp.float32 for v in metrics.values()), metrics


@pytest.mark.parametrize("name", ["small_cnn", "resnet"])
def test_other_backbones_also_have_float32_heads(name):
    config = config_lib.base_config().model
    config.update(name=name, depth=18, dtype="bfloat16", widths=(8, 16))
    model = models.create_model(config, 3)
    x = jnp.ones((2, 32, 32, 3))
    # jitted: one program each instead of one per op
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), x)
    apply = functools.partial(
        model.apply, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    _, state = jax.jit(apply)(variables, x)
    inter = flax.traverse_util.flatten_dict(state["intermediates"])
    assert inter[("classifier", "__call__")][0].dtype == jnp.float32
    assert inter[("backbone", "__call__")][0].dtype == jnp.float32  # pooled in float32
