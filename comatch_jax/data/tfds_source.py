"""TensorFlow Datasets image-classification datasets, read whole into memory.

TensorFlow and TFDS are imported lazily (see `_tensorflow`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from comatch_jax.data._tensorflow import import_tfds
from comatch_jax.data.dataset import ImageDataset
from comatch_jax.data.normalization import standard_statistics

TFDS_DATASETS = (
    "fashion_mnist",
    "mnist",
    "cifar10",
    "cifar100",
    "svhn_cropped",
    "stl10",
)
# Chunk size when a TFDS split's size is unknown (see `_read_tfds_split`).
_TFDS_CHUNK = 4096


def _tfds_builder(name: str, data_dir: str | None) -> Any:
    return import_tfds().builder(name, data_dir=data_dir)


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
    tfds = import_tfds()
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
) -> ImageDataset:
    """Loads a TFDS image-classification dataset fully into memory.

    `extra_unlabeled_split` (e.g. STL-10's "unlabelled") becomes `unlabeled_images`; a known
    name carries its standard mean/std (see normalization.STANDARD_STATISTICS). `download`
    prepares the data first (may download).
    """
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
    mean, std = standard_statistics(name)
    return ImageDataset(
        train_images=_to_images(train["image"], f"{what}:{train_split}"),
        train_labels=np.asarray(train["label"]).astype(np.int32),
        test_images=_to_images(test["image"], f"{what}:{test_split}"),
        test_labels=np.asarray(test["label"]).astype(np.int32),
        num_classes=int(label_feature.num_classes),
        class_names=tuple(str(n) for n in label_feature.names),
        source=f"tfds:{name} (data_dir={builder.data_dir})",
        unlabeled_images=extra,
        name=name,
        mean=mean,
        std=std,
    )
