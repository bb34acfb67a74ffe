"""Fashion-MNIST / MNIST from their four IDX files (plain or gzipped), parsed with NumPy.

Debian's `dataset-fashion-mnist` package installs the real files in
/usr/share/datasets/fashion-mnist. No TensorFlow needed.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib

import numpy as np

from comatch_jax.data.dataset import ImageDataset
from comatch_jax.data.normalization import standard_statistics

IDX_DATASETS = ("fashion_mnist", "mnist")
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


def find_idx_files(idx_dir: str) -> tuple[dict[str, str], list[str]]:
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


def load_idx_dataset(idx_dir: str | os.PathLike, name: str = "fashion_mnist") -> ImageDataset:
    """Loads Fashion-MNIST (or MNIST) from the four IDX files in `idx_dir`."""
    if name not in IDX_DATASETS:
        raise ValueError(f"IDX loading supports {IDX_DATASETS}, not {name!r}; use source='tfds'.")
    idx_dir = os.fspath(idx_dir)
    if name == "mnist" and "fashion" in os.path.abspath(idx_dir).lower():
        raise ValueError(
            f"Refusing to load {idx_dir} as mnist (it looks like Fashion-MNIST); "
            "set --config.dataset.idx_dir to the MNIST IDX files."
        )
    files, missing = find_idx_files(idx_dir)
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
    mean, std = standard_statistics(name)
    return ImageDataset(
        train_images=arrays["train_images"][..., None],
        train_labels=arrays["train_labels"].astype(np.int32),
        test_images=arrays["test_images"][..., None],
        test_labels=arrays["test_labels"].astype(np.int32),
        num_classes=len(class_names),
        class_names=class_names,
        source=f"idx:{idx_dir}",
        name=name,
        mean=mean,
        std=std,
        file_digests={
            split: _files_digest([files[f"{split}_images"], files[f"{split}_labels"]])
            for split in ("train", "test")
        },
    )


def _files_digest(paths: list[str]) -> str:
    """sha256 hex over the (path, size, mtime_ns) of `paths`."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
