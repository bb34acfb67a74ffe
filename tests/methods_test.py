"""Every method's declaration is truthful and drives validation; a few steps of every
method's tiny config run with finite losses and report the accuracy of the state they
return; pretrain -> fine-tune and pretrain -> probe work end to end; CoMatch's queue."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comatch_jax import config_lib, data as datasets
from comatch_jax.core import methods, models, train_step
from comatch_jax.commands import probe
from comatch_jax.trainer import saved_runs as runs, train

from adaptive_losses_test import jitted_loss
from train_test import RecordingWriter, synthetic_dataset, tiny_config

SSL_MODEL = dict(projector_widths=(16, 16), predictor_widths=(8, 16), decoder=True, decoder_width=8)


config_file = config_lib.config_file  # every method has its config file


def method_config(name):
    config = tiny_config("comatch")
    config.method = name
    full = config_file(name)
    config.num_steps = 4
    config.eval_every = 4
    config.checkpoint_every = 4
    config.probe.knn_k = 5
    config.probe.linear_steps = 20
    config.model.update(SSL_MODEL)
    # CoMatch with its config file's views (RandAugment and SimCLR's); the other
    # semi-supervised methods share those views' code, so they keep tiny_config's weak one
    # (compiling RandAugment once per method took a third of this module's time).
    if name == "comatch":
        config.augment.strong0, config.augment.strong1 = full.augment.strong0, full.augment.strong1
    if methods.get_method(name).evaluation == "self_supervised":
        config.augment.strong0 = config.augment.strong1 = "simclr"
    if name == "supervised":
        config.mu = 0
    return config


# The adaptive-threshold methods train 20 steps: their thresholds' smoke run (below).
ADAPTIVE = ("freematch", "softmatch")
ADAPTIVE_SCHEDULE = dict(num_steps=20, log_every=5, eval_every=10, checkpoint_every=10)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """trained(name) -> (workdir, state, summary, writer) of method_config(name)'s run (for
    FreeMatch and SoftMatch on ADAPTIVE_SCHEDULE), trained once for this module's tests."""
    done = {}

    def run(name):
        if name not in done:
            config, writer = method_config(name), RecordingWriter()
            workdir = str(tmp_path_factory.mktemp(name))
            if name in ADAPTIVE:
                config.update(ADAPTIVE_SCHEDULE)
            state, summary = train.train_and_evaluate(
                config, workdir, writer=writer, dataset=synthetic_dataset()
            )
            done[name] = workdir, state, summary, writer
        return done[name]

    return run


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_each_method_trains_with_finite_losses(trained, name):
    workdir, state, summary, writer = trained(name)
    logged = [s for _, s in writer.scalars if "train/loss" in s]
    assert logged and all(np.isfinite(v) for s in logged for v in s.values())
    assert int(state.step) == (ADAPTIVE_SCHEDULE["num_steps"] if name in ADAPTIVE else 4)
    self_supervised = methods.get_method(name).evaluation == "self_supervised"
    assert summary["evaluation"] == ("knn" if self_supervised else "classifier")
    if self_supervised:  # kNN on the EMA model's features, as the probe command computes it
        knn = probe.probe_run(workdir, "knn", batch_size=16, dataset=synthetic_dataset())
        assert summary["test_accuracy"] == knn["knn_accuracy"]
    else:  # the EMA (and raw) classifier of the returned state, recomputed here
        config, data = method_config(name), synthetic_dataset()
        model = models.create_model(config.model, 10, data.test_images.shape[1:])
        mean, std = datasets.resolve_normalization((), (), data)  # as the trainer does
        inputs = train_step.preprocess(data.test_images, mean, std)
        for key, params, batch_stats in [
            ("test_accuracy", state.ema_params, state.ema_batch_stats),
            ("test_accuracy_raw", state.params, state.batch_stats),
        ]:
            variables = {"params": params, "batch_stats": batch_stats}
            logits = model.apply(variables, inputs, train=False)["logits"]
            accuracy = np.mean(np.argmax(np.asarray(logits), -1) == data.test_labels)
            assert summary[key] == pytest.approx(accuracy, abs=1e-9), key


