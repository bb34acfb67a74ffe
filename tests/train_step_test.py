"""One call of train_step.make_train_step, checked number by number: the EMA arithmetic
(parameters and BatchNorm statistics, copied or averaged), the memory queue's new rows
(which entries, in which order, at which positions, wrapping around), that no gradient
flows through the teacher (EMA) model or the queue, what `ema.teacher_weak_views` computes,
and the learning-rate warm-up as the update applies it.

Tiny shapes (small_cnn, 12x12 grey images, B=4, mu=2) and a handful of compilations.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comatch_jax import config_lib
from comatch_jax.core import methods, models, train_state, train_step

NUM_CLASSES, SIZE, B, MU = 10, 12, 4, 2
QUEUE = 20  # 12 new entries per step: B*mu unlabeled + B labeled


def step_config(method="comatch", **ema):
    config = config_lib.base_config()
    config.dataset.mean, config.dataset.std = (0.3,), (0.3,)  # the trainer resolves () from data
    config.method = method
    config.num_labels = 20
    config.batch_size, config.mu = B, (MU if method != "supervised" else 0)
    config.num_steps = 10
    config.model.widths = (8, 16)
    config.model.low_dim = 8
    config.model.bn_momentum = 0.9
    config.comatch.queue_size = QUEUE
    config.comatch.da_length = 4
    config.comatch.threshold = 0.0
    config.optim.lr = 0.05
    config.ema.decay = 0.9
    config.ema.update(ema)
    # The weak view in the strong slots, as train_test.tiny_config: what is checked here does
    # not depend on what the strong views are, and RandAugment's would double each compile.
    config.augment.strong0 = config.augment.strong1 = "weak"
    return config


def _spy_loss(outputs, batch, state, config):
    """CoMatch's loss, also returning the weak views' outputs the loss saw."""
    loss, (new_state, metrics) = methods.comatch_loss(outputs, batch, state, config)
    seen = {
        f"{view}/{head}": outputs[view][head]
        for view in ("labeled_weak", "unlabeled_weak")
        for head in ("logits", "embedding")
    }
    return loss, (new_state, {**metrics, **seen})


SPY = dataclasses.replace(methods.get_method("comatch"), name="comatch_spy", loss=_spy_loss)


def _batch(config):
    rng = np.random.default_rng(0)
    unlabeled = config.batch_size * config.mu
    return {
        "labeled_images": rng.integers(0, 256, (B, SIZE, SIZE, 1), dtype=np.uint8),
        "labels": np.array([3, 1, 4, 1], np.int32),
        "unlabeled_images": rng.integers(0, 256, (unlabeled, SIZE, SIZE, 1), dtype=np.uint8),
        "unlabeled_labels": rng.integers(0, NUM_CLASSES, unlabeled).astype(np.int32),
    }


def _perturbed(tree, rng, scale=0.1):
    """tree + |noise| (positive, so BatchNorm variances stay valid)."""
    return jax.tree.map(
        lambda x: x + scale * np.abs(rng.normal(size=x.shape)).astype(np.float32), tree
    )


def build(config, method):
    """(model, jitted step, a start state whose EMA differs from the params, batch)."""
    model = models.create_model(config.model, NUM_CLASSES, (SIZE, SIZE, 1))
    tx = train_state.create_optimizer(config)
    state = train_state.create_train_state(
        jax.random.key(0),
        model=model,
        tx=tx,
        method=method,
        config=config,
        image_shape=(SIZE, SIZE, 1),
        num_classes=NUM_CLASSES,
    )
    rng = np.random.default_rng(1)
    state = state.replace(
        ema_params=_perturbed(state.params, rng),
        ema_batch_stats=_perturbed(state.batch_stats, rng),
    )
    if "queue_embeddings" in state.method_state:  # random old rows, 8 written, pointer 15
        embeddings = rng.normal(size=(QUEUE, config.model.low_dim)).astype(np.float32)
        probs = rng.random((QUEUE, NUM_CLASSES)).astype(np.float32)
        state = state.replace(
            method_state={
                **state.method_state,
                "queue_embeddings": embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True),
                "queue_probs": probs / probs.sum(1, keepdims=True),
                "queue_pointer": jnp.asarray(QUEUE - 5, jnp.int32),
                "queue_filled": jnp.asarray(8, jnp.int32),
            }
        )
    step = jax.jit(train_step.make_train_step(model=model, tx=tx, method=method, config=config))
    return model, step, state, _batch(config)


def _np(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(tree))]


def _aligned(logits):
    """Distribution alignment from an empty history (NumPy): p / mean_batch(p), renormalised."""
    logits = np.asarray(logits, np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    aligned = probs / probs.mean(0)
    return aligned / aligned.sum(1, keepdims=True)


def _views(config, method, state, batch):
    """The step's views, rebuilt from the same key (the step folds the step number in)."""
    return train_step.make_views(jax.random.fold_in(state.rng, state.step), batch, method, config)


