"""Which unlabeled images to ask a person to label next (active learning), and the CSV files.

Every strategy is a pure function. Score functions map class probabilities [N, C] to one
score per image where HIGHER means MORE WANTED (more uncertain); `k_center_greedy` picks a
spread-out set in embedding space. `select` dispatches by name and returns the chosen rows.

The CSV files of the loop (request_labels writes the requests; data.answers reads the
answers) are written whole (comatch_jax.atomic_files) with file names as the file system holds
them (quoted where needed; undecodable bytes kept via surrogateescape), so every name
round-trips; `read_request_ids` reads a requests CSV's ids back.
No TensorFlow here: this runs with numpy alone.
"""

from __future__ import annotations

import csv
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.spatial import distance

from comatch_jax import atomic_files
from comatch_jax.data.answers import read_csv_table

SCORE_STRATEGIES = ("entropy", "margin", "least_confidence", "random")
STRATEGIES = SCORE_STRATEGIES + ("kcenter",)

# How CSVs are written: file names that are not valid UTF-8 (POSIX allows any bytes)
# round-trip as surrogate escapes (data.answers reads them back).
CSV_WRITE = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}

# Rows of the distance matrix computed at once in k-center greedy (bounds memory).
_DISTANCE_CHUNK = 4096


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """Prediction entropy -sum_c p_c log p_c [N] (nats); maximal, log C, for uniform probs."""
    probs = np.asarray(probs, np.float64)
    return -np.sum(probs * np.log(np.clip(probs, 1e-12, 1.0)), axis=-1)


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """1 - (p_top1 - p_top2) [N]: 1 when the two best classes tie, 0 when one class has all."""
    probs = np.asarray(probs, np.float64)
    top2 = -np.partition(-probs, 1, axis=-1)[:, :2]
    return 1.0 - (top2[:, 0] - top2[:, 1])


def least_confidence_scores(probs: np.ndarray) -> np.ndarray:
    """1 - p_top1 [N]: how far the most likely class is from certainty."""
    return 1.0 - np.max(np.asarray(probs, np.float64), axis=-1)


def random_scores(num: int, seed: int) -> np.ndarray:
    """Uniform [0, 1) scores [num], the same for the same seed (the random baseline)."""
    return np.random.default_rng(seed).random(num)


