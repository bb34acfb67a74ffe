"""The class-balanced labeled/unlabeled split of a labeled train set."""

from __future__ import annotations

import numpy as np


def split_labeled_unlabeled(
    labels: np.ndarray,
    *,
    num_labels: int,
    num_classes: int,
    seed: int,
    include_labeled_in_unlabeled: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Picks `num_labels` class-balanced labeled indices; the rest are unlabeled.

    Returns sorted int32 (labeled_indices, unlabeled_indices). The unlabeled set is
    every index not labeled, or every index if `include_labeled_in_unlabeled`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}; pass train labels.")
    n = labels.shape[0]
    if num_labels <= 0:
        raise ValueError(f"num_labels must be positive, got {num_labels}; set it > 0.")
    if num_labels > n:
        raise ValueError(
            f"num_labels={num_labels} exceeds the {n} training images; " "lower num_labels."
        )
    if num_classes <= 0 or num_labels % num_classes:
        raise ValueError(
            f"num_labels={num_labels} is not divisible by num_classes={num_classes}; "
            "use a multiple of num_classes for a balanced split."
        )
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, "
            f"found {labels.min()}..{labels.max()}; "
            "check num_classes."
        )
    per_class = num_labels // num_classes
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if members.size < per_class:
            raise ValueError(
                f"Class {c} has {members.size} images but {per_class} labels per class "
                "are needed; lower num_labels."
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    labeled = np.sort(np.concatenate(chosen)).astype(np.int32)
    if include_labeled_in_unlabeled:
        unlabeled = np.arange(n, dtype=np.int32)
    else:
        unlabeled = np.setdiff1d(np.arange(n), labeled).astype(np.int32)
    return labeled, unlabeled
