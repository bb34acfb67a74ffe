"""What every reader shares: the ImageDataset type, exact per-channel pixel statistics, the
normalisation a run uses, the data fingerprint a resume is checked against, and the lazy
TensorFlow import (only the TFDS reader and the image-folder cache decode with TensorFlow)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

# Rows per block in `pixel_sums` (bounds its int64 temporaries whatever the array size).
_SUMS_ROWS = 32

# Per-channel (mean, std) of the training split in [0, 1] units (std over all pixels of the
# split), as published and used by the reference code:
#   fashion_mnist, mnist: the training images' statistics (PyTorch examples/mnist; 0.2860 /
#     0.3530 in Fashion-MNIST benchmarks);
#   cifar10, cifar100: kekmodel/FixMatch-pytorch and salesforce/CoMatch dataset/cifar.py;
#   svhn_cropped: the train split's statistics of common baselines (PatrickZH/DeepCore);
#   stl10: TorchSSL / USB (microsoft/Semi-supervised-learning), labeled + unlabeled splits.
# scikit-learn's digits and image folders have none: they are measured.
STANDARD_STATISTICS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "stl10": ((0.4409, 0.4279, 0.3868), (0.2683, 0.2610, 0.2687)),
}


@functools.lru_cache(maxsize=None)
def import_tensorflow() -> Any:
    """TensorFlow, imported once and on first use, with GPUs hidden from it (JAX owns them)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised its devices; cannot change now.
        logging.warning("Could not hide GPUs from TensorFlow (already initialised).")
    return tf


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """What every reader returns: uint8 images [N, H, W, C] (in memory or memory-mapped) and
    int32 labels [N] in 0..num_classes-1 of a train and a test part, and optional unlabeled
    images (an image folder's unlabeled/, TFDS's `extra_unlabeled_split`).

    name: "fashion_mnist", "image_folder", ... ("" if built by hand); source: where the data
    came from, e.g. "idx:/usr/share/datasets/fashion-mnist"; mean, std: per-channel
    statistics in [0, 1] units, standard or measured (() = unknown); *_paths: each row's file
    relative to an image folder's root; skipped_corrupt: files left out as unreadable;
    file_digests: part -> sha256 hex over its files' (path, size, mtime), where known.
    Raises ValueError (one line) for arrays of the wrong shape, dtype or label range.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    source: str
    unlabeled_images: np.ndarray | None = None
    name: str = ""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    train_paths: tuple[str, ...] = ()
    test_paths: tuple[str, ...] = ()
    unlabeled_paths: tuple[str, ...] = ()
    skipped_corrupt: tuple[str, ...] = ()
    file_digests: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = self.train_images.shape[1:]
        for part, labels, paths in [
            ("train", self.train_labels, self.train_paths),
            ("test", self.test_labels, self.test_paths),
            ("unlabeled", None, self.unlabeled_paths),
        ]:
            images = getattr(self, f"{part}_images")
            if images is None:
                problem = f"{len(paths)} paths but no images" if paths else None
            elif images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
                problem = f"images {images.dtype} {images.shape}, not uint8 [N, *{shape}]"
            elif paths and len(paths) != len(images):
                problem = f"{len(paths)} paths for {len(images)} images"
            elif labels is not None and (
                labels.dtype != np.int32
                or labels.shape != images.shape[:1]
                or not 0 <= labels.min(initial=0) <= labels.max(initial=0) < self.num_classes
            ):
                top = self.num_classes - 1
                problem = (
                    f"labels {labels.dtype} {labels.shape} from {labels.min(initial=0)} to "
                    f"{labels.max(initial=0)}, not int32 [{len(images)}] in 0..{top}"
                )
            else:
                problem = None
            if problem:
                raise ValueError(f"ImageDataset {part}_images: {problem}; fix the reader's arrays.")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"ImageDataset has {len(self.class_names)} class names for num_classes="
                f"{self.num_classes}; pass one name per class."
            )
        for field in ("mean", "std"):
            if getattr(self, field) and len(getattr(self, field)) != self.channels:
                raise ValueError(
                    f"ImageDataset.{field} has {len(getattr(self, field))} values for "
                    f"{self.channels}-channel images; give one per channel."
                )

    @property
    def channels(self) -> int:
        """Number of image channels (C)."""
        return int(self.train_images.shape[-1])


# ------------------------------------------------------------------ pixel statistics


def pixel_sums(images: np.ndarray) -> np.ndarray:
    """Per image and channel (sum of x, sum of x^2) over its pixels in 0..255 units, exactly:
    int64 [N, 2, C] from uint8 [N, H, W, C] (a memmap is read a few rows at a time)."""
    num, channels = len(images), images.shape[-1]
    out = np.zeros((num, 2, channels), np.int64)
    for begin in range(0, num, _SUMS_ROWS):
        block = np.asarray(images[begin : begin + _SUMS_ROWS])
        flat = block.reshape(len(block), -1, channels).astype(np.int64)
        out[begin : begin + len(block), 0] = flat.sum(axis=1)
        out[begin : begin + len(block), 1] = np.einsum("npc,npc->nc", flat, flat)
    return out


def statistics_from_sums(sums: np.ndarray, pixels_per_image: int) -> tuple[tuple, tuple]:
    """Per-channel (mean, std) in [0, 1] units from `pixel_sums` rows: the population std over
    every pixel, in float64 from the exact integer totals. Raises ValueError for no rows."""
    count = len(sums) * pixels_per_image
    if count <= 0:
        raise ValueError("Cannot compute the mean/std of zero images; add images.")
    totals = np.asarray(sums, np.int64).sum(axis=0)  # [2, C], exact
    mean = totals[0].astype(np.float64) / count
    variance = np.maximum(totals[1].astype(np.float64) / count - mean * mean, 0.0)
    return tuple(float(m / 255) for m in mean), tuple(float(s / 255) for s in np.sqrt(variance))


def image_statistics(*arrays: np.ndarray | None) -> tuple[tuple, tuple]:
    """Per-channel (mean, std) in [0, 1] units over every image of `arrays` (uint8
    [N, H, W, C], same H, W, C; None entries are skipped), streamed a few rows at a time."""
    present = [a for a in arrays if a is not None and len(a)]
    if not present:
        raise ValueError("Cannot compute the mean/std of zero images; add images.")
    sums = np.concatenate([pixel_sums(a) for a in present])
    return statistics_from_sums(sums, int(np.prod(present[0].shape[1:3])))


def format_channels(values: Sequence[float]) -> str:
    """Per-channel values as the logs print them: (0.5090, 0.5062, 0.5012)."""
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def resolve_normalization(
    config_mean: Sequence[float], config_std: Sequence[float], dataset: ImageDataset
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel (mean, std) in [0, 1] units to normalise `dataset`'s images with.

    A non-empty config value (dataset.mean / dataset.std) wins; an empty one means the data's
    own: the dataset's standard or measured values, else measured here over its train and
    unlabeled images. Raises ValueError (one line) for a given value of another length than
    the images' channels, or a std entry <= 0.
    """
    channels = dataset.channels
    given = {"mean": tuple(map(float, config_mean)), "std": tuple(map(float, config_std))}
    for field, values in given.items():
        if values and len(values) != channels:
            raise ValueError(
                f"dataset.{field} has {len(values)} values but the images have {channels} "
                f"channel{'s' * (channels != 1)}; set --config.dataset.{field} to {channels} "
                "values, or to () to use the data's own."
            )
    mean, std = given["mean"], given["std"]
    if not (mean and std):
        own_mean, own_std = dataset.mean, dataset.std
        if not (own_mean and own_std):
            own_mean, own_std = image_statistics(dataset.train_images, dataset.unlabeled_images)
        mean, std = mean or tuple(own_mean), std or tuple(own_std)
    if any(s <= 0 for s in std):
        raise ValueError(
            f"dataset.std {format_channels(std)} has an entry <= 0 (a constant channel?); "
            "set --config.dataset.std to positive values."
        )
    where = "given" if given["mean"] and given["std"] else "from the data"
    logging.info(
        f"Normalising images with mean {format_channels(mean)}, std {format_channels(std)} "
        f"({where})."
    )
    return mean, std


