"""TensorFlow Datasets image-classification datasets, read whole into memory.

TensorFlow and TFDS are imported on first use (`dataset.import_tensorflow`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from comatch_jax.data.dataset import STANDARD_STATISTICS, ImageDataset, import_tensorflow

TFDS_DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "svhn_cropped", "stl10")
_CHUNK = 4096  # examples per chunk read (`_read_split`)


@functools.lru_cache(maxsize=None)
def import_tfds() -> Any:
    """TFDS, imported once and on first use, after TensorFlow (see `import_tensorflow`)."""
    import_tensorflow()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    return tfds


def tfds_is_prepared(name: str, data_dir: str | None) -> bool:
    """True if TFDS has `name` prepared in `data_dir` (never downloads). Looks for the
    version folder's dataset_info.json itself: `builder.is_prepared()` logs a warning for
    every dataset that is not, which is the normal case when IDX files are used."""
    builder = import_tfds().builder(name, data_dir=data_dir)
    return os.path.isfile(os.path.join(os.fspath(builder.data_path), "dataset_info.json"))


def _read_split(builder: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W, C], labels) of a whole TFDS split, read into NumPy arrays in
    chunks (batch_size=-1 would pad-batch a split of unknown size, e.g. under
    `tfds.testing.mock_data`, to sys.maxsize, which aborts TensorFlow)."""
    ds = builder.as_dataset(split=split).map(lambda ex: (ex["image"], ex["label"]))
    chunks = list(import_tfds().as_numpy(ds.batch(_CHUNK)))
    if not chunks:
        raise ValueError(f"TFDS split {builder.name}:{split} is empty; pick another split.")
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def load_tfds_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    train_split: str = "train",
    test_split: str = "test",
    extra_unlabeled_split: str | None = None,
    download: bool = True,
) -> ImageDataset:
    """A TFDS image-classification dataset, read whole into memory.

    `extra_unlabeled_split` (e.g. STL-10's "unlabelled") becomes `unlabeled_images`; a name of
    STANDARD_STATISTICS carries its mean/std. `download` prepares the data first (may
    download).
    """
    builder = import_tfds().builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    label_feature = builder.info.features["label"]
    train_images, train_labels = _read_split(builder, train_split)
    test_images, test_labels = _read_split(builder, test_split)
    extra = None
    if extra_unlabeled_split is not None:
        extra = _read_split(builder, extra_unlabeled_split)[0]
    mean, std = STANDARD_STATISTICS.get(name, ((), ()))
    return ImageDataset(
        train_images=train_images,
        train_labels=np.asarray(train_labels).astype(np.int32),
        test_images=test_images,
        test_labels=np.asarray(test_labels).astype(np.int32),
        num_classes=int(label_feature.num_classes),
        class_names=tuple(str(n) for n in label_feature.names),
        source=f"tfds:{name} (data_dir={builder.data_dir})",
        unlabeled_images=extra,
        name=name,
        mean=mean,
        std=std,
    )
