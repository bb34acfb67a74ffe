"""The one dataset type every reader returns, and streamed per-channel image statistics."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

# Rows per block in `pixel_sums` (bounds its int64 temporaries whatever the array size).
_SUMS_ROWS = 32


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labeled train set, a labeled test set and optional unlabeled images, as uint8 arrays.

    Every reader in `comatch_jax.data` returns this type. Arrays are in memory or
    memory-mapped (`np.memmap`, e.g. an image folder's unlabeled cache); rows of an array and
    of its `*_paths` correspond. For an image folder, train = labeled/ (less a held-out part),
    test = val/ (or the held-out part) and unlabeled = unlabeled/; for TFDS, unlabeled is the
    `extra_unlabeled_split`.

    Fields:
      train_images, test_images, unlabeled_images: uint8 [N, H, W, C] (unlabeled may be None).
      train_labels, test_labels: int32 [N], in 0..num_classes-1.
      class_names: one name per class; num_classes == len(class_names).
      source: where the data came from, e.g. "idx:/usr/share/datasets/fashion-mnist".
      name: the dataset's name ("fashion_mnist", "image_folder", ...); "" if built by hand.
      mean, std: per-channel statistics of the pixels in [0, 1] units (the dataset's standard
        published values, or measured on an image folder's training images); () = unknown.
      train_paths, test_paths, unlabeled_paths: file of each row relative to the folder
        root (image folders), else ().
      skipped_corrupt: files left out as unreadable (image folders, corrupt_policy 'skip').
      file_digests: part ("train", "test", "unlabeled") -> sha256 hex over the sorted
        (path, size, mtime) of that part's files, where the data comes from files.

    Raises ValueError (one line) when a shape or dtype does not match.
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
        named = [
            ("train", self.train_images, self.train_labels, self.train_paths),
            ("test", self.test_images, self.test_labels, self.test_paths),
            ("unlabeled", self.unlabeled_images, None, self.unlabeled_paths),
        ]
        for part, images, labels, paths in named:
            if images is None:
                if paths:
                    raise ValueError(
                        f"ImageDataset has {len(paths)} {part} paths but no {part} images; "
                        "pass the images or no paths."
                    )
                continue
            if images.dtype != np.uint8 or images.ndim != 4:
                raise ValueError(
                    f"ImageDataset.{part}_images must be uint8 [N, H, W, C], got "
                    f"{images.dtype} {images.shape}; convert it before building."
                )
            if images.shape[1:] != self.train_images.shape[1:]:
                raise ValueError(
                    f"ImageDataset.{part}_images are {images.shape[1:]} but train_images are "
                    f"{self.train_images.shape[1:]}; give every part the same image shape."
                )
            if paths and len(paths) != len(images):
                raise ValueError(
                    f"ImageDataset has {len(paths)} {part} paths for {len(images)} images; "
                    "pass one path per image."
                )
            if labels is not None and (
                labels.dtype != np.int32 or labels.shape != images.shape[:1]
            ):
                raise ValueError(
                    f"ImageDataset.{part}_labels must be int32 [{images.shape[0]}], got "
                    f"{labels.dtype} {labels.shape}; make it match the images."
                )
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"ImageDataset has {len(self.class_names)} class names but "
                f"num_classes={self.num_classes}; pass one name per class."
            )
        channels = self.train_images.shape[-1]
        for field, values in (("mean", self.mean), ("std", self.std)):
            if values and len(values) != channels:
                raise ValueError(
                    f"ImageDataset.{field} has {len(values)} values for {channels}-channel "
                    "images; give one per channel."
                )

    @property
    def channels(self) -> int:
        """Number of image channels (C)."""
        return int(self.train_images.shape[-1])


def pixel_sums(images: np.ndarray) -> np.ndarray:
    """Per-image, per-channel pixel sums and sums of squares, exactly, as int64 [N, 2, C].

    `images` is uint8 [N, H, W, C] (a memmap is read a few rows at a time); row n holds
    (sum of x, sum of x^2) over the pixels of image n in 0..255 units.
    """
    num, channels = len(images), images.shape[-1]
    out = np.zeros((num, 2, channels), np.int64)
    for begin in range(0, num, _SUMS_ROWS):
        block = np.asarray(images[begin : begin + _SUMS_ROWS])
        flat = block.reshape(len(block), -1, channels).astype(np.int64)
        out[begin : begin + len(block), 0] = flat.sum(axis=1)
        out[begin : begin + len(block), 1] = np.einsum("npc,npc->nc", flat, flat)
    return out


def statistics_from_sums(sums: np.ndarray, pixels_per_image: int) -> tuple[tuple, tuple]:
    """Per-channel (mean, std) in [0, 1] units from `pixel_sums` rows (int64 [N, 2, C]).

    std is the population standard deviation over every pixel of the N images, computed in
    float64 from the exact integer totals. Raises ValueError when N == 0.
    """
    count = len(sums) * pixels_per_image
    if count <= 0:
        raise ValueError("Cannot compute the mean/std of zero images; add images.")
    totals = np.asarray(sums, np.int64).sum(axis=0)  # [2, C], exact
    mean = totals[0].astype(np.float64) / count
    variance = np.maximum(totals[1].astype(np.float64) / count - mean * mean, 0.0)
    return (
        tuple(float(m / 255.0) for m in mean),
        tuple(float(s / 255.0) for s in np.sqrt(variance)),
    )


def image_statistics(*arrays: np.ndarray | None) -> tuple[tuple, tuple]:
    """Per-channel (mean, std) in [0, 1] units over every image of `arrays` (uint8
    [N, H, W, C], same H, W, C; None entries are skipped), streamed a few rows at a time."""
    present = [a for a in arrays if a is not None and len(a)]
    if not present:
        raise ValueError("Cannot compute the mean/std of zero images; add images.")
    sums = np.concatenate([pixel_sums(a) for a in present])
    return statistics_from_sums(sums, int(np.prod(present[0].shape[1:3])))
