"""CoMatch with FreeMatch's self-adaptive threshold (comatch.threshold_rule='freematch').

Against NumPy loops written here from FreeMatch's Eq. 6-8 (Wang et al., ICLR 2023) applied to
CoMatch's memory-smoothed pseudo-labels q: tau_t = m tau + (1-m) mean_b max q_b;
p~_t = m p~ + (1-m) mean_b q_b; tau_t(c) = p~_t(c) / max p~_t * tau_t;
L_u^cls = mean_b 1[max q_b >= tau_t(argmax q_b)] H(q_b, softmax(strong_b)).
Plus a hand-checked tiny case, the fixed rule against the paper's CoMatch, and a 20-step run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comatch_jax import config_lib
from comatch_jax.core import losses, methods
from comatch_jax.trainer import train

from adaptive_losses_test import jitted_loss
from losses_test import (
    reference_contrastive,
    reference_embedding_graph,
    reference_label_graph,
    reference_masked_ce,
    reference_smoothing,
)
from train_test import RecordingWriter, synthetic_dataset, tiny_config

FIXED_STATE_KEYS = {
    "queue_embeddings",
    "queue_probs",
    "queue_pointer",
    "queue_filled",
    "da_history",
    "da_count",
}


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_adaptive(q, strong_logits, tau, p_model, m):
    """(class thresholds, tau_t, p~_t, mask, L_u^cls), one example and class at a time."""
    batch, classes = q.shape
    tau = m * tau + (1 - m) * sum(max(q[b]) for b in range(batch)) / batch
    p_model = m * p_model + (1 - m) * sum(q[b] for b in range(batch)) / batch
    thresholds = np.array([p_model[c] / max(p_model) * tau for c in range(classes)])
    log_q_strong = np.log(_softmax(strong_logits))
    mask = np.zeros(batch)
    loss = 0.0
    for b in range(batch):
        mask[b] = float(max(q[b]) >= thresholds[int(np.argmax(q[b]))])
        loss += mask[b] * -sum(q[b, c] * log_q_strong[b, c] for c in range(classes)) / batch
    return thresholds, tau, p_model, mask, loss


@pytest.mark.parametrize(
    "seed,batch,classes,m", [(0, 16, 10, 0.999), (1, 7, 3, 0.5), (2, 32, 5, 0.9)]
)
def test_adaptive_threshold_and_mask_match_reference(seed, batch, classes, m):
    rng = np.random.default_rng(seed)
    q = _softmax(rng.normal(size=(batch, classes)) * 3).astype(np.float32)
    strong = rng.normal(size=(batch, classes)).astype(np.float32)
    tau0 = np.float32(rng.uniform(0.1, 0.9))
    p0 = _softmax(rng.normal(size=classes)).astype(np.float32)
    thresholds, tau, p_model = losses.self_adaptive_thresholds(
        jnp.asarray(q), jnp.asarray(tau0), jnp.asarray(p0), momentum=m
    )
    loss, mask = losses.masked_pseudo_label_loss(
        jnp.asarray(strong), jnp.asarray(q), threshold=thresholds
    )
    ref = reference_adaptive(q.astype(np.float64), strong, float(tau0), p0.astype(np.float64), m)
    np.testing.assert_allclose(thresholds, ref[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(tau, ref[1], rtol=1e-6)
    np.testing.assert_allclose(p_model, ref[2], rtol=1e-5, atol=1e-7)
    # Confidences within float32 rounding of their threshold could flip; none are here.
    confidence = q.max(-1)
    assert np.min(np.abs(confidence - ref[0][q.argmax(-1)])) > 1e-5
    np.testing.assert_array_equal(mask, ref[3])
    np.testing.assert_allclose(loss, ref[4], rtol=1e-5, atol=1e-7)
    # FreeMatch's own thresholds are the same rule (shared code, same numbers).
    free = losses.freematch_thresholds(
        jnp.asarray(q), jnp.asarray(tau0), jnp.asarray(p0), jnp.asarray(p0), momentum=m
    )
    np.testing.assert_array_equal(free[0], thresholds)
    np.testing.assert_array_equal(free[1], tau)


def test_adaptive_threshold_hand_case():
    """q = [[0.9, 0.1], [0.4, 0.6]], tau_0 = 0.9, p~_0 = [0.5, 0.5], m = 0.5:
    tau_1 = 0.45 + 0.5 * 0.75 = 0.825; p~_1 = [0.575, 0.425];
    tau_1(c) = [0.825, 0.425 / 0.575 * 0.825 = 0.6097826]; 0.9 >= 0.825 kept, 0.6 < 0.6098
    dropped (a fixed 0.95 drops both); strong logits 0 -> L_u^cls = (log 2 + 0) / 2."""
    q = jnp.asarray([[0.9, 0.1], [0.4, 0.6]], jnp.float32)
    thresholds, tau, p_model = losses.self_adaptive_thresholds(
        q, jnp.float32(0.9), jnp.asarray([0.5, 0.5], jnp.float32), momentum=0.5
    )
    np.testing.assert_allclose(tau, 0.825, rtol=1e-6)
    np.testing.assert_allclose(p_model, [0.575, 0.425], rtol=1e-6)
    np.testing.assert_allclose(thresholds, [0.825, 0.6097826], rtol=1e-6)
    loss, mask = losses.masked_pseudo_label_loss(jnp.zeros((2, 2)), q, threshold=thresholds)
    np.testing.assert_array_equal(mask, [1.0, 0.0])
    np.testing.assert_allclose(loss, np.log(2) / 2, rtol=1e-6)


# ----------------------------------------------------------------------------- in comatch_loss
NUM_CLASSES, EMBED = 5, 8


def _config(rule=None):
    config = config_lib.base_config()
    config.batch_size, config.mu = 4, 3
    config.comatch.queue_size, config.comatch.da_length = 48, 4
    config.comatch.threshold = 0.6
    if rule is not None:
        config.comatch.threshold_rule = rule
    return config


def _outputs(rng, config):
    def view(n):
        embedding = rng.normal(size=(n, EMBED)).astype(np.float32)
        embedding /= np.linalg.norm(embedding, axis=-1, keepdims=True)
        logits = (rng.normal(size=(n, NUM_CLASSES)) * 3).astype(np.float32)
        return {"logits": jnp.asarray(logits), "embedding": jnp.asarray(embedding)}

    b, u = config.batch_size, config.batch_size * config.mu
    return {
        "labeled_weak": view(b),
        "unlabeled_weak": view(u),
        "unlabeled_strong0": view(u),
        "unlabeled_strong1": view(u),
    }


def _batch(rng, config):
    return {
        "labels": jnp.asarray(rng.integers(0, NUM_CLASSES, config.batch_size), jnp.int32),
        "unlabeled_labels": jnp.asarray(
            rng.integers(0, NUM_CLASSES, config.batch_size * config.mu), jnp.int32
        ),
    }


def _full_queue(state, rng):
    """A full queue of random entries, so that q is memory-smoothed."""
    embeddings = rng.normal(size=state["queue_embeddings"].shape).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=-1, keepdims=True)
    probs = _softmax(rng.normal(size=state["queue_probs"].shape)).astype(np.float32)
    return {
        **state,
        "queue_embeddings": jnp.asarray(embeddings),
        "queue_probs": jnp.asarray(probs),
        "queue_filled": jnp.asarray(state["queue_embeddings"].shape[0], jnp.int32),
    }


def _expected_q(outputs, state, config):
    """q as the paper builds it (DA then memory smoothing), from the library's tested parts."""

    @jax.jit  # one program instead of one per op
    def q(weak, state):
        probs = jax.nn.softmax(weak["logits"], axis=-1)
        probs, _, _ = losses.distribution_alignment(probs, state["da_history"], state["da_count"])
        return losses.memory_smoothed_pseudo_labels(
            probs,
            weak["embedding"],
            state["queue_embeddings"],
            state["queue_probs"],
            alpha=config.comatch.alpha,
            temperature=config.comatch.temperature,
        )

    return q(outputs["unlabeled_weak"], state)


