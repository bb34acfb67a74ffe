"""Loads image-classification datasets into memory and makes labeled splits.

Sources:
  * "idx":  Fashion-MNIST / MNIST IDX files (plain or gzipped), parsed with NumPy.
            Debian's `dataset-fashion-mnist` package installs the real files in
            /usr/share/datasets/fashion-mnist.
  * "tfds": TensorFlow Datasets (`tfds.builder` + `download_and_prepare`).
  * "auto": for fashion_mnist, already-prepared TFDS data, else IDX files, else a
            TFDS download; for the other TFDS names, "tfds".
  * "digits" is scikit-learn's bundled 8x8 digits (no download needed).
  * `load_image_folder`: a directory of image files (labeled/<class>/, unlabeled/**, optional
            val/<class>/), decoded once by tf.data into uint8 .npy caches read as memmaps.

TensorFlow and TFDS are imported lazily, so the IDX and split code runs without them.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import gzip
import hashlib
import json
import math
import os
import re
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np
from absl import logging

TFDS_DATASETS = (
    "fashion_mnist",
    "mnist",
    "cifar10",
    "cifar100",
    "svhn_cropped",
    "stl10",
)
KNOWN_DATASETS = TFDS_DATASETS + ("digits",)
IDX_DATASETS = ("fashion_mnist", "mnist")
SOURCES = ("auto", "tfds", "idx")
DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"

IDX_FILENAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASS_NAMES = tuple(str(i) for i in range(10))

# IDX type byte -> big-endian NumPy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Number of scikit-learn digits (of 1797) used for training; the rest is the test set.
_DIGITS_NUM_TRAIN = 1500
# Chunk size when a TFDS split's size is unknown (see `_read_tfds_split`).
_TFDS_CHUNK = 4096


@dataclasses.dataclass(frozen=True, eq=False)
class InMemoryDataset:
    """A whole dataset held as NumPy arrays."""

    train_images: np.ndarray  # uint8 [N, H, W, C]
    train_labels: np.ndarray  # int32 [N]
    test_images: np.ndarray  # uint8 [M, H, W, C]
    test_labels: np.ndarray  # int32 [M]
    num_classes: int
    class_names: tuple[str, ...]
    source: str  # e.g. "idx:/usr/share/datasets/fashion-mnist"
    extra_unlabeled_images: np.ndarray | None = None  # uint8 [U, H, W, C]

    def __post_init__(self) -> None:
        named = [
            ("train_images", self.train_images),
            ("test_images", self.test_images),
            ("extra_unlabeled_images", self.extra_unlabeled_images),
        ]
        for field, images in named:
            if images is None:
                continue
            if images.dtype != np.uint8 or images.ndim != 4:
                raise ValueError(
                    f"InMemoryDataset.{field} must be uint8 [N, H, W, C], got "
                    f"{images.dtype} {images.shape}; convert it before building."
                )
        for field, labels, images in [
            ("train_labels", self.train_labels, self.train_images),
            ("test_labels", self.test_labels, self.test_images),
        ]:
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"InMemoryDataset.{field} must be int32 [{images.shape[0]}], got "
                    f"{labels.dtype} {labels.shape}; make it match the images."
                )
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"InMemoryDataset has {len(self.class_names)} class names but "
                f"num_classes={self.num_classes}; pass one name per class."
            )


# ----------------------------------------------------------------------------- IDX


def read_idx_file(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (plain or .gz) into a native-endian NumPy array."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(
            f"Cannot read IDX file {path} ({e}); the file is corrupt or truncated, "
            "re-download or reinstall it."
        ) from e

    if len(raw) < 4:
        raise ValueError(
            f"IDX file {path} is truncated ({len(raw)} bytes, no header); "
            "re-download or reinstall it."
        )
    magic = struct.unpack(">I", raw[:4])[0]
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(
            f"IDX file {path} has bad magic number 0x{magic:08x} (expected "
            "0x0000TTDD, e.g. 0x00000803 for images); it is corrupt or not IDX."
        )
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(
            f"IDX file {path} is truncated inside its header; " "re-download or reinstall it."
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    count = math.prod(dims)
    expected = count * dtype.itemsize
    found = len(raw) - header_len
    if found != expected:
        what = "truncated" if found < expected else "corrupt (trailing bytes)"
        raise ValueError(
            f"IDX file {path} is {what}: header dims {dims} need {expected} data "
            f"bytes, found {found}; re-download or reinstall it."
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header_len)
    return array.reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx_files(idx_dir: str) -> tuple[dict[str, str], list[str]]:
    """Returns ({key: path} of the IDX files found, [missing file names])."""
    found, missing = {}, []
    for key, base in IDX_FILENAMES.items():
        for candidate in (base, base + ".gz"):
            path = os.path.join(idx_dir, candidate)
            if os.path.isfile(path):
                found[key] = path
                break
        else:
            missing.append(base + "[.gz]")
    return found, missing


def _idx_missing_message(idx_dir: str, name: str, missing: list[str]) -> str:
    if name == "fashion_mnist":
        fix = (
            "apt-get install dataset-fashion-mnist, or set --config.dataset.idx_dir, "
            "or --config.dataset.source=tfds with internet"
        )
    else:
        fix = (
            f"set --config.dataset.idx_dir to a directory with the {name} IDX files, "
            "or --config.dataset.source=tfds with internet"
        )
    return (
        f"{name} IDX files not found in {idx_dir} " f"(missing {', '.join(missing)}); fix: {fix}."
    )


def load_idx_dataset(idx_dir: str | os.PathLike, name: str = "fashion_mnist") -> InMemoryDataset:
    """Loads Fashion-MNIST (or MNIST) from the four IDX files in `idx_dir`."""
    if name not in IDX_DATASETS:
        raise ValueError(f"IDX loading supports {IDX_DATASETS}, not {name!r}; use source='tfds'.")
    idx_dir = os.fspath(idx_dir)
    if name == "mnist" and "fashion" in os.path.abspath(idx_dir).lower():
        raise ValueError(
            f"Refusing to load {idx_dir} as mnist (it looks like Fashion-MNIST); "
            "set --config.dataset.idx_dir to the MNIST IDX files."
        )
    files, missing = _find_idx_files(idx_dir)
    if missing:
        raise FileNotFoundError(_idx_missing_message(idx_dir, name, missing))

    arrays = {key: read_idx_file(path) for key, path in files.items()}
    for split in ("train", "test"):
        images_path, labels_path = files[f"{split}_images"], files[f"{split}_labels"]
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(
                f"IDX file {images_path} holds {images.dtype} {images.shape}, expected "
                "uint8 [N, H, W] images; check that it is the right file."
            )
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise ValueError(
                f"IDX file {labels_path} holds {labels.dtype} {labels.shape}, expected "
                "uint8 [N] labels; check that it is the right file."
            )
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"IDX files {images_path} ({images.shape[0]} images) and {labels_path} "
                f"({labels.shape[0]} labels) disagree; re-download or reinstall them."
            )
        if labels.size and labels.max() >= 10:
            raise ValueError(
                f"IDX file {labels_path} has label {labels.max()} outside 0..9; "
                "check that it is the right file."
            )
    class_names = FASHION_MNIST_CLASS_NAMES if name == "fashion_mnist" else DIGIT_CLASS_NAMES
    return InMemoryDataset(
        train_images=arrays["train_images"][..., None],
        train_labels=arrays["train_labels"].astype(np.int32),
        test_images=arrays["test_images"][..., None],
        test_labels=arrays["test_labels"].astype(np.int32),
        num_classes=len(class_names),
        class_names=class_names,
        source=f"idx:{idx_dir}",
    )


# ---------------------------------------------------------------------------- TFDS


@functools.lru_cache(maxsize=None)
def _import_tensorflow() -> Any:
    """Imports TensorFlow lazily (once), hiding GPUs from TF (JAX owns the accelerator)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised its devices; cannot change now.
        logging.warning("Could not hide GPUs from TensorFlow (already initialised).")
    return tf


