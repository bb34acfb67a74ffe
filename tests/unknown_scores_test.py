"""Each unknown score against a naive NumPy reference written here, plus hand-checked cases."""

import math

import numpy as np
import pytest

from comatch_jax.core import unknown_scores


# ------------------------------------------------------------------ references (loops, NumPy)
def reference_max_softmax(logits):
    out = []
    for row in logits:
        probs = [math.exp(v) / sum(math.exp(u) for u in row) for v in row]
        out.append(1.0 - max(probs))
    return np.array(out)


def reference_energy(logits, temperature):
    return np.array(
        [-temperature * math.log(sum(math.exp(v / temperature) for v in row)) for row in logits]
    )


def reference_nearest(embeddings, labeled, k):
    out = []
    for z in embeddings:
        cosines = sorted(
            (float(z @ r / np.linalg.norm(z) / np.linalg.norm(r)) for r in labeled), reverse=True
        )
        out.append(1.0 - cosines[k - 1])
    return np.array(out)


@pytest.mark.parametrize("n,c", [(1, 2), (7, 6), (33, 10)])
def test_max_softmax_matches_reference(n, c):
    logits = np.random.default_rng(n).normal(size=(n, c)) * 3
    np.testing.assert_allclose(
        unknown_scores.max_softmax(logits), reference_max_softmax(logits), atol=1e-12
    )


@pytest.mark.parametrize("n,c,temperature", [(1, 2, 1.0), (7, 6, 1.0), (33, 10, 2.5)])
def test_energy_matches_reference(n, c, temperature):
    logits = np.random.default_rng(n).normal(size=(n, c)) * 3
    np.testing.assert_allclose(
        unknown_scores.energy(logits, temperature),
        reference_energy(logits, temperature),
        rtol=1e-12,
    )


@pytest.mark.parametrize("n,m,d,k", [(1, 1, 2, 1), (9, 5, 4, 1), (40, 12, 8, 3), (5, 6, 3, 6)])
def test_nearest_labeled_matches_reference(n, m, d, k):
    rng = np.random.default_rng(n + m)
    embeddings, labeled = rng.normal(size=(n, d)) * 2, rng.normal(size=(m, d))
    np.testing.assert_allclose(
        unknown_scores.nearest_labeled(embeddings, labeled, k),
        reference_nearest(embeddings, labeled, k),
        atol=1e-12,
    )


def test_nearest_labeled_across_query_chunks(monkeypatch):
    monkeypatch.setattr(unknown_scores, "_QUERY_CHUNK", 4)
    rng = np.random.default_rng(0)
    embeddings, labeled = rng.normal(size=(10, 5)), rng.normal(size=(7, 5))
    np.testing.assert_allclose(
        unknown_scores.nearest_labeled(embeddings, labeled, 2),
        reference_nearest(embeddings, labeled, 2),
        atol=1e-12,
    )


def test_hand_checked_cases():
    # logits (0, 0): softmax (1/2, 1/2) -> 1 - 1/2; energy -log(2).
    # logits (log 3, 0): softmax (3/4, 1/4) -> 1/4; energy -log(3 + 1) = -log 4.
    logits = np.array([[0.0, 0.0], [math.log(3.0), 0.0]])
    np.testing.assert_allclose(unknown_scores.max_softmax(logits), [0.5, 0.25])
    np.testing.assert_allclose(unknown_scores.energy(logits), [-math.log(2), -math.log(4)])
    # labeled directions: +x and +y. (2, 0) is on +x: 1 - 1 = 0; (1, 1) is 45 degrees from
    # both: 1 - cos 45; (-1, 0) is opposite +x, 90 degrees from +y: 1 - 0 = 1. With k = 2
    # the second most similar: (2, 0) -> +y at 90 degrees: 1; (-1, 0) -> +x at 180: 2.
    labeled = np.array([[1.0, 0.0], [0.0, 3.0]])
    queries = np.array([[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    np.testing.assert_allclose(
        unknown_scores.nearest_labeled(queries, labeled), [0.0, 1 - math.sqrt(0.5), 1.0], atol=1e-12
    )
    np.testing.assert_allclose(
        unknown_scores.nearest_labeled(queries, labeled, 2),
        [1.0, 1 - math.sqrt(0.5), 2.0],
        atol=1e-12,
    )


def test_large_logits_do_not_overflow():
    logits = np.array([[1000.0, 0.0], [-1000.0, -1000.0]])
    np.testing.assert_allclose(unknown_scores.energy(logits), [-1000.0, 1000.0 - math.log(2)])
    np.testing.assert_allclose(unknown_scores.max_softmax(logits), [0.0, 0.5])


def test_compute_dispatches_and_checks():
    rng = np.random.default_rng(0)
    logits, z, labeled = rng.normal(size=(4, 3)), rng.normal(size=(4, 2)), rng.normal(size=(3, 2))
    np.testing.assert_array_equal(
        unknown_scores.compute("energy", logits=logits), unknown_scores.energy(logits)
    )
    np.testing.assert_array_equal(
        unknown_scores.compute(
            "nearest_labeled", logits=logits, embeddings=z, labeled_embeddings=labeled
        ),
        unknown_scores.nearest_labeled(z, labeled),
    )
    with pytest.raises(ValueError, match="needs embeddings"):
        unknown_scores.compute("nearest_labeled", logits=logits)
    with pytest.raises(ValueError, match="Unknown score"):
        unknown_scores.compute("entropy", logits=logits)
    with pytest.raises(ValueError, match="k must be in"):
        unknown_scores.nearest_labeled(z, labeled, 4)


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.05, 0.1, 0.5, 0.95])
@pytest.mark.parametrize("n", [1, 20, 1000, 1001])
def test_threshold_gives_the_target_false_rejection_rate(rate, n):
    known = np.random.default_rng(n).normal(size=n)  # distinct scores
    threshold = unknown_scores.threshold_for_rejection_rate(known, rate)
    rejected = np.mean(known > threshold)
    assert rejected <= rate + 1e-12
    assert rejected > rate - 1.0 / n  # as close as the sample allows
    assert np.mean(known > np.nextafter(threshold, -np.inf)) > rate  # the lowest such T


def test_threshold_hand_checked_and_ties():
    scores = np.arange(10.0)  # 0..9
    assert unknown_scores.threshold_for_rejection_rate(scores, 0.0) == 9.0  # reject none
    assert unknown_scores.threshold_for_rejection_rate(scores, 0.2) == 7.0  # reject 8, 9
    assert unknown_scores.threshold_for_rejection_rate(scores, 0.25) == 7.0  # 2.5 -> 2
    ties = np.array([0.0, 1.0, 1.0, 1.0])  # no T rejects exactly 1 of 4: reject fewer
    assert unknown_scores.threshold_for_rejection_rate(ties, 0.25) == 1.0
    for rate in (-0.1, 1.0):
        with pytest.raises(ValueError):
            unknown_scores.threshold_for_rejection_rate(scores, rate)
    with pytest.raises(ValueError):
        unknown_scores.threshold_for_rejection_rate(np.array([]), 0.1)