@pytest.mark.parametrize("seed", [0, 1])
def test_comatch_loss_with_the_freematch_rule_masks_q_by_the_adaptive_thresholds(seed):
    rng = np.random.default_rng(seed)
    config = _config("freematch")
    config_lib.validate_config(config)
    config.comatch.threshold_momentum = 0.9
    method = methods.get_method("comatch")
    state = method.init_state(config, NUM_CLASSES, EMBED)
    assert set(state) == FIXED_STATE_KEYS | {"global_threshold", "class_probs"}
    np.testing.assert_allclose(state["global_threshold"], 1 / NUM_CLASSES)
    np.testing.assert_allclose(state["class_probs"], np.full(NUM_CLASSES, 1 / NUM_CLASSES))
    state = _full_queue(state, rng)
    state["global_threshold"] = jnp.float32(0.5)
    outputs, batch = _outputs(rng, config), _batch(rng, config)

    loss, (new_state, metrics) = jitted_loss(method, config)(outputs, batch, state)
    q = np.asarray(_expected_q(outputs, state, config), np.float64)
    strong = np.asarray(outputs["unlabeled_strong0"]["logits"])
    thresholds, tau, p_model, mask, loss_u = reference_adaptive(
        q, strong, 0.5, np.asarray(state["class_probs"], np.float64), 0.9
    )
    np.testing.assert_allclose(new_state["global_threshold"], tau, rtol=1e-5)
    np.testing.assert_allclose(new_state["class_probs"], p_model, rtol=1e-5)
    np.testing.assert_allclose(metrics["global_threshold"], tau, rtol=1e-5)
    assert 0 < mask.mean() < 1  # the case is not degenerate
    np.testing.assert_allclose(metrics["mask_rate"], mask.mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["loss_u"], loss_u, rtol=1e-4, atol=1e-6)
    expected = metrics["loss_x"] + metrics["loss_u"] + metrics["loss_ctr"]  # lambdas 1
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    # W^q keeps its fixed T: the contrastive term is the fixed rule's.
    _, (_, fixed_metrics) = jitted_loss(method, _config("fixed"))(outputs, batch, _strip(state))
    np.testing.assert_array_equal(metrics["loss_ctr"], fixed_metrics["loss_ctr"])


