"""Self-supervised and FixMatch losses against NumPy references and hand cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comatch_jax.core import evaluation, losses


def reference_barlow_twins(a, b, lam):
    n, d = a.shape
    an = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)
    bn = (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-5)
    c = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            c[i, j] = sum(an[k, i] * bn[k, j] for k in range(n)) / n
    return sum((1 - c[i, i]) ** 2 for i in range(d)) + lam * sum(
        c[i, j] ** 2 for i in range(d) for j in range(d) if i != j
    )


def reference_nt_xent(a, b, t):
    z = np.concatenate([a, b])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(a)
    total = 0.0
    for i in range(2 * n):
        positive = i + n if i < n else i - n
        denominator = sum(np.exp(z[i] @ z[k] / t) for k in range(2 * n) if k != i)
        total += -np.log(np.exp(z[i] @ z[positive] / t) / denominator)
    return total / (2 * n)


def reference_simsiam(p1, p2, z1, z2):
    cos = lambda p, z: np.mean(
        [p[i] @ z[i] / np.linalg.norm(p[i]) / np.linalg.norm(z[i]) for i in range(len(p))]
    )
    return -0.5 * cos(p1, z2) - 0.5 * cos(p2, z1)


@pytest.mark.parametrize("n,d", [(8, 4), (32, 16)])
def test_barlow_twins_matches_reference(n, d):
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    got = losses.barlow_twins_loss(jnp.array(a), jnp.array(b), lambda_offdiag=5e-3)
    np.testing.assert_allclose(got, reference_barlow_twins(a, b, 5e-3), rtol=1e-5)


def test_barlow_twins_is_zero_for_identical_decorrelated_embeddings():
    # Columns of a scaled orthogonal design: standardised, C = identity exactly.
    h = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], float)
    z = jnp.array(h[:, 1:])  # three zero-mean, unit-variance, uncorrelated columns
    assert float(losses.barlow_twins_loss(z, z, lambda_offdiag=5e-3)) < 1e-4


@pytest.mark.parametrize("n,d,t", [(4, 3, 0.5), (16, 8, 0.2)])
def test_nt_xent_matches_brute_force_loop(n, d, t):
    rng = np.random.default_rng(d)
    a, b = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    np.testing.assert_allclose(
        losses.nt_xent_loss(jnp.array(a), jnp.array(b), temperature=t),
        reference_nt_xent(a, b, t),
        rtol=1e-5,
    )


def test_nt_xent_hand_case():
    # Two images, identical views, orthogonal to each other: each anchor sees its positive
    # at cos 1 and two negatives at cos 0 -> -log(e^{1/t} / (e^{1/t} + 2)).
    z = jnp.eye(2)
    t = 0.5
    expected = -np.log(np.exp(1 / t) / (np.exp(1 / t) + 2))
    np.testing.assert_allclose(losses.nt_xent_loss(z, z, temperature=t), expected, rtol=1e-6)


def test_simsiam_matches_reference():
    rng = np.random.default_rng(3)
    p1, p2, z1, z2 = (rng.normal(size=(6, 5)) for _ in range(4))
    got = losses.simsiam_loss(*(jnp.array(x) for x in (p1, p2, z1, z2)))
    np.testing.assert_allclose(got, reference_simsiam(p1, p2, z1, z2), rtol=1e-5)
    # Hand case: predictions equal to their targets give the minimum, -1.
    np.testing.assert_allclose(
        losses.simsiam_loss(jnp.array(z2), jnp.array(z1), jnp.array(z1), jnp.array(z2)),
        -1.0,
        rtol=1e-6,
    )


def test_simsiam_gradient_does_not_flow_through_the_stop_gradient_branch():
    rng = np.random.default_rng(4)
    p1, p2, z1, z2 = (jnp.array(rng.normal(size=(6, 5))) for _ in range(4))
    grad_z = jax.grad(lambda z1, z2: losses.simsiam_loss(p1, p2, z1, z2), argnums=(0, 1))(z1, z2)
    assert all(np.all(np.asarray(g) == 0) for g in grad_z)
    grad_p = jax.grad(lambda p1: losses.simsiam_loss(p1, p2, z1, z2))(p1)
    assert np.any(np.asarray(grad_p) != 0)


def test_reconstruction_losses():
    logits = jnp.array([[0.0, 2.0]])
    target = jnp.array([[0.5, 1.0]])
    sigmoid = 1 / (1 + np.exp(-np.array([0.0, 2.0])))
    np.testing.assert_allclose(
        losses.reconstruction_loss(logits, target, kind="mse"),
        np.mean((sigmoid - [0.5, 1.0]) ** 2),
        rtol=1e-6,
    )
    bce = -np.mean([0.5 * np.log(sigmoid[0]) + 0.5 * np.log(1 - sigmoid[0]), np.log(sigmoid[1])])
    np.testing.assert_allclose(
        losses.reconstruction_loss(logits, target, kind="bce"), bce, rtol=1e-5
    )
    with pytest.raises(ValueError):
        losses.reconstruction_loss(logits, target, kind="l1")


def test_knn_votes_weighted_by_similarity():
    train = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = jnp.array([0, 0, 1])
    test = jnp.array([[1.0, 0.05], [0.1, 1.0]])
    predicted = evaluation.knn_predict(train, labels, test, num_classes=2, k=2, temperature=0.1)
    np.testing.assert_array_equal(predicted, [0, 1])
    # k larger than the bank is capped.
    assert evaluation.knn_predict(
        train, labels, test, num_classes=2, k=200, temperature=0.07
    ).shape == (2,)


def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    features = rng.normal(size=(60, 8)) + 4 * np.eye(8)[labels]
    probe = evaluation.fit_linear_probe(
        features, labels, num_classes=3, steps=200, learning_rate=0.1, weight_decay=0.0
    )
    assert np.mean(np.asarray(evaluation.linear_probe_predict(probe, features)) == labels) == 1.0