@functools.lru_cache(maxsize=None)
def _import_tfds() -> Any:
    """Imports TFDS lazily (once), after TensorFlow (see `_import_tensorflow`)."""
    _import_tensorflow()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    return tfds


def _tfds_builder(name: str, data_dir: str | None) -> Any:
    return _import_tfds().builder(name, data_dir=data_dir)


def tfds_is_prepared(name: str, data_dir: str | None) -> bool:
    """True if TFDS already has `name` prepared in `data_dir` (never downloads)."""
    return bool(_tfds_builder(name, data_dir).is_prepared())


def _to_images(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(
            f"{what}: expected uint8 images [N, H, W, C], got {images.dtype} "
            f"{images.shape}; this dataset's image feature is not supported."
        )
    return images


def _read_tfds_split(builder: Any, split: str) -> dict[str, np.ndarray]:
    """Reads a whole TFDS split once into NumPy arrays ('image', 'label')."""
    tfds = _import_tfds()
    if builder.info.splits.total_num_examples:
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        return {"image": data["image"], "label": data["label"]}
    # Split sizes are unknown (e.g. under `tfds.testing.mock_data` without metadata):
    # batch_size=-1 would then pad-batch to sys.maxsize, which aborts TensorFlow.
    ds = builder.as_dataset(split=split).map(lambda ex: (ex["image"], ex["label"]))
    chunks = list(tfds.as_numpy(ds.batch(_TFDS_CHUNK)))
    if not chunks:
        raise ValueError(f"TFDS split {builder.name}:{split} is empty; pick another split.")
    return {
        "image": np.concatenate([c[0] for c in chunks]),
        "label": np.concatenate([c[1] for c in chunks]),
    }


def load_tfds_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    train_split: str = "train",
    test_split: str = "test",
    extra_unlabeled_split: str | None = None,
    download: bool = True,
) -> InMemoryDataset:
    """Loads a TFDS image-classification dataset fully into memory."""
    builder = _tfds_builder(name, data_dir)
    if download:
        builder.download_and_prepare()
    label_feature = builder.info.features["label"]
    what = f"tfds:{name}"
    train = _read_tfds_split(builder, train_split)
    test = _read_tfds_split(builder, test_split)
    extra = None
    if extra_unlabeled_split is not None:
        extra = _to_images(
            _read_tfds_split(builder, extra_unlabeled_split)["image"],
            f"{what}:{extra_unlabeled_split}",
        )
    return InMemoryDataset(
        train_images=_to_images(train["image"], f"{what}:{train_split}"),
        train_labels=np.asarray(train["label"]).astype(np.int32),
        test_images=_to_images(test["image"], f"{what}:{test_split}"),
        test_labels=np.asarray(test["label"]).astype(np.int32),
        num_classes=int(label_feature.num_classes),
        class_names=tuple(str(n) for n in label_feature.names),
        source=f"tfds:{name} (data_dir={builder.data_dir})",
        extra_unlabeled_images=extra,
    )