def test_pretrain_then_finetune_and_probe(trained, tmp_path):
    pretrain = trained("barlow_twins")[0]
    finetune = method_config("supervised")
    finetune.init_from = pretrain
    state, _ = train.train_and_evaluate(
        finetune, str(tmp_path / "ft"), writer=RecordingWriter(), dataset=synthetic_dataset()
    )
    assert int(state.step) == 4

    # With the backbone's learning rate scaled by 0 and no weight decay the fine-tuned
    # backbone stays the pretrained one.
    frozen = method_config("supervised")
    frozen.init_from = pretrain
    frozen.optim.backbone_lr_scale = 0.0
    frozen.optim.weight_decay = 0.0
    state, _ = train.train_and_evaluate(
        frozen, str(tmp_path / "ft0"), writer=RecordingWriter(), dataset=synthetic_dataset()
    )
    pretrained = runs.load_run(pretrain).state.ema_params["backbone"]
    for a, b in zip(jax.tree.leaves(pretrained), jax.tree.leaves(state.params["backbone"])):
        np.testing.assert_array_equal(a, b)

    results = probe.probe_run(pretrain, "all", batch_size=16, dataset=synthetic_dataset())
    summary = json.load(open(f"{pretrain}/summary.json"))
    assert results["knn_accuracy"] == summary["test_accuracy"]  # the run's own kNN evaluation
    # 50 test images; the classes differ in brightness, which frozen random-ish features keep.
    assert results["linear_probe_accuracy"] * 50 == pytest.approx(
        round(results["linear_probe_accuracy"] * 50)
    )
    assert results["linear_probe_accuracy"] > 0.2, results  # chance is 0.1
    saved = json.load(open(f"{pretrain}/probe.json"))  # this call's, not another test's kNN-only
    assert saved == results and saved["num_labeled"] == 20


def test_finetune_config_requires_init_from():
    config = config_lib.base_config()
    config.init_from = ""
    with pytest.raises(ValueError, match="init_from"):
        config_lib.validate_config(config)


def test_finetune_from_a_different_backbone_is_a_clear_error(trained, tmp_path):
    pretrain = trained("simclr")[0]
    finetune = method_config("supervised")
    finetune.init_from = pretrain
    finetune.model.widths = (8, 32)
    with pytest.raises(ValueError, match="backbone does not match"):
        train.train_and_evaluate(
            finetune, str(tmp_path / "ft"), writer=RecordingWriter(), dataset=synthetic_dataset()
        )


# ----------------------------------------------------------------------------- declarations
NUM_CLASSES, SIZE = 10, 12
HEAD_SHAPES = {  # per example, for method_config()'s model
    "logits": (NUM_CLASSES,),
    "embedding": (8,),
    "features": (16,),
    "projection": (16,),
    "prediction": (16,),
    "reconstruction": (SIZE, SIZE, 1),
}


# The model outputs each loss reads (the model builds the optional ones from config.model).
HEADS = {
    "supervised": ("logits",),
    "autoencoder": ("reconstruction",),
    "simclr": ("embedding",),
    "simsiam": ("projection", "prediction"),
    "barlow_twins": ("projection",),
    "fixmatch": ("logits",),
    "freematch": ("logits",),
    "softmatch": ("logits",),
    "comatch": ("logits", "embedding"),
    "comatch_bt": ("logits", "embedding", "projection"),
}


def _declared_outputs(method, config, rng):
    """Random model outputs holding only the views `method` declares and its HEADS."""
    outputs = {}
    parts = [("labeled", config.batch_size, method.labeled_views)]
    parts.append(("unlabeled", config.batch_size * config.mu, method.unlabeled_views))
    for part, size, slots in parts:
        for slot in slots:
            view = {h: rng.normal(size=(size, *HEAD_SHAPES[h])) for h in HEADS[method.name]}
            if "embedding" in view:
                view["embedding"] /= np.linalg.norm(view["embedding"], axis=-1, keepdims=True)
            view["image"] = rng.integers(0, 256, (size, SIZE, SIZE, 1)).astype(np.uint8)
            outputs[f"{part}_{slot}"] = {k: jnp.asarray(v) for k, v in view.items()}
    return outputs


def _batch(config, rng):
    return {
        "labels": jnp.asarray(rng.integers(0, NUM_CLASSES, config.batch_size), jnp.int32),
        "unlabeled_labels": jnp.asarray(
            rng.integers(0, NUM_CLASSES, config.batch_size * config.mu), jnp.int32
        ),
    }


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_declaration_names_the_views_the_loss_reads(name):
    """The loss runs on only the declared views (a KeyError here means the declaration is
    incomplete) and keeps its state's structure."""
    assert set(HEADS) == set(methods.METHODS)
    method = methods.get_method(name)
    config = method_config(name)
    config_lib.validate_config(config)
    rng = np.random.default_rng(0)
    state = method.init_state(config, NUM_CLASSES, HEAD_SHAPES["embedding"][0])
    loss, (new_state, metrics) = jitted_loss(method, config)(
        _declared_outputs(method, config, rng), _batch(config, rng), state
    )
    assert np.isfinite(float(loss))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert bool(method.unlabeled_views) == (config.mu > 0)
    assert method.display_name