# ----------------------------------------------------------------------- fingerprint

PARTS = ("train", "test", "unlabeled")
# The fingerprint part of the answers file (config.dataset.extra_labels_csv): its rows and the
# sha256 of its bytes, so that a run does not resume on another labeled set.
ANSWERS = "extra_labels_csv"


def data_fingerprint(dataset: ImageDataset) -> dict[str, Any]:
    """A JSON-serialisable fingerprint: {"format", "source", "class_names", "parts": {part:
    {"count", "files"}}}, count = images in the part (0 when absent), files = the dataset's
    file digest of the part or None. `pipeline.prepare_data` adds the ANSWERS part."""
    parts = {}
    for part in PARTS:
        images = getattr(dataset, f"{part}_images")
        count = 0 if images is None else int(len(images))
        parts[part] = {"count": count, "files": dataset.file_digests.get(part)}
    return {
        "format": 1,
        "source": dataset.source,
        "class_names": list(dataset.class_names),
        "parts": parts,
    }


def entries_digest(entries: Sequence[tuple[str, int, int]]) -> str:
    """sha256 hex over (path, size, mtime_ns) entries, in the given order: a part's `files`
    in the data fingerprint."""
    digest = hashlib.sha256()
    for rel, size, mtime in entries:
        digest.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _images(count: int) -> str:
    return f"{count:,} image" + "s" * (count != 1)


def describe_data_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What changed from fingerprint `old` to `new`, in one line, or None if nothing did.

    Classes added or removed or reordered (labels would mean other classes); per part present
    in both, the net change of its count ("unlabeled: 5 -> 7 images (2 added)"), or that its
    files (or the answers file) changed at the same count; a changed source.
    """
    changes = []
    old_classes, new_classes = list(old["class_names"]), list(new["class_names"])
    added = [c for c in new_classes if c not in old_classes]
    removed = [c for c in old_classes if c not in new_classes]
    if added:
        changes.append(f"classes added: {', '.join(added)}")
    if removed:
        changes.append(f"classes removed: {', '.join(removed)}")
    if not added and not removed and old_classes != new_classes:
        changes.append("the class order changed (labels now mean other classes)")
    for part, after in new["parts"].items():
        before = old["parts"].get(part)
        if before is None:  # a part older runs did not record
            continue
        a, b = int(before["count"]), int(after["count"])
        if a != b:
            delta = f"{b - a:,} added" if b > a else f"{a - b:,} removed"
            changes.append(f"{part}: {a:,} -> {_images(b)} ({delta})")
        elif before["files"] and after["files"] and before["files"] != after["files"]:
            what = "its content changed" if part == ANSWERS else "files were replaced or modified"
            changes.append(f"{part}: {_images(b)}, but {what}")
    if old.get("source") != new.get("source"):
        changes.append(f"source: {old.get('source')} -> {new.get('source')}")
    return "; ".join(changes) if changes else None