@functools.lru_cache
def _jitted_forward(model, mean, std, train):
    def forward(variables, images):
        inputs = train_step.preprocess(images, mean, std)
        if train:
            return model.apply(variables, inputs, train=True, mutable=["batch_stats"])[0]
        return model.apply(variables, inputs, train=False)

    return jax.jit(forward)  # one program instead of one per op


def _forward(model, variables, images, config, train):
    mean, std = tuple(config.dataset.mean), tuple(config.dataset.std)
    return _jitted_forward(model, mean, std, train)(variables, images)


@pytest.fixture(scope="module")
def student():
    """CoMatch (spied on) with the student making every view; one step from a prepared state."""
    config = step_config()
    model, step, state, batch = build(config, SPY)
    new_state, metrics = step(state, batch)
    return config, model, state, batch, new_state, metrics


def test_ema_is_decay_times_ema_plus_one_minus_decay_times_new_params(student):
    config, _, state, _, new_state, _ = student
    decay = config.ema.decay
    old_ema, new_params, new_ema = map(
        _np, (state.ema_params, new_state.params, new_state.ema_params)
    )
    for e0, p1, e1 in zip(old_ema, new_params, new_ema):
        np.testing.assert_allclose(e1, decay * e0 + (1 - decay) * p1, rtol=1e-6, atol=1e-7)
    # The step did move the params, and the EMA is neither the old EMA nor the new params.
    assert any(not np.array_equal(a, b) for a, b in zip(_np(state.params), new_params))
    assert all(not np.allclose(e1, p1) for e1, p1 in zip(new_ema, new_params))
    # average_batch_stats=False (the official code): the EMA model gets the new statistics.
    for a, b in zip(_np(new_state.ema_batch_stats), _np(new_state.batch_stats)):
        np.testing.assert_array_equal(a, b)
    assert int(new_state.step) == int(state.step) + 1


