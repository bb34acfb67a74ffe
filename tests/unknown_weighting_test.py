"""comatch.unknown_weighting: losses.labeled_similarity_weights against a naive NumPy
reference and hand cases, and what it changes in CoMatch's loss (only L_u^cls, only when on)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comatch_jax import config_lib
from comatch_jax.core import losses, methods

from comatch_adaptive_test import _expected_q

# jitted: one program per shape instead of one per op
_similarity_weights = jax.jit(losses.labeled_similarity_weights)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_weights(z, references, mask, n_sigma=2.0):
    nearest = np.array(
        [max(float(zb @ r) for r, keep in zip(references, mask) if keep) for zb in z]
    )
    mean, variance = nearest.mean(), max(nearest.var(), losses.SOFTMATCH_VARIANCE_FLOOR)
    return np.array(
        [
            1.0 if s >= mean else math.exp(-((s - mean) ** 2) * n_sigma**2 / (2 * variance))
            for s in nearest
        ]
    )


@pytest.mark.parametrize("b,m,d", [(2, 1, 3), (12, 7, 8), (48, 30, 16)])
def test_weights_match_reference(b, m, d):
    rng = np.random.default_rng(b)
    z, references = _unit(rng.normal(size=(b, d))), _unit(rng.normal(size=(m, d)))
    mask = rng.random(m) < 0.6
    mask[0] = True
    got = _similarity_weights(jnp.asarray(z), jnp.asarray(references), mask)
    assert got.dtype == jnp.float32 and got.shape == (b,)
    np.testing.assert_allclose(got, reference_weights(z, references, mask), rtol=1e-5, atol=1e-6)


def test_weights_hand_checked():
    # Labeled references along +x and +y; the one along -x is masked out (not labeled).
    references = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    mask = jnp.array([True, True, False])
    # Nearest similarities: (1, 0) -> 1; (0.6, 0.8) -> 0.8; (-1, 0) -> 0 (not 1: -x is masked);
    # (-0.6, -0.8) -> -0.6. Mean 0.3, variance (0.49 + 0.25 + 0.09 + 0.81) / 4 = 0.41.
    z = jnp.array([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0], [-0.6, -0.8]])
    # n_sigma = 1: exp(-gap^2 / (2 0.41)); the default n_sigma = 2 divides 2 sigma^2 by 4.
    expected = [1.0, 1.0, math.exp(-(0.3**2) / 0.82), math.exp(-(0.9**2) / 0.82)]
    np.testing.assert_allclose(
        _similarity_weights(z, references, mask, n_sigma=1.0), expected, rtol=1e-6
    )
    np.testing.assert_allclose(
        _similarity_weights(z, references, mask), np.power(expected, 4), rtol=1e-5
    )
    # Equal similarities: variance 0 is floored, every weight is 1 (nothing below the mean).
    same = _similarity_weights(jnp.ones((3, 1)), jnp.ones((1, 1)), jnp.array([True]))
    np.testing.assert_array_equal(same, [1.0, 1.0, 1.0])


def test_weights_have_no_gradient():
    z = jnp.asarray(_unit(np.random.default_rng(0).normal(size=(5, 4))))
    grad = jax.jit(  # one program instead of one per op
        jax.grad(lambda x: jnp.sum(losses.labeled_similarity_weights(x, x[:2], jnp.ones(2, bool))))
    )
    np.testing.assert_array_equal(grad(z), 0.0)


def _comatch_inputs(rng, b=6, mu=2, c=4, d=8, k=12):
    def output(n):
        return {
            "logits": jnp.asarray(rng.normal(size=(n, c)) * 2, jnp.float32),
            "embedding": jnp.asarray(_unit(rng.normal(size=(n, d))), jnp.float32),
        }

    outputs = {"labeled_weak": output(b)}
    for view in ("weak", "strong0", "strong1"):
        outputs[f"unlabeled_{view}"] = output(b * mu)
    labels = rng.integers(0, c, b)
    batch = {"labels": jnp.asarray(labels), "unlabeled_labels": jnp.zeros(b * mu, jnp.int32)}
    return outputs, batch, (c, d, k)


@pytest.mark.parametrize("rule", ["fixed", "freematch"])
def test_comatch_loss_weighs_only_l_u_cls_and_only_when_on(rule):
    rng = np.random.default_rng(1)
    outputs, batch, (c, d, k) = _comatch_inputs(rng)
    config = config_lib.base_config()
    config.comatch.update(queue_size=k, threshold=0.3, threshold_rule=rule)
    state = methods.init_comatch_state(config, c, d)
    # A full queue: half soft (unlabeled) entries, half one-hot (labeled) ones.
    state["queue_embeddings"] = jnp.asarray(_unit(rng.normal(size=(k, d))), jnp.float32)
    soft = rng.dirichlet(np.ones(c), k // 2)
    one_hot = np.eye(c)[rng.integers(0, c, k - k // 2)]
    state["queue_probs"] = jnp.asarray(np.concatenate([soft, one_hot]), jnp.float32)
    state["queue_filled"] = jnp.asarray(k, jnp.int32)

    loss_off, (state_off, metrics_off) = methods.comatch_loss(outputs, batch, state, config)
    config.comatch.unknown_weighting = True
    loss_on, (state_on, metrics_on) = methods.comatch_loss(outputs, batch, state, config)

    # Everything but L_u^cls is the same; the state too.
    for key in ("loss_x", "loss_ctr"):
        assert metrics_on[key] == metrics_off[key]
    jax.tree.map(np.testing.assert_array_equal, state_on, state_off)

    # Reference: q as the loss builds it, the method's mask, and the weights over the
    # unlabeled weak embeddings with the labeled batch and the one-hot entries as references.
    q = _expected_q(outputs, state, config)
    ce = np.asarray(losses.soft_cross_entropy(outputs["unlabeled_strong0"]["logits"], q))
    if rule == "fixed":
        thresholds = np.full(c, 0.3)
    else:
        thresholds, _, _ = losses.self_adaptive_thresholds(
            q, state["global_threshold"], state["class_probs"], momentum=0.999
        )
    mask = np.max(q, -1) >= np.asarray(thresholds)[np.argmax(q, -1)]
    np.testing.assert_allclose(metrics_off["loss_u"], np.mean(ce * mask), rtol=1e-5)
    references = np.concatenate(
        [np.asarray(outputs["labeled_weak"]["embedding"]), np.asarray(state["queue_embeddings"])]
    )
    is_labeled = np.r_[np.ones(6, bool), np.zeros(k // 2, bool), np.ones(k - k // 2, bool)]
    weights = reference_weights(
        np.asarray(outputs["unlabeled_weak"]["embedding"]), references, is_labeled
    )
    assert mask.sum() >= 3 and np.min(weights[mask]) < 0.9  # the weights change kept terms
    np.testing.assert_allclose(metrics_on["loss_u"], np.mean(ce * mask * weights), rtol=1e-5)
    np.testing.assert_allclose(metrics_on["mask_rate"], np.mean(mask * weights), rtol=1e-5)
    expected = loss_off + config.comatch.lambda_cls * (metrics_on["loss_u"] - metrics_off["loss_u"])
    np.testing.assert_allclose(loss_on, expected, rtol=1e-5)
