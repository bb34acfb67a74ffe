"""Each loss against a NumPy reference written here from the paper's formula, plus hand cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comatch_jax.core import losses


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _random_probs(rng, b, c):
    return _softmax(rng.normal(size=(b, c)) * 3)


# ------------------------------------------------------------------ references (loops, NumPy)
def reference_smoothing(p, z, qz, qp, alpha, t):
    out = np.zeros_like(p)
    for b in range(len(p)):
        weights = np.array([np.exp(z[b] @ qz[k] / t) for k in range(len(qz))])
        weights /= weights.sum()
        out[b] = alpha * p[b] + (1 - alpha) * sum(weights[k] * qp[k] for k in range(len(qz)))
    return out


def reference_label_graph(q, threshold):
    n = len(q)
    w = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            value = 1.0 if i == j else float(q[i] @ q[j])
            w[i, j] = value if value >= threshold else 0.0
        w[i] /= w[i].sum()
    return w


def reference_embedding_graph(z0, z1, t):
    n = len(z0)
    w = np.array([[np.exp(z0[i] @ z1[j] / t) for j in range(n)] for i in range(n)])
    return w / w.sum(1, keepdims=True)


def reference_contrastive(wq, wz):
    return np.mean(
        [-sum(wq[i, j] * np.log(wz[i, j] + 1e-7) for j in range(len(wq))) for i in range(len(wq))]
    )


def reference_masked_ce(logits, q, tau):
    log_p = np.log(_softmax(logits))
    return np.mean([-(q[b] @ log_p[b]) * float(q[b].max() >= tau) for b in range(len(q))])


@pytest.mark.parametrize("b,c,d,k", [(4, 3, 5, 7), (16, 10, 8, 32)])
def test_memory_smoothed_pseudo_labels_matches_reference(b, c, d, k):
    rng = np.random.default_rng(b)
    p, qp = _random_probs(rng, b, c), _random_probs(rng, k, c)
    z, qz = _unit(rng.normal(size=(b, d))), _unit(rng.normal(size=(k, d)))
    got = losses.memory_smoothed_pseudo_labels(
        jnp.array(p), jnp.array(z), jnp.array(qz), jnp.array(qp), alpha=0.9, temperature=0.2
    )
    np.testing.assert_allclose(got, reference_smoothing(p, z, qz, qp, 0.9, 0.2), atol=1e-5)
    np.testing.assert_allclose(np.sum(got, -1), 1.0, atol=1e-5)


def test_memory_smoothing_hand_case():
    # One queue entry: a = 1, so q = alpha p + (1 - alpha) p_1.
    p = jnp.array([[1.0, 0.0]])
    got = losses.memory_smoothed_pseudo_labels(
        p,
        jnp.array([[1.0, 0.0]]),
        jnp.array([[0.0, 1.0]]),
        jnp.array([[0.0, 1.0]]),
        alpha=0.75,
        temperature=0.1,
    )
    np.testing.assert_allclose(got, [[0.75, 0.25]], atol=1e-6)


@pytest.mark.parametrize("b,c", [(5, 3), (24, 10)])
def test_pseudo_label_graph_matches_reference(b, c):
    q = _random_probs(np.random.default_rng(c), b, c)
    got = losses.pseudo_label_graph(jnp.array(q), threshold=0.3)
    np.testing.assert_allclose(got, reference_label_graph(q, 0.3), atol=1e-5)


def test_pseudo_label_graph_hand_case():
    # q0 = q1 = one-hot(0), q2 = one-hot(1): rows 0 and 1 connect to each other, row 2 only to itself.
    q = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = losses.pseudo_label_graph(q, threshold=0.8)
    np.testing.assert_allclose(got, [[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]], atol=1e-6)


@pytest.mark.parametrize("b,d", [(4, 3), (32, 16)])
def test_embedding_graph_and_contrastive_loss_match_reference(b, d):
    rng = np.random.default_rng(d)
    z0, z1 = _unit(rng.normal(size=(b, d))), _unit(rng.normal(size=(b, d)))
    q = _random_probs(rng, b, 4)
    wz = losses.embedding_graph(jnp.array(z0), jnp.array(z1), temperature=0.2)
    np.testing.assert_allclose(wz, reference_embedding_graph(z0, z1, 0.2), atol=1e-5)
    wq = reference_label_graph(q, 0.5)
    got = losses.graph_contrastive_loss(jnp.array(wq), wz)
    np.testing.assert_allclose(
        got, reference_contrastive(wq, reference_embedding_graph(z0, z1, 0.2)), rtol=1e-5
    )


def test_contrastive_loss_hand_case():
    # Identity target and a uniform 2x2 similarity graph: each row costs -log(0.5).
    got = losses.graph_contrastive_loss(jnp.eye(2), jnp.full((2, 2), 0.5))
    np.testing.assert_allclose(got, np.log(2) - 2e-7, rtol=1e-6)


def test_contrastive_loss_has_no_gradient_into_target_graph():
    grad = jax.grad(lambda wq: losses.graph_contrastive_loss(wq, jnp.full((2, 2), 0.5)))(jnp.eye(2))
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("b,c", [(6, 3), (40, 10)])
def test_masked_pseudo_label_loss_matches_reference(b, c):
    rng = np.random.default_rng(b + c)
    logits, q = rng.normal(size=(b, c)), _random_probs(rng, b, c)
    tau = float(np.median(q.max(1)))  # about half the batch is kept
    loss, mask = losses.masked_pseudo_label_loss(jnp.array(logits), jnp.array(q), threshold=tau)
    np.testing.assert_allclose(loss, reference_masked_ce(logits, q, tau), rtol=1e-5)
    np.testing.assert_array_equal(mask, (q.max(1) >= tau).astype(np.float32))


def test_masked_pseudo_label_loss_hand_case():
    # Uniform logits over 2 classes: CE = log 2 for the kept example, 0 for the masked one.
    loss, mask = losses.masked_pseudo_label_loss(
        jnp.zeros((2, 2)), jnp.array([[1.0, 0.0], [0.5, 0.5]]), threshold=0.95
    )
    np.testing.assert_allclose(loss, np.log(2) / 2, rtol=1e-6)
    np.testing.assert_array_equal(mask, [1.0, 0.0])


def test_cross_entropy_matches_reference():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(8, 5)), rng.integers(0, 5, 8)
    expected = -np.mean(np.log(_softmax(logits))[np.arange(8), labels])
    np.testing.assert_allclose(
        losses.cross_entropy(jnp.array(logits), jnp.array(labels)), expected, rtol=1e-5
    )


def test_hard_pseudo_label_loss_matches_reference():
    rng = np.random.default_rng(1)
    logits, p = rng.normal(size=(8, 4)), _random_probs(rng, 8, 4)
    tau = float(np.median(p.max(1)))
    loss, _ = losses.hard_pseudo_label_loss(jnp.array(logits), jnp.array(p), threshold=tau)
    log_p = np.log(_softmax(logits))
    expected = np.mean([-log_p[b, p[b].argmax()] * float(p[b].max() >= tau) for b in range(8)])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_distribution_alignment_matches_reference():
    rng = np.random.default_rng(2)
    length, c = 4, 3
    history, count = jnp.zeros((length, c)), jnp.zeros((), jnp.int32)
    means = []
    for step in range(6):  # wraps around the ring buffer of 4
        p = _random_probs(rng, 5, c)
        got, history, count = losses.distribution_alignment(jnp.array(p), history, count)
        means.append(p.mean(0))
        average = np.mean(means[-length:], axis=0)
        expected = p / average
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert int(count) == 6


def test_distribution_alignment_hand_case():
    # A batch whose mean is already uniform is unchanged.
    p = jnp.array([[0.8, 0.2], [0.2, 0.8]])
    got, _, _ = losses.distribution_alignment(p, jnp.zeros((32, 2)), jnp.zeros((), jnp.int32))
    np.testing.assert_allclose(got, p, atol=1e-6)