@pytest.mark.parametrize("name", [n for n, m in methods.METHODS.items() if m.unlabeled_views])
def test_methods_with_unlabeled_views_need_mu(name):
    config = method_config(name)
    config.mu = 0
    with pytest.raises(ValueError, match=f"method={name} needs unlabeled data: mu must be > 0"):
        config_lib.validate_config(config)


@pytest.mark.parametrize(
    "name,field",
    [
        ("autoencoder", "decoder"),
        ("simsiam", "projector_widths"),
        ("simsiam", "predictor_widths"),
        ("barlow_twins", "projector_widths"),
        ("comatch_bt", "projector_widths"),
    ],
)
def test_methods_need_the_model_fields_of_their_heads(name, field):
    config = method_config(name)
    config.model[field] = type(config.model[field])()  # () or False
    with pytest.raises(ValueError, match=f"method={name} needs model.{field} set"):
        config_lib.validate_config(config)
    config.method = "supervised"  # a method without that head does not need it
    config.mu = 0
    config_lib.validate_config(config)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("comatch.alpha", 1.5, "comatch.alpha must be in [0, 1], got 1.5"),
        ("comatch.queue_size", 0, "comatch.queue_size must be positive, got 0"),
        ("comatch.temperature", 0.0, "comatch.temperature must be positive"),
        ("comatch.threshold_rule", "freemtch", "comatch.threshold_rule must be 'fixed' or"),
        ("fixmatch.threshold", 1.2, "fixmatch.threshold must be in [0, 1]"),
        ("freematch.momentum", 1.0, "freematch.momentum must be in [0, 1), got 1.0"),
        ("softmatch.n_sigma", 0.0, "softmatch.n_sigma must be positive"),
        ("simclr.temperature", 0.0, "simclr.temperature must be positive"),
        ("barlow_twins.lambda_offdiag", -1.0, "barlow_twins.lambda_offdiag must be >= 0"),
        ("autoencoder.loss", "l1", "autoencoder.loss must be 'mse' or 'bce', got 'l1'"),
        ("nonfinite_policy", "ignore", "nonfinite_policy must be 'stop' or 'skip'"),
    ],
)
def test_option_checks(field, value, message):
    """Every method's options are checked, whichever method runs (the defaults pass)."""
    config = method_config("comatch")
    config_lib.validate_config(config)
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(ValueError) as error:
        config_lib.validate_config(config)
    assert str(error.value).startswith(f"Invalid config: {message}"), str(error.value)


def test_softmatch_needs_two_unlabeled_images_for_its_variance():
    config = method_config("softmatch")
    config.batch_size, config.mu = 1, 1
    with pytest.raises(ValueError, match="softmatch estimates a variance"):
        config_lib.validate_config(config)


def test_unknown_method_is_a_clear_error():
    config = method_config("comatch")
    config.method = "comatchh"
    with pytest.raises(ValueError, match=r"Unknown method 'comatchh'; expected one of"):
        config_lib.validate_config(config)


def _toy_loss(outputs, batch, state, config):
    loss = jnp.mean(outputs["unlabeled_weak"]["projection"] ** 2)
    return loss, (state, {"loss_toy": loss})


def test_a_new_method_is_one_entry(monkeypatch):
    """A new entry is a method the validation and the step know, with no other edit."""
    toy = methods.Method("toy", (), ("weak",), lambda *_: {}, _toy_loss, "self_supervised")
    monkeypatch.setitem(methods.METHODS, "toy", toy)
    config = method_config("supervised")
    config.method = "toy"
    with pytest.raises(ValueError, match="method=toy needs unlabeled data: mu must be > 0"):
        config_lib.validate_config(config)
    config.mu = 2
    config_lib.validate_config(config)
    rng = np.random.default_rng(0)
    outputs = {"unlabeled_weak": {"projection": jnp.ones((8, 4))}}
    loss, (_, metrics) = toy.loss(outputs, _batch(config, rng), {}, config)
    assert float(loss) == float(metrics["loss_toy"]) == 1.0