# ---------------------------------------------------------------------- sklearn digits


def load_digits_dataset() -> InMemoryDataset:
    """scikit-learn's real 8x8 digits: first 1500 train, last 297 test, 0..255 uint8."""
    try:
        from sklearn import datasets  # pylint: disable=g-import-not-at-top
    except ImportError as e:
        raise ImportError("Dataset 'digits' needs scikit-learn; pip install scikit-learn.") from e
    digits = datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = images[..., None]
    labels = digits.target.astype(np.int32)
    n = _DIGITS_NUM_TRAIN
    return InMemoryDataset(
        train_images=images[:n],
        train_labels=labels[:n],
        test_images=images[n:],
        test_labels=labels[n:],
        num_classes=10,
        class_names=DIGIT_CLASS_NAMES,
        source="sklearn:load_digits",
    )


# -------------------------------------------------------------------------- dispatch


def load_dataset(config: ml_collections.ConfigDict) -> InMemoryDataset:
    """Loads the dataset described by the `dataset` sub-config."""
    name = config.name
    source = config.get("source", "auto")
    data_dir = config.get("data_dir", None)
    idx_dir = config.get("idx_dir", None) or DEFAULT_IDX_DIR
    train_split = config.get("train_split", "train")
    test_split = config.get("test_split", "test")
    extra_split = config.get("extra_unlabeled_split", None)

    if name not in KNOWN_DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}; set --config.dataset.name to one of "
            f"{', '.join(KNOWN_DATASETS)}."
        )
    if source not in SOURCES:
        raise ValueError(
            f"Unknown dataset source {source!r}; set --config.dataset.source to one "
            f"of {', '.join(SOURCES)}."
        )
    tfds_kwargs = dict(
        train_split=train_split,
        test_split=test_split,
        extra_unlabeled_split=extra_split,
    )

    if name == "digits":
        if source != "auto" or extra_split is not None:
            raise ValueError(
                "Dataset 'digits' comes from scikit-learn only; use "
                "--config.dataset.source=auto and no extra_unlabeled_split."
            )
        dataset = load_digits_dataset()
    elif source == "tfds" or (source == "auto" and name != "fashion_mnist"):
        dataset = load_tfds_dataset(name, data_dir, **tfds_kwargs)
    elif source == "idx":
        _check_idx_splits(name, train_split, test_split, extra_split)
        dataset = load_idx_dataset(idx_dir, name)
    else:  # auto + fashion_mnist
        dataset = _load_fashion_mnist_auto(data_dir, idx_dir, tfds_kwargs)

    logging.info(
        "Loaded dataset %s from %s: train %s, test %s.",
        name,
        dataset.source,
        dataset.train_images.shape,
        dataset.test_images.shape,
    )
    return dataset


def _check_idx_splits(
    name: str, train_split: str, test_split: str, extra_split: str | None
) -> None:
    if (train_split, test_split, extra_split) != ("train", "test", None):
        raise ValueError(
            f"IDX source for {name} only has the full 'train' and 'test' splits; "
            "use source=tfds for split slicing or extra_unlabeled_split."
        )