def _strip(state):
    return {k: v for k, v in state.items() if k in FIXED_STATE_KEYS}


@pytest.mark.parametrize("full", [False, True])
def test_the_fixed_rule_is_the_papers_comatch(full):
    """threshold_rule 'fixed' is the paper's CoMatch (Eq. 3-10 with the official code's DA
    and queue): the real comatch_loss against a NumPy composition of losses_test's
    references, with no extra state and no extra metrics."""
    rng = np.random.default_rng(3)
    config = _config("fixed")
    method = methods.get_method("comatch")
    state = method.init_state(config, NUM_CLASSES, EMBED)
    assert set(state) == FIXED_STATE_KEYS
    if full:  # else the queue is empty and q is the aligned p
        state = _full_queue(state, rng)
    outputs, batch = _outputs(rng, config), _batch(rng, config)
    loss, (new_state, metrics) = jitted_loss(method, config)(outputs, batch, state)
    assert set(new_state) == FIXED_STATE_KEYS
    assert set(metrics) == {"loss_x", "loss_u", "loss_ctr", "mask_rate", "pseudo_label_acc"}

    o = {k: {h: np.asarray(v, np.float64) for h, v in view.items()} for k, view in outputs.items()}
    c, labels = config.comatch, np.asarray(batch["labels"])
    queue_z, queue_p = np.asarray(state["queue_embeddings"]), np.asarray(state["queue_probs"])
    p = _softmax(o["unlabeled_weak"]["logits"])
    p = p / p.mean(0)  # DA over a history of this batch alone (da_count 0)
    p /= p.sum(1, keepdims=True)
    z_weak = o["unlabeled_weak"]["embedding"]
    q = reference_smoothing(p, z_weak, queue_z, queue_p, c.alpha, c.temperature) if full else p
    assert np.min(np.abs(q.max(1) - c.threshold)) > 1e-4  # no mask flips on rounding
    loss_x = -np.mean(np.log(_softmax(o["labeled_weak"]["logits"]))[np.arange(len(labels)), labels])
    loss_u = reference_masked_ce(o["unlabeled_strong0"]["logits"], q, c.threshold)
    w_q = reference_label_graph(q, c.contrast_threshold)
    z0, z1 = o["unlabeled_strong0"]["embedding"], o["unlabeled_strong1"]["embedding"]
    loss_ctr = reference_contrastive(w_q, reference_embedding_graph(z0, z1, c.temperature))
    expected = loss_x + c.lambda_cls * loss_u + c.lambda_ctr * loss_ctr
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss_u"], loss_u, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["loss_ctr"], loss_ctr, rtol=1e-5)
    np.testing.assert_allclose(metrics["mask_rate"], np.mean(q.max(1) >= c.threshold))
    # The queue gets the weak views' embeddings with the aligned p (unlabeled) and one-hot
    # labels (labeled), written at the pointer (0).
    entries_z = np.concatenate([z_weak, o["labeled_weak"]["embedding"]])
    entries_p = np.concatenate([p, np.eye(NUM_CLASSES)[labels]])
    n = len(entries_z)
    np.testing.assert_allclose(new_state["queue_embeddings"][:n], entries_z, rtol=1e-6)
    np.testing.assert_allclose(new_state["queue_probs"][:n], entries_p, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(new_state["queue_embeddings"][n:], queue_z[n:])
    assert int(new_state["queue_pointer"]) == n
    np.testing.assert_allclose(
        new_state["da_history"][0], _softmax(o["unlabeled_weak"]["logits"]).mean(0), rtol=1e-5
    )
    assert int(new_state["da_count"]) == 1


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("threshold_rule", "flexmatch", "comatch.threshold_rule must be 'fixed' or 'freematch'"),
        ("threshold_momentum", 1.0, r"comatch.threshold_momentum must be in \[0, 1\)"),
    ],
)
def test_threshold_rule_options_are_checked(field, value, message):
    config = _config("freematch")
    config.comatch[field] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate_config(config)