def distance_to_nearest(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Euclidean distance [N] from each point [N, D] to its nearest center [M, D] (inf if no
    centers), computed over chunks of centers to bound memory."""
    nearest = np.full(len(points), np.inf)
    for start in range(0, len(centers), _DISTANCE_CHUNK):
        chunk = distance.cdist(points, centers[start : start + _DISTANCE_CHUNK])
        nearest = np.minimum(nearest, chunk.min(axis=1))
    return nearest


def k_center_greedy(
    embeddings: np.ndarray, labeled_embeddings: np.ndarray, budget: int
) -> np.ndarray:
    """Core-set selection (Sener & Savarese 2018): `budget` row indices of `embeddings`.

    Greedily adds the point farthest from everything chosen so far (labeled points first),
    which approximately minimises the largest distance from any point to its nearest chosen
    one. Without labeled points the first pick is the point farthest from the mean.
    """
    embeddings = np.asarray(embeddings, np.float64)
    _check_budget(budget, len(embeddings))
    if len(labeled_embeddings):
        nearest = distance_to_nearest(embeddings, labeled_embeddings)
    else:
        nearest = distance_to_nearest(embeddings, embeddings.mean(axis=0, keepdims=True))
    chosen = []
    for _ in range(budget):
        pick = int(np.argmax(nearest))
        chosen.append(pick)
        nearest = np.minimum(nearest, distance_to_nearest(embeddings, embeddings[pick : pick + 1]))
        nearest[pick] = -np.inf  # never picked twice, even among duplicate points
    return np.asarray(chosen, np.int64)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, highest first; ties go to the lower index."""
    _check_budget(k, len(scores))
    return np.argsort(-np.asarray(scores), kind="stable")[:k]


def class_balanced_top_k(scores: np.ndarray, predicted_classes: np.ndarray, k: int) -> np.ndarray:
    """Top-k taken round-robin over predicted classes: every class's best, then every
    class's second best, and so on; within a round, higher scores first. A class that runs
    out of images drops out of later rounds.

    With entropy scores this is "entropy within predicted class": it keeps the requests
    from piling onto the one or two classes the model finds hardest.
    """
    scores = np.asarray(scores)
    predicted_classes = np.asarray(predicted_classes)
    _check_budget(k, len(scores))
    by_score = np.argsort(-scores, kind="stable")
    rank_in_class = np.empty(len(scores), np.int64)
    for c in np.unique(predicted_classes):
        members = by_score[predicted_classes[by_score] == c]
        rank_in_class[members] = np.arange(len(members))
    # lexsort: the last key is the primary one.
    order = np.lexsort((np.arange(len(scores)), -scores, rank_in_class))
    return order[:k]


def strategy_scores(strategy: str, probs: np.ndarray, seed: int = 0) -> np.ndarray:
    """The per-image scores of a score strategy (higher = more wanted)."""
    scores = {
        "entropy": entropy_scores,
        "margin": margin_scores,
        "least_confidence": least_confidence_scores,
        "random": lambda probs: random_scores(len(probs), seed),
    }
    if strategy not in scores:
        raise ValueError(f"{strategy!r} is not a score strategy ({', '.join(scores)}).")
    return scores[strategy](probs)


def select(
    strategy: str,
    *,
    probs: np.ndarray,
    budget: int,
    embeddings: np.ndarray | None = None,
    labeled_embeddings: np.ndarray | None = None,
    balance_by_predicted_class: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """Row indices (into `probs`) of the `budget` images to request, most wanted first.

    `embeddings` [N, D] and `labeled_embeddings` [L, D] are needed by 'kcenter' only.
    `balance_by_predicted_class` spreads a score strategy's picks over the predicted classes.
    """
    probs = np.asarray(probs)
    check_strategy(strategy, balance_by_predicted_class)
    _check_budget(budget, len(probs))
    if strategy == "kcenter":
        if embeddings is None or labeled_embeddings is None:
            raise ValueError("strategy 'kcenter' needs embeddings and labeled_embeddings.")
        return k_center_greedy(embeddings, labeled_embeddings, budget)
    scores = strategy_scores(strategy, probs, seed)
    if balance_by_predicted_class:
        return class_balanced_top_k(scores, np.argmax(probs, axis=-1), budget)
    return top_k(scores, budget)


def check_strategy(strategy: str, balance_by_predicted_class: bool = False) -> None:
    """Raises ValueError with one line for an unknown strategy or an impossible combination."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}.")
    if strategy == "kcenter" and balance_by_predicted_class:
        raise ValueError(
            "balance_by_predicted_class needs a score strategy "
            f"({', '.join(SCORE_STRATEGIES)}), not kcenter."
        )


def _check_budget(budget: int, available: int) -> None:
    if budget <= 0 or budget > available:
        raise ValueError(
            f"budget must be in 1..{available} (the number of candidate images), got {budget}."
        )


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Writes a CSV whole (a temporary file renamed when complete), UTF-8, fields quoted as
    the csv module does, so any file name round-trips."""
    with atomic_files.open_atomic(path, "w", **CSV_WRITE) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def read_request_ids(path: str, *, num_images: int) -> np.ndarray:
    """The `id` column of a requests CSV: distinct train-split indices in 0..num_images-1;
    ValueError (one line) naming the first line that is not."""
    header, rows = read_csv_table(path, ("id",))
    ids: dict[int, None] = {}
    for line, row in rows:
        text = row[header.index("id")].strip()
        if not text.isdigit() or int(text) >= num_images or int(text) in ids:
            raise ValueError(
                f"{path} line {line}: id {text!r} is not in the train split (ids are "
                f"0..{num_images - 1}) or appears more than once."
            )
        ids[int(text)] = None
    return np.asarray(list(ids), np.int64)
