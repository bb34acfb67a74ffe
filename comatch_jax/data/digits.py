"""scikit-learn's bundled 8x8 digits (no download needed)."""

from __future__ import annotations

import numpy as np

from comatch_jax.data.dataset import ImageDataset, image_statistics
from comatch_jax.data.idx import DIGIT_CLASS_NAMES

# Number of scikit-learn digits (of 1797) used for training; the rest is the test set.
_DIGITS_NUM_TRAIN = 1500


def load_digits_dataset() -> ImageDataset:
    """scikit-learn's real 8x8 digits: first 1500 train, last 297 test, 0..255 uint8, with the
    mean/std of the 1500 training images (none are published)."""
    from sklearn import datasets  # imported only when this dataset is read

    digits = datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    labels, n = digits.target.astype(np.int32), _DIGITS_NUM_TRAIN
    mean, std = image_statistics(images[:n])
    return ImageDataset(
        train_images=images[:n],
        train_labels=labels[:n],
        test_images=images[n:],
        test_labels=labels[n:],
        num_classes=10,
        class_names=DIGIT_CLASS_NAMES,
        source="sklearn:load_digits",
        name="digits",
        mean=mean,
        std=std,
    )