@pytest.mark.parametrize(
    "name",
    [n for n, m in methods.METHODS.items() if m.unlabeled_views and m.evaluation == "classifier"],
)
def test_no_gradient_through_the_weak_view_or_the_method_state(name):
    """Pseudo-labels, queue and alignment history are targets: the loss's gradient w.r.t.
    the weak unlabeled view's outputs and the method state is exactly zero, while the strong
    view and the labeled logits do get gradient."""
    method = methods.get_method(name)
    config = method_config(name)
    for section in ("comatch", "fixmatch"):
        config[section].threshold = 0.0  # every pseudo-label kept
    rng = np.random.default_rng(1)
    outputs = _declared_outputs(method, config, rng)
    outputs = {k: {h: v for h, v in view.items() if h != "image"} for k, view in outputs.items()}
    state = method.init_state(config, NUM_CLASSES, HEAD_SHAPES["embedding"][0])
    # A full queue of random entries (CoMatch smooths with it only once full).
    state = {
        k: (jnp.asarray(rng.random(v.shape), v.dtype) if v.dtype == jnp.float32 else v)
        for k, v in state.items()
    }
    if "queue_filled" in state:
        state["queue_filled"] = jnp.asarray(state["queue_embeddings"].shape[0], jnp.int32)
    batch = _batch(config, rng)

    @jax.jit  # one program, not one per op
    def loss(outputs, state):
        return method.loss(outputs, batch, state, config)[0]

    grad = jax.jit(jax.grad(loss, argnums=(0, 1), allow_int=True))
    grad_outputs, grad_state = grad(outputs, state)
    for head, value in grad_outputs["unlabeled_weak"].items():
        np.testing.assert_array_equal(value, 0.0, err_msg=f"unlabeled_weak {head}")
    for key, value in state.items():
        if value.dtype == jnp.float32:
            np.testing.assert_array_equal(grad_state[key], 0.0, err_msg=key)
    if "embedding" in grad_outputs["labeled_weak"]:  # enters the queue only
        np.testing.assert_array_equal(grad_outputs["labeled_weak"]["embedding"], 0.0)
    assert np.abs(grad_outputs["unlabeled_strong0"]["logits"]).max() > 0
    assert np.abs(grad_outputs["labeled_weak"]["logits"]).max() > 0
    # The weak view does decide the loss: other weak logits give another value.
    changed = {**outputs, "unlabeled_weak": {**outputs["unlabeled_weak"]}}
    changed["unlabeled_weak"]["logits"] = -outputs["unlabeled_weak"]["logits"]
    assert float(loss(changed, state)) != float(loss(outputs, state))


# ----------------------------------------------------------------------------- FreeMatch, SoftMatch
@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_threshold_methods_train_20_steps(trained, name):
    """A 20-step smoke run (ADAPTIVE_SCHEDULE): finite losses, pseudo-labels used from the
    first steps (the thresholds start at 1/C), and the method state carried as the EMAs say."""
    config = method_config(name)
    _, state, summary, writer = trained(name)
    logged = [s for _, s in writer.scalars if "train/loss_u" in s]
    assert len(logged) == 4 and int(state.step) == 20
    assert all(np.isfinite(v) for s in logged for v in s.values())
    assert logged[0]["train/mask_rate"] > 0.5  # most unlabeled images teach from the start
    ms = jax.device_get(state.method_state)
    momentum = config[name].momentum
    if name == "freematch":
        # tau_20 = m^20 / C + (1 - m^20) * (a mean max-confidence in [1/C, 1]).
        low = momentum**20 * 0.1 + (1 - momentum**20) * 0.1
        high = momentum**20 * 0.1 + (1 - momentum**20) * 1.0
        assert low < float(ms["global_threshold"]) < high
        np.testing.assert_allclose(ms["class_probs"].sum(), 1.0, rtol=1e-5)
        np.testing.assert_allclose(ms["class_histogram"].sum(), 1.0, rtol=1e-5)
        assert "train/loss_fair" in logged[0]
    else:
        assert int(ms["alignment_count"]) == 20
        np.testing.assert_allclose(ms["class_mean"].sum(), 1.0, rtol=1e-5)
        assert float(ms["confidence_variance"]) < 1.0  # moved from sigma_0^2 = 1 towards data
    assert summary["final_step"] == 20


