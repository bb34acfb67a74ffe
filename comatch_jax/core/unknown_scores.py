"""Unknown scores: how likely an image belongs to none of the trained classes (NumPy only).

Every score is higher for an image more likely unknown, so one threshold rule serves all:
an image is called unknown when its score is above T, and `threshold_for_rejection_rate`
picks T on validation images (all of known classes). Inputs are one model's outputs for N
images (inference.predict); scores are float64 [N].

- `max_softmax` (Hendrycks & Gimpel, ICLR 2017, arXiv 1610.02136): 1 - max_c softmax(l)_c.
- `energy` (Liu et al., NeurIPS 2020, arXiv 2010.03759, Eq. 1 and 4): the free energy
  E(x) = -T log sum_c exp(l_c / T), T = 1; lower for known inputs, so it is the score as is.
- `nearest_labeled` (Sun et al., ICML 2022, arXiv 2204.06507, "deep nearest neighbours"):
  1 - cos(z, z_(k)), z_(k) the k-th most similar labeled image in the embedding space
  (L2-normalised here, as in the paper). Sun et al. rank by the Euclidean distance of
  normalised vectors, sqrt(2 - 2 cos), a monotone function of 1 - cos: the same ranking.
  k scales with the reference set (their k = 50 for CIFAR's 50,000 training images, 0.1 %);
  a few labels per class make k = 1 the analogue, and k > 1 needs k references of the class.
"""

from __future__ import annotations

import numpy as np

SCORES = ("max_softmax", "energy", "nearest_labeled")
_QUERY_CHUNK = 4096  # query rows per similarity block: bounds memory for large reference sets


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """1 - max softmax probability of `logits` [N, C] -> [N] float64 in [0, 1 - 1/C]."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    return 1.0 - probs.max(axis=-1)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Free energy -T logsumexp(logits / T) of `logits` [N, C] -> [N] float64 (logit units);
    computed from the largest logit, so large logits do not overflow."""
    scaled = np.asarray(logits, np.float64) / temperature
    top = scaled.max(axis=-1)
    return -temperature * (top + np.log(np.exp(scaled - top[:, None]).sum(axis=-1)))


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def nearest_labeled(embeddings: np.ndarray, labeled: np.ndarray, k: int = 1) -> np.ndarray:
    """1 - cosine similarity of each of `embeddings` [N, D] to its k-th most similar row of
    `labeled` [M, D] (the labeled images' embeddings, same model) -> [N] float64 in [0, 2].
    Both are L2-normalised first, so any embedding works (CoMatch's projection, or the
    pooled features). Raises ValueError unless 1 <= k <= M."""
    labeled = _normalise(labeled)
    if not 1 <= k <= len(labeled):
        raise ValueError(f"k must be in [1, {len(labeled)}] (the labeled images), got {k}")
    embeddings = _normalise(embeddings)
    scores = np.empty(len(embeddings))
    for first in range(0, len(embeddings), _QUERY_CHUNK):
        similarity = embeddings[first : first + _QUERY_CHUNK] @ labeled.T
        kth = -np.partition(-similarity, k - 1, axis=-1)[:, k - 1]
        scores[first : first + _QUERY_CHUNK] = 1.0 - kth
    return scores


def compute(
    name: str,
    *,
    logits: np.ndarray,
    embeddings: np.ndarray | None = None,
    labeled_embeddings: np.ndarray | None = None,
    k: int = 1,
) -> np.ndarray:
    """The score called `name` (one of SCORES) -> [N] float64. `nearest_labeled` needs
    `embeddings` [N, D] and `labeled_embeddings` [M, D]. Raises ValueError otherwise."""
    if name == "max_softmax":
        return max_softmax(logits)
    if name == "energy":
        return energy(logits)
    if name == "nearest_labeled":
        if embeddings is None or labeled_embeddings is None:
            raise ValueError("nearest_labeled needs embeddings and labeled_embeddings")
        return nearest_labeled(embeddings, labeled_embeddings, k)
    raise ValueError(f"Unknown score {name!r}; expected one of {SCORES}")


def threshold_for_rejection_rate(known_scores: np.ndarray, rate: float) -> float:
    """The threshold T for a target false-rejection rate: at most `rate` of `known_scores`
    [N] (validation images, all of known classes) are above T, and T is the lowest score
    that does so (the ceil((1 - rate) N)-th smallest score). Ties at T can make the measured
    rate lower than `rate`. Raises ValueError unless 0 <= rate < 1 and N > 0."""
    scores = np.sort(np.asarray(known_scores, np.float64).ravel())
    if not 0.0 <= rate < 1.0 or not len(scores):
        raise ValueError(f"need 0 <= rate < 1 and some scores, got rate={rate}, N={len(scores)}")
    most_rejected = int(np.floor(rate * len(scores) + 1e-9))
    return float(scores[len(scores) - 1 - most_rejected])