def _load_fashion_mnist_auto(
    data_dir: str | None, idx_dir: str, tfds_kwargs: dict[str, Any]
) -> InMemoryDataset:
    """Prepared TFDS data, else IDX files, else a TFDS download."""
    name = "fashion_mnist"
    try:
        prepared = tfds_is_prepared(name, data_dir)
    except ImportError:
        prepared = False
    if prepared:
        logging.info("fashion_mnist: using prepared TFDS data (data_dir=%s).", data_dir)
        return load_tfds_dataset(name, data_dir, download=False, **tfds_kwargs)

    _, missing = _find_idx_files(idx_dir)
    if not missing:
        _check_idx_splits(
            name,
            tfds_kwargs["train_split"],
            tfds_kwargs["test_split"],
            tfds_kwargs["extra_unlabeled_split"],
        )
        logging.info("fashion_mnist: no prepared TFDS data; using IDX files in %s.", idx_dir)
        return load_idx_dataset(idx_dir, name)

    logging.info("fashion_mnist: no TFDS data and no IDX files; trying TFDS download.")
    try:
        return load_tfds_dataset(name, data_dir, **tfds_kwargs)
    except Exception as e:  # pylint: disable=broad-except
        raise FileNotFoundError(
            f"fashion_mnist not available: not prepared in TFDS data_dir={data_dir}, "
            f"no IDX files in {idx_dir}, and the TFDS download failed "
            f"({type(e).__name__}: {e}); fix: apt-get install dataset-fashion-mnist, "
            "or set --config.dataset.idx_dir, or --config.dataset.source=tfds with "
            "internet."
        ) from e


# --------------------------------------------------------------------------- splits


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


# ---------------------------------------------------------------------- image folder

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
CORRUPT_POLICIES = ("fail", "skip")
DEFAULT_CACHE_SUBDIR = ".comatch_cache"
# Bump when the decoding or the cache layout changes, so that old caches are rebuilt.
_CACHE_FORMAT = 1
_DECODE_BATCH = 256
_DECODE_LOG_EVERY = 20_000  # images
_TEMP_PID = re.compile(r"\.tmp-(\d+)")


@dataclasses.dataclass(frozen=True, eq=False)
class FolderDataset:
    """An image folder decoded to uint8 RGB arrays (see `load_image_folder`).

    Paths are relative to the root and in the same order as the rows of their arrays.
    """

    labeled_images: np.ndarray  # uint8 [NL, S, S, 3] (memmap, or a copy with a hold-out)
    labeled_labels: np.ndarray  # int32 [NL]
    labeled_paths: tuple[str, ...]
    unlabeled_images: np.ndarray  # uint8 memmap [NU, S, S, 3]
    unlabeled_paths: tuple[str, ...]
    val_images: np.ndarray  # uint8 [NV, S, S, 3]
    val_labels: np.ndarray  # int32 [NV]
    val_paths: tuple[str, ...]
    class_names: tuple[str, ...]
    num_classes: int
    source: str  # e.g. "image_folder:/data/comp (val: held out 10% of labeled, seed 0)"
    skipped_corrupt: tuple[str, ...] = ()  # unreadable images left out (corrupt_policy 'skip')

    def __post_init__(self) -> None:
        parts = [
            ("labeled", self.labeled_images, self.labeled_labels, self.labeled_paths),
            ("unlabeled", self.unlabeled_images, None, self.unlabeled_paths),
            ("val", self.val_images, self.val_labels, self.val_paths),
        ]
        for name, images, labels, paths in parts:
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(
                    f"FolderDataset.{name}_images must be uint8 [N, S, S, 3], got "
                    f"{images.dtype} {images.shape}; convert it before building."
                )
            if len(paths) != len(images):
                raise ValueError(
                    f"FolderDataset has {len(paths)} {name} paths for {len(images)} images; "
                    "pass one path per image."
                )
            if labels is not None and (labels.dtype != np.int32 or labels.shape != (len(images),)):
                raise ValueError(
                    f"FolderDataset.{name}_labels must be int32 [{len(images)}], got "
                    f"{labels.dtype} {labels.shape}; make it match the images."
                )
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"FolderDataset has {len(self.class_names)} class names but "
                f"num_classes={self.num_classes}; pass one name per class."
            )


def _check_corrupt_policy(corrupt_policy: str) -> None:
    if corrupt_policy not in CORRUPT_POLICIES:
        raise ValueError(
            f"Unknown corrupt_policy {corrupt_policy!r}; set --config.dataset.corrupt_policy "
            f"to one of {', '.join(CORRUPT_POLICIES)}."
        )