@pytest.mark.parametrize("name", ["freematch", "softmatch"])
def test_adaptive_presets_take_the_papers_schedule(name):
    config = config_file(name, "cifar10_40")
    config_lib.validate_config(config)
    assert config.method == name and config.num_steps == 2**20
    assert (config.batch_size, config.mu, config.optim.lr) == (64, 7, 0.03)
    assert config[name].momentum == 0.999 and config[name].lambda_u == 1.0
    assert config_file(name).num_steps == config_lib.base_config().num_steps  # CPU default


@pytest.mark.parametrize("name", ["freematch", "softmatch"])
@pytest.mark.parametrize(
    "preset,widen_factor,weight_decay",
    [
        ("cifar10_40", 2, 5e-4),
        ("cifar10_250", 2, 5e-4),
        ("cifar10_4000", 2, 5e-4),
        ("cifar100_400", 8, 1e-3),  # WRN-28-8 as both papers (USB's cifar100 yamls: wrn_28_2)
        ("cifar100_2500", 8, 1e-3),
        ("cifar100_10000", 8, 1e-3),
    ],
)
def test_adaptive_cifar_presets_take_the_papers_values(name, preset, widen_factor, weight_decay):
    """The papers' (and USB's CIFAR configs') values: EMA momentum 0.999 for the method's
    estimates and the evaluated model, WRN-28-2 with weight decay 5e-4 on CIFAR-10 and
    WRN-28-8 with 1e-3 on CIFAR-100; FreeMatch w_f = 0.001; SoftMatch n_sigma = 2 with
    uniform alignment (the official code's)."""
    config = config_file(name, preset)
    config_lib.validate_config(config)
    assert config.dataset.name == preset.partition("_")[0]
    assert config.num_labels == int(preset.partition("_")[2])
    assert config.model.name == "wide_resnet"
    assert (config.model.depth, config.model.widen_factor) == (28, widen_factor)
    assert config.optim.weight_decay == weight_decay
    assert config[name].momentum == 0.999 and config.ema.decay == 0.999
    assert config[name].lambda_u == 1.0
    if name == "freematch":
        assert config.freematch.lambda_f == 0.001
    else:
        assert config.softmatch.n_sigma == 2.0
        assert config.softmatch.uniform_alignment is True


def test_fixmatch_distribution_alignment_option_aligns_the_pseudo_labels():
    """fixmatch.distribution_alignment (the official Train_fixmatch.py default): the weak
    probabilities are divided by the running class mean before the threshold; off = plain
    FixMatch with no extra state."""
    from comatch_jax import config_lib
    from comatch_jax.core import losses, methods

    config = config_lib.base_config()
    config.method = "fixmatch"
    method = methods.get_method("fixmatch")
    rng = np.random.default_rng(0)
    logits = lambda: rng.normal(size=(8, 4)).astype(np.float32) * 3
    outputs = {
        "labeled_weak": {"logits": logits()},
        "unlabeled_weak": {"logits": logits()},
        "unlabeled_strong0": {"logits": logits()},
    }
    batch = {"labels": np.arange(8, dtype=np.int32) % 4, "unlabeled_labels": np.zeros(8, np.int32)}
    config.fixmatch.threshold = 0.8
    assert method.init_state(config, 4, 16) == {}
    plain, (_, plain_metrics) = method.loss(outputs, batch, {}, config)

    config.fixmatch.distribution_alignment = True
    config.fixmatch.da_length = 3
    state = method.init_state(config, 4, 16)
    history = np.full((3, 4), 0.25, np.float32)
    history[0] = [0.97, 0.01, 0.01, 0.01]  # a skewed earlier batch mean
    state = {"da_history": jnp.asarray(history), "da_count": jnp.int32(1)}
    loss, (new_state, metrics) = method.loss(outputs, batch, state, config)
    probs = np.asarray(jax.nn.softmax(outputs["unlabeled_weak"]["logits"]))
    aligned, expected_history, _ = losses.distribution_alignment(
        jnp.asarray(probs), jnp.asarray(history), jnp.int32(1)
    )
    np.testing.assert_allclose(new_state["da_history"], expected_history, rtol=1e-6)
    assert int(new_state["da_count"]) == 2
    mask = (np.max(np.asarray(aligned), -1) >= 0.8).astype(np.float32)
    np.testing.assert_allclose(float(metrics["mask_rate"]), mask.mean(), rtol=1e-6)
    strong = np.asarray(jax.nn.log_softmax(outputs["unlabeled_strong0"]["logits"]))
    targets = np.argmax(np.asarray(aligned), -1)
    loss_u = np.mean(-strong[np.arange(8), targets] * mask)
    np.testing.assert_allclose(float(metrics["loss_u"]), loss_u, rtol=1e-5)
    assert float(metrics["mask_rate"]) != float(plain_metrics["mask_rate"])


