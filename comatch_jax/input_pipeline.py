"""Loads image-classification datasets into memory and makes labeled splits.

Sources:
  * "idx":  Fashion-MNIST / MNIST IDX files (plain or gzipped), parsed with NumPy.
            Debian's `dataset-fashion-mnist` package installs the real files in
            /usr/share/datasets/fashion-mnist.
  * "tfds": TensorFlow Datasets (`tfds.builder` + `download_and_prepare`).
  * "auto": for fashion_mnist, already-prepared TFDS data, else IDX files, else a
            TFDS download; for the other TFDS names, "tfds".
  * "digits" is scikit-learn's bundled 8x8 digits (no download needed).

TensorFlow and TFDS are imported lazily, so the IDX and split code runs without them.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import os
import struct
import zlib
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
            f"IDX file {path} is truncated inside its header; "
            "re-download or reinstall it."
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
        f"{name} IDX files not found in {idx_dir} "
        f"(missing {', '.join(missing)}); fix: {fix}."
    )


def load_idx_dataset(
    idx_dir: str | os.PathLike, name: str = "fashion_mnist"
) -> InMemoryDataset:
    """Loads Fashion-MNIST (or MNIST) from the four IDX files in `idx_dir`."""
    if name not in IDX_DATASETS:
        raise ValueError(
            f"IDX loading supports {IDX_DATASETS}, not {name!r}; use source='tfds'."
        )
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
    class_names = (
        FASHION_MNIST_CLASS_NAMES if name == "fashion_mnist" else DIGIT_CLASS_NAMES
    )
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
def _import_tfds() -> Any:
    """Imports TFDS lazily (once), hiding GPUs from TF (JAX owns the accelerator)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised its devices; cannot change now.
        logging.warning("Could not hide GPUs from TensorFlow (already initialised).")
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
        raise ValueError(
            f"TFDS split {builder.name}:{split} is empty; pick another split."
        )
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
        raise ImportError(
            "Dataset 'digits' needs scikit-learn; pip install scikit-learn."
        ) from e
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
        logging.info(
            "fashion_mnist: no prepared TFDS data; using IDX files in %s.", idx_dir
        )
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
        raise ValueError(
            f"labels must be 1-D, got shape {labels.shape}; pass train labels."
        )
    n = labels.shape[0]
    if num_labels <= 0:
        raise ValueError(f"num_labels must be positive, got {num_labels}; set it > 0.")
    if num_labels > n:
        raise ValueError(
            f"num_labels={num_labels} exceeds the {n} training images; "
            "lower num_labels."
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