def _scan_images(directory: str) -> tuple[list[tuple[str, int, int]], int]:
    """Sorted (relative path, size, mtime_ns) of the images below `directory`, and the number
    of non-image files ignored. Hidden files and folders (".name") are skipped, uncounted."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Image folder {directory} does not exist; create it or fix the path."
        )
    found, ignored = [], 0
    pending, seen = [""], set()
    while pending:
        rel_dir = pending.pop()
        abs_dir = os.path.join(directory, rel_dir)
        try:
            stat = os.stat(abs_dir)
            if (stat.st_dev, stat.st_ino) in seen:  # a symlink loop: list each folder once
                continue
            seen.add((stat.st_dev, stat.st_ino))
            with os.scandir(abs_dir) as it:
                entries = list(it)
        except OSError as e:
            raise type(e)(f"Cannot list {abs_dir} ({e.strerror}); fix its permissions.") from e
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
            if entry.is_dir():
                pending.append(rel)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                try:
                    stat = entry.stat()
                    found.append((rel, stat.st_size, stat.st_mtime_ns))
                except OSError:  # a broken symlink: decoding reports it as unreadable
                    found.append((rel, -1, 0))
            else:
                ignored += 1
    if ignored:
        logging.info(
            "Ignored %d non-image files in %s (extensions other than %s).",
            ignored,
            directory,
            ", ".join(IMAGE_EXTENSIONS),
        )
    found.sort()
    return found, ignored


def list_image_files(directory: str) -> tuple[list[str], int]:
    """Sorted paths (relative to `directory`, recursive) of its images, and the number of
    non-image files ignored; hidden files and folders (".name") are skipped."""
    entries, ignored = _scan_images(os.fspath(directory))
    return [rel for rel, _, _ in entries], ignored


def _scan_class_tree(root: str, part: str) -> tuple[list[tuple[str, int, int]], list[str]]:
    """Images of `root`/`part`/<class>/** (paths relative to `root`) and the sorted classes."""
    directory = os.path.join(root, part)
    entries, _ = _scan_images(directory)
    with os.scandir(directory) as it:
        classes = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(
            f"{directory} has no class folders; put images in {directory}/<class_name>/."
        )
    loose = [rel for rel, _, _ in entries if os.sep not in rel]
    if loose:
        raise ValueError(
            f"Image {os.path.join(directory, loose[0])} is not in a class folder; move it into "
            f"{directory}/<class_name>/."
        )
    counts = dict.fromkeys(classes, 0)
    for rel, _, _ in entries:
        counts[rel.split(os.sep, 1)[0]] += 1
    for name, count in counts.items():
        if not count:
            raise ValueError(
                f"Class folder {os.path.join(directory, name)} has no images "
                f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder."
            )
    return [(os.path.join(part, rel), size, mtime) for rel, size, mtime in entries], classes


def _prepare_cache_dir(root: str, cache_dir: str | None) -> str:
    """Creates the cache directory (default `root`/.comatch_cache) and checks it is writable."""
    path = os.path.abspath(cache_dir or os.path.join(root, DEFAULT_CACHE_SUBDIR))
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise PermissionError(
            f"Cannot write the image cache in {path} ({e.strerror or e}); set "
            "--config.dataset.cache_dir to a writable directory."
        ) from e
    return path


def _decode_resize(path: Any, image_size: int) -> Any:
    """Reads and decodes one image file to uint8 RGB [S, S, 3] (TensorFlow ops).

    Grayscale and palette images become RGB; alpha is dropped (not composited). The image is
    resized with antialiasing to S x S without keeping its aspect ratio (no crop, so nothing is
    cut off); an image already S x S passes through unchanged.
    """
    tf = _import_tensorflow()
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _decoded_batches(full_paths: list[str], image_size: int) -> Iterator[tuple[np.ndarray, ...]]:
    """Yields (indices, uint8 images) batches in file order, leaving out unreadable files."""
    tf = _import_tensorflow()
    indices = np.arange(len(full_paths), dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices((indices, [os.fsencode(p) for p in full_paths]))
    ds = ds.map(
        lambda index, path: (index, _decode_resize(path, image_size)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    # A file that cannot be read or decoded fails only its own element: ignore_errors drops it,
    # and the caller names it from the gap in the indices carried along.
    ds = ds.ignore_errors(log_warning=False).batch(_DECODE_BATCH).prefetch(1)
    yield from ds.as_numpy_iterator()


def _decode_failure(full_path: str, image_size: int) -> str:
    """Why TensorFlow cannot decode `full_path`, in one line."""
    try:
        _decode_resize(os.fsencode(full_path), image_size)
    except Exception as e:  # pylint: disable=broad-except
        message = re.sub(r"\{\{[^}]*\}\}\s*", "", getattr(e, "message", "") or str(e))
        message = message.split(" [Op:")[0].strip().splitlines()
        return message[0] if message else type(e).__name__
    return "it failed to decode in the tf.data pipeline"


def _corrupt_image_error(root: str, rel_path: str, image_size: int) -> ValueError:
    path = os.path.join(root, rel_path)
    return ValueError(
        f"Cannot decode image {path} ({_decode_failure(path, image_size)}); replace or delete "
        "it, or set --config.dataset.corrupt_policy=skip to leave unreadable images out."
    )


def _create_npy(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """A writable uint8 .npy memmap whose disk space is reserved up front, so that a full disk
    raises here instead of crashing (SIGBUS) while the memmap is written."""
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            try:
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise OSError(
                        f"No disk space for the {size / 1e9:.1f} GB image cache {path}; free "
                        "space or set --config.dataset.cache_dir to a larger disk."
                    ) from e
                # Other errors: the filesystem cannot preallocate; write without it.
    return images


def decode_images_to_cache(
    paths: list[str], root: str, image_size: int, cache_path: str, corrupt_policy: str
) -> tuple[np.ndarray, list[int]]:
    """Decodes `paths` (relative to `root`) with tf.data into a uint8 [N, S, S, 3] .npy file.

    Images stream into a temporary file that is renamed to `cache_path` only when complete,
    so an interrupted build is never used. Unreadable or corrupt files raise (corrupt_policy
    'fail', naming the first) or are left out ('skip'). Returns (read-only memmap of the
    decoded images, indices into `paths` of the files left out).
    """
    _check_corrupt_policy(corrupt_policy)
    if not paths:
        raise ValueError(f"No images to decode into {cache_path}; pass at least one path.")
    num = len(paths)
    temp = f"{cache_path}.tmp-{os.getpid()}"
    compact = f"{temp}-compact"
    skipped: list[int] = []
    kept = 0
    start = time.monotonic()
    try:
        images = _create_npy(temp, (num, image_size, image_size, 3))
        next_log = _DECODE_LOG_EVERY
        batches = _decoded_batches([os.path.join(root, p) for p in paths], image_size)
        for indices, batch in batches:
            done = kept + len(skipped)
            skipped.extend(int(i) for i in np.setdiff1d(np.arange(done, indices[-1] + 1), indices))
            if skipped and corrupt_policy == "fail":
                raise _corrupt_image_error(root, paths[skipped[0]], image_size)
            images[kept : kept + len(indices)] = batch
            kept += len(indices)
            if kept + len(skipped) >= next_log:
                next_log += _DECODE_LOG_EVERY
                rate = (kept + len(skipped)) / max(time.monotonic() - start, 1e-9)
                logging.info(
                    "Decoded %d/%d images into %s (%.0f images/s).",
                    kept + len(skipped),
                    num,
                    cache_path,
                    rate,
                )
        skipped.extend(range(kept + len(skipped), num))
        if skipped and corrupt_policy == "fail":
            raise _corrupt_image_error(root, paths[skipped[0]], image_size)
        if not kept:
            raise ValueError(
                f"None of the {num} images could be decoded (first: "
                f"{os.path.join(root, paths[0])}); check that they are images."
            )
        images.flush()
        del images
        if skipped:  # Rows were written in order without gaps: keep the first `kept`.
            source = np.load(temp, mmap_mode="r")
            target = _create_npy(compact, (kept, image_size, image_size, 3))
            chunk = _DECODE_BATCH * 16
            for begin in range(0, kept, chunk):
                end = min(begin + chunk, kept)
                target[begin:end] = source[begin:end]
            target.flush()
            del source, target
            os.replace(compact, cache_path)
        else:
            os.replace(temp, cache_path)
    finally:
        for leftover in (temp, compact):
            if os.path.exists(leftover):
                os.remove(leftover)
    logging.info(
        "Decoded %d images (%d unreadable) into %s in %.0f s.",
        kept,
        len(skipped),
        cache_path,
        time.monotonic() - start,
    )
    return np.load(cache_path, mmap_mode="r"), skipped


def _cache_key(entries: list[tuple[str, int, int]], image_size: int) -> str:
    """A hash of the sorted (relative path, size, mtime_ns) list and the image size."""
    digest = hashlib.sha256(f"comatch image cache {_CACHE_FORMAT} {image_size}\n".encode())
    for rel, size, mtime in entries:
        digest.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _read_cache(stem: str, key: str, image_size: int) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The cached images and their metadata if both are complete and match `key`, else None."""
    try:
        with open(stem + ".json", encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format") != _CACHE_FORMAT or meta.get("key") != key:
            return None
        images = np.load(stem + ".npy", mmap_mode="r")
        expected = (len(meta["paths"]), image_size, image_size, 3)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if images.dtype != np.uint8 or images.shape != expected:
        return None
    return images, meta


def _process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # It exists but belongs to another user.
        return True
    return True


def _remove_stale_cache_files(cache_dir: str, prefix: str, root: str) -> None:
    """Removes this root's older caches named `prefix`*, orphaned .npy files and temporary
    files of dead processes (caches of other roots sharing `cache_dir` are kept)."""
    for name in sorted(os.listdir(cache_dir)):
        path = os.path.join(cache_dir, name)
        if not name.startswith(prefix) or not os.path.exists(path):
            continue
        temp = _TEMP_PID.search(name)
        if temp:
            stale = [path] if not _process_alive(int(temp.group(1))) else []
        elif name.endswith(".json"):
            try:
                with open(path, encoding="utf-8") as f:
                    owner = json.load(f).get("root")
            except (OSError, ValueError, AttributeError):
                owner = root
            stale = [path, path[: -len(".json")] + ".npy"] if owner == root else []
        elif name.endswith(".npy"):
            stale = [] if os.path.exists(path[: -len(".npy")] + ".json") else [path]
        else:
            stale = []
        for old in stale:
            if os.path.exists(old):
                logging.info("Removing stale image cache file %s.", old)
                os.remove(old)


def _write_json_atomic(path: str, data: dict[str, Any]) -> None:
    temp = f"{path}.tmp-{os.getpid()}"
    with open(temp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(temp, path)


def _load_cached_part(
    root: str,
    part: str,
    entries: list[tuple[str, int, int]],
    *,
    image_size: int,
    cache_dir: str,
    corrupt_policy: str,
) -> tuple[np.ndarray, list[str], list[str]]:
    """Images of `entries` from the cache, rebuilt first if missing or stale.

    Returns (uint8 memmap [N, S, S, 3], the N paths kept, the paths skipped as unreadable).
    The .json file (file list, key) is written after the .npy, so it marks a complete cache.
    """
    key = _cache_key(entries, image_size)
    prefix = f"{part}_{image_size}px_"
    stem = os.path.join(cache_dir, prefix + key[:16])
    cached = _read_cache(stem, key, image_size)
    if cached is not None:
        images, meta = cached
        logging.info("Using the cached %s images %s.npy %s.", part, stem, images.shape)
        if meta["skipped"] and corrupt_policy == "fail":
            raise _corrupt_image_error(root, meta["skipped"][0], image_size)
        return images, meta["paths"], meta["skipped"]

    _remove_stale_cache_files(cache_dir, prefix, root)
    paths = [rel for rel, _, _ in entries]
    logging.info(
        "Decoding %d %s images to %dx%d into %s.npy (cached for later runs).",
        len(paths),
        part,
        image_size,
        image_size,
        stem,
    )
    images, skipped_indices = decode_images_to_cache(
        paths, root, image_size, stem + ".npy", corrupt_policy
    )
    skipped_set = set(skipped_indices)
    kept = [p for i, p in enumerate(paths) if i not in skipped_set]
    skipped = [paths[i] for i in skipped_indices]
    _write_json_atomic(
        stem + ".json",
        {
            "format": _CACHE_FORMAT,
            "key": key,
            "root": root,
            "image_size": image_size,
            "paths": kept,
            "skipped": skipped,
        },
    )
    return images, kept, skipped


def _stratified_holdout(
    labels: np.ndarray, num_classes: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices: round(fraction * n) of each class's n images go to val,
    at least 1 when n >= 2, and at least 1 always stays in train."""
    rng = np.random.default_rng(seed)
    held_out = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        n = len(members)
        count = min(max(math.floor(fraction * n + 0.5), 1 if n >= 2 else 0), max(n - 1, 0))
        held_out.append(rng.choice(members, size=count, replace=False))
    val = np.sort(np.concatenate(held_out)).astype(np.int64)
    return np.setdiff1d(np.arange(len(labels)), val), val


def load_image_folder(
    root: str,
    *,
    image_size: int,
    cache_dir: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    corrupt_policy: str = "fail",
) -> FolderDataset:
    """Loads `root`/labeled/<class>/**, `root`/unlabeled/** and optional `root`/val/<class>/**.

    Classes are the sorted folder names of labeled/. Files with other extensions than
    IMAGE_EXTENSIONS are ignored (and counted in the log). Each part is decoded once by tf.data
    to image_size x image_size RGB (see `_decode_resize`) into a uint8 .npy cache in `cache_dir`
    (default `root`/.comatch_cache), reused while its files' paths, sizes and mtimes are
    unchanged and read back as a memmap. Without val/, a stratified `val_fraction` of labeled/
    (seeded) is held out for validation; labeled and val are then in-memory copies. test/ is
    not loaded (list it with `list_image_files`).
    """
    _check_corrupt_policy(corrupt_policy)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(
            f"image_size must be a positive integer, got {image_size!r}; "
            "set --config.dataset.image_size."
        )
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(
            f"val_fraction must be in (0, 1), got {val_fraction}; "
            "set --config.dataset.val_fraction."
        )
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Image folder {root} does not exist; fix the dataset path or create it with "
            "labeled/<class_name>/ and unlabeled/ inside."
        )
    for part, fix in [
        ("labeled", "put the labeled images in {}/<class_name>/"),
        ("unlabeled", "semi-supervised training needs unlabeled images in {} (any nesting)"),
    ]:
        directory = os.path.join(root, part)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{directory} does not exist; {fix.format(directory)}.")

    labeled_entries, class_names = _scan_class_tree(root, "labeled")
    class_index = {name: i for i, name in enumerate(class_names)}
    has_val = os.path.isdir(os.path.join(root, "val"))
    if has_val:
        val_entries, val_classes = _scan_class_tree(root, "val")
        for name in val_classes:
            if name not in class_index:
                raise ValueError(
                    f"Class folder {os.path.join(root, 'val', name)} has no counterpart in "
                    f"{os.path.join(root, 'labeled')}; rename it to a labeled class or add "
                    f"{os.path.join(root, 'labeled', name)}/."
                )
    unlabeled_dir = os.path.join(root, "unlabeled")
    unlabeled_entries = [
        (os.path.join("unlabeled", rel), size, mtime)
        for rel, size, mtime in _scan_images(unlabeled_dir)[0]
    ]
    if not unlabeled_entries:
        raise ValueError(
            f"{unlabeled_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}); add the unlabeled "
            "images there (any nesting)."
        )

    cache_dir = _prepare_cache_dir(root, cache_dir)
    load = functools.partial(
        _load_cached_part,
        root,
        image_size=image_size,
        cache_dir=cache_dir,
        corrupt_policy=corrupt_policy,
    )

    def labels_of(paths: list[str]) -> np.ndarray:  # "labeled/<class>/..." -> class index
        return np.array([class_index[p.split(os.sep)[1]] for p in paths], dtype=np.int32)

    labeled_images, labeled_paths, skipped = load("labeled", labeled_entries)
    labeled_labels = labels_of(labeled_paths)
    for name, count in zip(class_names, np.bincount(labeled_labels, minlength=len(class_names))):
        if not count:
            raise ValueError(
                f"Every image in {os.path.join(root, 'labeled', name)} is unreadable; replace "
                "them or remove the folder."
            )
    if has_val:
        val_images, val_paths, val_skipped = load("val", val_entries)
        val_labels = labels_of(val_paths)
        skipped = skipped + val_skipped
        val_source = "val/"
    else:
        train, val = _stratified_holdout(labeled_labels, len(class_names), val_fraction, seed)
        if not len(val):
            raise ValueError(
                f"Cannot hold out validation images: every class in {root}/labeled has one "
                f"image; add images or a {root}/val/<class_name>/ folder."
            )
        val_images, val_labels = labeled_images[val], labeled_labels[val]
        val_paths = [labeled_paths[i] for i in val]
        labeled_images, labeled_labels = labeled_images[train], labeled_labels[train]
        labeled_paths = [labeled_paths[i] for i in train]
        val_source = f"held out {val_fraction * 100:g}% of labeled, seed {seed}"
        logging.info(
            "No %s/val: holding out %d of %d labeled images for validation (%g%% per class, "
            "stratified, seed %d).",
            root,
            len(val),
            len(train) + len(val),
            val_fraction * 100,
            seed,
        )
    unlabeled_images, unlabeled_paths, unlabeled_skipped = load("unlabeled", unlabeled_entries)
    skipped = skipped + unlabeled_skipped
    if skipped:
        logging.warning(
            "Skipped %d unreadable or corrupt images in %s (corrupt_policy='skip'), e.g. %s.",
            len(skipped),
            root,
            ", ".join(skipped[:5]),
        )
    dataset = FolderDataset(
        labeled_images=labeled_images,
        labeled_labels=labeled_labels,
        labeled_paths=tuple(labeled_paths),
        unlabeled_images=unlabeled_images,
        unlabeled_paths=tuple(unlabeled_paths),
        val_images=val_images,
        val_labels=val_labels.astype(np.int32),
        val_paths=tuple(val_paths),
        class_names=tuple(class_names),
        num_classes=len(class_names),
        source=f"image_folder:{root} (val: {val_source})",
        skipped_corrupt=tuple(skipped),
    )
    logging.info(
        "Loaded %s: %d labeled, %d unlabeled, %d val images of %dx%d, %d classes, "
        "%d unreadable skipped.",
        dataset.source,
        len(labeled_paths),
        len(unlabeled_paths),
        len(val_paths),
        image_size,
        image_size,
        len(class_names),
        len(skipped),
    )
    return dataset