def test_config_file_is_comatch_with_the_freematch_rule():
    for preset in ("", "cifar10_40"):
        config = config_lib.config_file("comatch_adaptive", preset)
        plain = config_lib.config_file("comatch", preset)
        config_lib.validate_config(config)
        assert config.method == "comatch" and config.comatch.threshold_rule == "freematch"
        assert config.comatch.threshold_momentum == 0.999
        config.comatch.threshold_rule = "fixed"
        assert config.to_dict() == plain.to_dict()  # the rule is the only difference


def test_adaptive_comatch_trains_20_steps(tmp_path):
    """A 20-step smoke run: finite losses, most unlabeled images kept from the first steps
    (thresholds start at 1/C, where the fixed 0.95 keeps few), the EMAs carried in the
    method state (and its checkpoint)."""
    config = tiny_config("comatch")
    config.comatch.threshold = 0.95
    config.comatch.threshold_rule = "freematch"
    config.num_steps = 20
    config.log_every = 5
    config.eval_every = config.checkpoint_every = 10
    writer = RecordingWriter()
    state, summary = train.train_and_evaluate(
        config, str(tmp_path), writer=writer, dataset=synthetic_dataset()
    )
    logged = [s for _, s in writer.scalars if "train/loss_u" in s or "loss_u" in s]
    logged = [{k.rpartition("/")[2]: v for k, v in s.items()} for s in logged]
    assert len(logged) == 4 and int(state.step) == 20 and summary["final_step"] == 20
    assert all(np.isfinite(v) for s in logged for v in s.values())
    assert logged[0]["mask_rate"] > 0.5
    ms = jax.device_get(state.method_state)
    assert set(ms) == FIXED_STATE_KEYS | {"global_threshold", "class_probs"}
    m = config.comatch.threshold_momentum
    low, high = m**20 * 0.1 + (1 - m**20) * 0.1, m**20 * 0.1 + (1 - m**20) * 1.0
    assert low < float(ms["global_threshold"]) < high
    assert low < logged[-1]["global_threshold"] < high
    np.testing.assert_allclose(ms["class_probs"].sum(), 1.0, rtol=1e-5)


def test_no_gradient_through_the_adaptive_thresholds_or_the_weak_view():
    """q, tau_t and p~_t are targets: zero gradient w.r.t. the weak view and the state."""
    rng = np.random.default_rng(4)
    config = _config("freematch")
    method = methods.get_method("comatch")
    state = _full_queue(method.init_state(config, NUM_CLASSES, EMBED), rng)
    outputs, batch = _outputs(rng, config), _batch(rng, config)

    def loss(outputs, state):
        return method.loss(outputs, batch, state, config)[0]

    grad = jax.jit(jax.grad(loss, argnums=(0, 1), allow_int=True))  # one program, not one per op
    grad_outputs, grad_state = grad(outputs, state)
    for head, value in grad_outputs["unlabeled_weak"].items():
        np.testing.assert_array_equal(value, 0.0, err_msg=head)
    for key in ("global_threshold", "class_probs", "queue_probs", "queue_embeddings"):
        np.testing.assert_array_equal(grad_state[key], 0.0, err_msg=key)
    assert np.abs(grad_outputs["unlabeled_strong0"]["logits"]).max() > 0