def test_queue_gets_the_weak_views_in_order_wrapping_around(student):
    config, model, state, batch, new_state, metrics = student
    # The outputs the loss saw are the student's forward over the step's views, in order.
    views = _views(config, SPY, state, batch)
    names = list(views)
    assert names == ["labeled_weak", "unlabeled_weak", "unlabeled_strong0", "unlabeled_strong1"]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    outputs = _forward(model, variables, jnp.concatenate([views[n] for n in names]), config, True)
    bounds = np.cumsum([0] + [views[n].shape[0] for n in names])
    for i, name in enumerate(names[:2]):
        for head in ("logits", "embedding"):
            expected = np.asarray(outputs[head])[bounds[i] : bounds[i + 1]]
            np.testing.assert_allclose(
                metrics[f"{name}/{head}"], expected, rtol=1e-4, atol=1e-5, err_msg=name
            )

    embeddings = np.concatenate(
        [metrics["unlabeled_weak/embedding"], metrics["labeled_weak/embedding"]]
    )
    probs = np.concatenate(
        [_aligned(metrics["unlabeled_weak/logits"]), np.eye(NUM_CLASSES)[batch["labels"]]]
    )
    rows = (QUEUE - 5 + np.arange(12)) % QUEUE  # 15..19, then 0..6
    old, new = state.method_state, new_state.method_state
    np.testing.assert_allclose(new["queue_embeddings"][rows], embeddings, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(new["queue_probs"][rows], probs, rtol=1e-5, atol=1e-7)
    untouched = np.setdiff1d(np.arange(QUEUE), rows)
    np.testing.assert_array_equal(untouched, np.arange(7, 15))
    for key in ("queue_embeddings", "queue_probs"):
        np.testing.assert_array_equal(new[key][untouched], old[key][untouched])
    assert int(new["queue_pointer"]) == 7 and int(new["queue_filled"]) == QUEUE
    assert int(new["da_count"]) == 1
    logits = np.asarray(metrics["unlabeled_weak/logits"], np.float64)
    raw = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(  # the batch's mean prediction, before alignment
        new["da_history"][0], (raw / raw.sum(1, keepdims=True)).mean(0), rtol=1e-5
    )


@pytest.fixture(scope="module")
def teacher():
    """CoMatch (spied on) with the EMA model making the weak views' pseudo-labels and
    averaging BatchNorm statistics: the two EMA options, independent of each other, in one
    compiled step."""
    config = step_config(teacher_weak_views=True, average_batch_stats=True)
    model, step, state, batch = build(config, SPY)
    return config, model, step, state, batch


def test_average_batch_stats_averages_the_statistics(teacher):
    config, _, step, state, batch = teacher
    assert config.ema.average_batch_stats
    new_state, _ = step(state, batch)
    decay = config.ema.decay
    old, new, ema = map(
        _np, (state.ema_batch_stats, new_state.batch_stats, new_state.ema_batch_stats)
    )
    assert old
    for e0, b1, e1 in zip(old, new, ema):
        np.testing.assert_allclose(e1, decay * e0 + (1 - decay) * b1, rtol=1e-6, atol=1e-7)
        assert not np.allclose(e1, b1)


def test_teacher_weak_views_come_from_the_ema_model_in_eval_mode(teacher):
    config, model, step, state, batch = teacher
    new_state, metrics = step(state, batch)
    views = _views(config, SPY, state, batch)
    ema = {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
    weak = _forward(model, ema, views["unlabeled_weak"], config, train=False)
    np.testing.assert_allclose(
        metrics["unlabeled_weak/embedding"], weak["embedding"], rtol=1e-5, atol=1e-6
    )
    # The student's one forward covers the other views only (its BatchNorm never sees the
    # weak unlabeled view); the labeled rows of the queue come from it.
    students = ["labeled_weak", "unlabeled_strong0", "unlabeled_strong1"]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    outputs = _forward(
        model, variables, jnp.concatenate([views[n] for n in students]), config, train=True
    )
    np.testing.assert_allclose(
        metrics["labeled_weak/embedding"], outputs["embedding"][:B], rtol=1e-4, atol=1e-5
    )
    rows = (QUEUE - 5 + np.arange(12)) % QUEUE
    queue = new_state.method_state
    np.testing.assert_allclose(
        queue["queue_embeddings"][rows[:8]], weak["embedding"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        queue["queue_probs"][rows[:8]], _aligned(weak["logits"]), rtol=1e-4, atol=1e-6
    )
    # And not what the student would have made of the weak view.
    student_weak = _forward(model, variables, views["unlabeled_weak"], config, train=False)
    assert not np.allclose(queue["queue_embeddings"][rows[:8]], student_weak["embedding"])


def test_no_gradient_through_the_teacher_or_the_queue(teacher):
    """The step's loss depends on the EMA params (teacher pseudo-labels) and on a full queue
    (memory smoothing), yet its gradient with respect to either is exactly zero."""
    config, _, step, state, batch = teacher
    full = {**state.method_state, "queue_filled": jnp.asarray(QUEUE, jnp.int32)}

    def step_loss(ema_params, queue_embeddings, queue_probs):
        method_state = {
            **full,
            "queue_embeddings": queue_embeddings,
            "queue_probs": queue_probs,
        }
        new_state, metrics = step(
            state.replace(ema_params=ema_params, method_state=method_state), batch
        )
        return metrics["loss"]

    value_and_grad = jax.jit(jax.value_and_grad(step_loss, argnums=(0, 1, 2)))
    inputs = (state.ema_params, full["queue_embeddings"], full["queue_probs"])
    loss, grads = value_and_grad(*inputs)
    for leaf in jax.tree.leaves(grads):
        np.testing.assert_array_equal(leaf, 0.0)
    # Both do change the loss's value, so the zero gradients are a stop, not an absence.
    rng = np.random.default_rng(2)
    other_ema = _perturbed(state.ema_params, rng, scale=0.5)
    assert float(value_and_grad(other_ema, *inputs[1:])[0]) != float(loss)
    other_probs = np.roll(np.asarray(full["queue_probs"]), 1, axis=1)
    assert float(value_and_grad(*inputs[:2], other_probs)[0]) != float(loss)


def test_learning_rate_warm_up_scales_the_update():
    warm = step_config("supervised")
    warm.optim.update(lr=1.0, warmup_steps=4, schedule="cosine")
    constant = step_config("supervised")
    constant.optim.update(lr=1.0, warmup_steps=0, schedule="constant")
    method = methods.get_method("supervised")
    _, warm_step, state, batch = build(warm, method)
    _, constant_step, _, _ = build(constant, method)

    schedule = train_state.learning_rate_schedule(warm)
    total, warmup = warm.num_steps, warm.optim.warmup_steps
    for k in range(total):
        expected = k / warmup if k < warmup else 0.5 * (1 + np.cos(np.pi * (k - warmup) / 6))
        assert float(schedule(k)) == pytest.approx(expected, rel=1e-6, abs=1e-7), k

    # Step 0 of the warm-up has learning rate 0: nothing moves.
    new_state, metrics = warm_step(state, batch)
    assert float(metrics["learning_rate"]) == 0.0
    for a, b in zip(_np(state.params), _np(new_state.params)):
        np.testing.assert_array_equal(a, b)
    # Step 2 of 4: half the constant-rate update from the same state, batch and key. The
    # optimizer's schedule reads its own step count (in opt_state), which advances with step.
    counts = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, 2) if getattr(path[-1], "name", "") == "count" else x,
        state.opt_state,
    )
    assert sum(x.dtype == jnp.int32 and int(x) == 2 for x in jax.tree.leaves(counts)) >= 1
    at_two = state.replace(step=jnp.asarray(2, jnp.int32), opt_state=counts)
    warm_state, metrics = warm_step(at_two, batch)
    constant_state, _ = constant_step(at_two, batch)
    assert float(metrics["learning_rate"]) == pytest.approx(0.5)
    before = _np(at_two.params)
    for p0, pw, pc in zip(before, _np(warm_state.params), _np(constant_state.params)):
        np.testing.assert_allclose(pw - p0, 0.5 * (pc - p0), rtol=1e-3, atol=1e-6)
    assert any(np.abs(pc - p0).max() > 1e-3 for p0, pc in zip(before, _np(constant_state.params)))
