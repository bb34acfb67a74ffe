"""Fashion-MNIST / MNIST from their four IDX files (plain or gzipped), parsed with NumPy.

Debian's `dataset-fashion-mnist` package installs the real files in
/usr/share/datasets/fashion-mnist. No TensorFlow needed.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np

from comatch_jax.data.dataset import STANDARD_STATISTICS, ImageDataset, entries_digest

IDX_DATASETS = ("fashion_mnist", "mnist")
IDX_FILENAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASS_NAMES = tuple(
    "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot".split(",")
)
DIGIT_CLASS_NAMES = tuple(str(i) for i in range(10))
# IDX type byte -> big-endian NumPy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FIX = "re-download or reinstall it"


def read_idx_file(path: str | os.PathLike) -> np.ndarray:
    """One IDX file (plain or .gz) as a native-endian NumPy array. Raises FileNotFoundError,
    or ValueError (one line naming the file) for a corrupt or truncated one."""
    path = os.fspath(path)
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"Cannot read IDX file {path} ({e}): it is corrupt; {_FIX}.") from e
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(
            f"IDX file {path} has bad magic number 0x{raw[:4].hex()} (expected 0x0000TTDD, e.g. "
            f"0x00000803 for images): it is truncated, corrupt or not IDX; {_FIX}."
        )
    dtype, header = np.dtype(_IDX_DTYPES[raw[2]]), 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"IDX file {path} is truncated inside its header; {_FIX}.")
    dims = struct.unpack(f">{raw[3]}I", raw[4:header])
    expected, found = math.prod(dims) * dtype.itemsize, len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "corrupt (trailing bytes)"
        raise ValueError(
            f"IDX file {path} is {what}: header dims {dims} need {expected} data bytes, found "
            f"{found}; {_FIX}."
        )
    array = np.frombuffer(raw, dtype=dtype, count=math.prod(dims), offset=header)
    return array.reshape(dims).astype(dtype.newbyteorder("="))


def find_idx_files(idx_dir: str) -> tuple[dict[str, str], list[str]]:
    """({key: path} of the IDX files found in `idx_dir`, [names of the missing ones])."""
    found, missing = {}, []
    for key, base in IDX_FILENAMES.items():
        paths = [os.path.join(idx_dir, base + ext) for ext in ("", ".gz")]
        present = [p for p in paths if os.path.isfile(p)]
        if present:
            found[key] = present[0]
        else:
            missing.append(base + "[.gz]")
    return found, missing


def load_idx_dataset(idx_dir: str | os.PathLike, name: str = "fashion_mnist") -> ImageDataset:
    """Fashion-MNIST (or MNIST) from the four IDX files in `idx_dir`.

    Raises FileNotFoundError naming the missing files and how to get them, ValueError (one
    line) for files that do not hold uint8 images and labels 0..9 of matching counts, or for
    mnist asked from a folder that looks like Fashion-MNIST's.
    """
    if name not in IDX_DATASETS:
        raise ValueError(
            f"IDX files hold {', '.join(IDX_DATASETS)}, not {name!r}; use source=tfds."
        )
    idx_dir = os.fspath(idx_dir)
    if name == "mnist" and "fashion" in os.path.abspath(idx_dir).lower():
        raise ValueError(
            f"Refusing to load {idx_dir} as mnist (it looks like Fashion-MNIST); set "
            "--config.dataset.idx_dir to the MNIST IDX files."
        )
    files, missing = find_idx_files(idx_dir)
    if missing:
        fix = (
            "apt-get install dataset-fashion-mnist, or set --config.dataset.idx_dir"
            if name == "fashion_mnist"
            else f"set --config.dataset.idx_dir to a directory with the {name} IDX files"
        )
        raise FileNotFoundError(
            f"{name} IDX files not found in {idx_dir} (missing {', '.join(missing)}); fix: "
            f"{fix}, or --config.dataset.source=tfds with internet."
        )
    arrays = {key: read_idx_file(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        where = f"IDX files {files[f'{split}_images']} and {files[f'{split}_labels']}"
        if images.dtype != np.uint8 or images.ndim != 3 or labels.dtype != np.uint8:
            raise ValueError(
                f"{where} hold {images.dtype} {images.shape} and {labels.dtype} "
                f"{labels.shape}, not uint8 [N, H, W] images and [N] labels; check the files."
            )
        if labels.shape != images.shape[:1] or (labels.size and labels.max() >= 10):
            raise ValueError(
                f"{where} disagree ({len(images)} images, {len(labels)} labels, largest label "
                f"{labels.max(initial=0)} of 0..9); {_FIX}."
            )
    stats = {key: os.stat(path) for key, path in files.items()}
    entry = lambda key: (files[key], stats[key].st_size, stats[key].st_mtime_ns)
    class_names = FASHION_MNIST_CLASS_NAMES if name == "fashion_mnist" else DIGIT_CLASS_NAMES
    mean, std = STANDARD_STATISTICS[name]
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
            split: entries_digest([entry(f"{split}_images"), entry(f"{split}_labels")])
            for split in ("train", "test")
        },
    )