def _image_batch(config, rng):
    """A batch as the trainer hands it to the step: uint8 images and labels."""
    images = lambda n: jnp.asarray(rng.integers(0, 256, (n, SIZE, SIZE, 1)), jnp.uint8)
    return {
        "labeled_images": images(config.batch_size),
        "unlabeled_images": images(config.batch_size * config.mu),
        **_batch(config, rng),
    }


@pytest.mark.parametrize("name", ["freematch", "softmatch"])
def test_adaptive_method_state_survives_a_checkpoint(tmp_path, name):
    """Resume = uninterrupted at the train-state level (the full-run resume test is
    CoMatch's, tests/train_test.py): a step moves the method state off its start, the
    project's checkpoint code saves and restores it bit for bit, and the next step from the
    restored state equals the next step from the live one."""
    config = method_config(name)
    config.model.update(projector_widths=(), predictor_widths=(), decoder=False)  # unused
    config.dataset.mean, config.dataset.std = (0.5,), (0.25,)
    method, model, tx, init_state = runs.build_training(config, NUM_CLASSES, (SIZE, SIZE, 1))
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    # Placed as train.py places them (committed: a restored state then reuses the compiled step).
    state = jax.jit(init_state, out_shardings=sharding)(jax.random.key(0))
    start = jax.device_get(state.method_state)
    step = jax.jit(
        train_step.make_train_step(model=model, tx=tx, method=method, config=config),
        out_shardings=(sharding, sharding),
    )
    rng = np.random.default_rng(0)
    first, second = _image_batch(config, rng), _image_batch(config, rng)
    state, _ = step(state, first)
    moved = jax.device_get(state.method_state)
    assert set(moved) == set(start)
    assert all(np.any(moved[k] != start[k]) for k in moved), "every entry moved in one step"

    manager = runs.checkpoint_manager(str(tmp_path))
    runs.save_checkpoint(manager, 1, state)
    manager.wait_until_finished()
    restored = runs.restore_state(
        manager, 1, runs.abstract_state(init_state, sharding), str(tmp_path)
    )
    manager.close()
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for key, value in jax.device_get(restored.method_state).items():
        np.testing.assert_array_equal(value, moved[key], err_msg=key)
        assert value.dtype == moved[key].dtype, key

    live, live_metrics = step(state, second)
    resumed, resumed_metrics = step(restored, second)
    leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]
    for x, y in zip(leaves(live.replace(rng=None)), leaves(resumed.replace(rng=None))):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(jax.random.key_data(live.rng), jax.random.key_data(resumed.rng))
    for key in live_metrics:
        np.testing.assert_array_equal(live_metrics[key], resumed_metrics[key], err_msg=key)


# ----------------------------------------------------------------------------- CoMatch's queue
def test_enqueue_writes_and_wraps_around():
    queue = jnp.zeros((5, 1))
    queue, pointer = methods.enqueue(queue, jnp.array(0), jnp.array([[1.0], [2.0], [3.0]]))
    np.testing.assert_array_equal(queue[:, 0], [1, 2, 3, 0, 0])
    assert int(pointer) == 3
    # K = 5 is not a multiple of the batch of 3: the write wraps to the front.
    queue, pointer = methods.enqueue(queue, pointer, jnp.array([[4.0], [5.0], [6.0]]))
    np.testing.assert_array_equal(queue[:, 0], [6, 2, 3, 4, 5])
    assert int(pointer) == 1


def test_enqueue_more_entries_than_queue_keeps_the_last():
    queue, pointer = methods.enqueue(jnp.zeros((3,)), jnp.array(1), jnp.arange(1.0, 6.0))
    # Writing 1..5 from position 1 leaves, as a ring buffer would, 3 at 0, 4 at 1, 5 at 2.
    np.testing.assert_array_equal(queue, [3.0, 4.0, 5.0])
    assert int(pointer) == (1 + 5) % 3


def test_enqueue_casts_entries_to_the_queue_dtype():
    queue, _ = methods.enqueue(jnp.zeros((4,), jnp.bfloat16), jnp.array(0), jnp.ones(2))
    assert queue.dtype == jnp.bfloat16
