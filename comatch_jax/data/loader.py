"""`load_dataset`: the reader for `config.dataset.name`, and fashion_mnist's offline fallback."""

from __future__ import annotations

from typing import Any

import ml_collections
from absl import logging

from comatch_jax.data import digits, idx, image_folder, tfds_source
from comatch_jax.data.dataset import ImageDataset

IMAGE_FOLDER = "image_folder"
KNOWN_DATASETS = tfds_source.TFDS_DATASETS + ("digits", IMAGE_FOLDER)
SOURCES = ("auto", "tfds", "idx")


def load_dataset(config: ml_collections.ConfigDict, *, seed: int = 0) -> ImageDataset:
    """Loads the dataset described by the `dataset` sub-config (`config.dataset`).

    name: a TFDS name (TFDS_DATASETS), "digits" (scikit-learn) or "image_folder" (`root`,
    `image_size`, `cache_dir`, `val_fraction`, `corrupt_policy`; `seed` picks the held-out
    validation images, pass the run's seed). source (TFDS names): "tfds", "idx" (fashion_mnist
    and mnist IDX files in `idx_dir`) or "auto": for fashion_mnist prepared TFDS data, else
    IDX files, else a TFDS download; for the other names "tfds".

    Raises ValueError (one line) for an unknown name or source or options the source cannot
    honour, FileNotFoundError when the data is not available offline and cannot be fetched.
    """
    name = config.name
    source = config.get("source", "auto")
    if name not in KNOWN_DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}; set --config.dataset.name to one of "
            f"{', '.join(KNOWN_DATASETS)}."
        )
    if name == IMAGE_FOLDER:
        if not config.get("root"):
            raise ValueError("dataset.name=image_folder needs --config.dataset.root=DIR")
        return image_folder.load_image_folder(
            config.root,
            image_size=config.image_size,
            cache_dir=config.get("cache_dir"),
            val_fraction=config.val_fraction,
            seed=seed,
            corrupt_policy=config.corrupt_policy,
        )
    data_dir = config.get("data_dir", None)
    idx_dir = config.get("idx_dir", None) or idx.DEFAULT_IDX_DIR
    train_split = config.get("train_split", "train")
    test_split = config.get("test_split", "test")
    extra_split = config.get("extra_unlabeled_split", None)

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
        dataset = digits.load_digits_dataset()
    elif source == "tfds" or (source == "auto" and name != "fashion_mnist"):
        dataset = tfds_source.load_tfds_dataset(name, data_dir, **tfds_kwargs)
    elif source == "idx":
        _check_idx_splits(name, train_split, test_split, extra_split)
        dataset = idx.load_idx_dataset(idx_dir, name)
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
) -> ImageDataset:
    """Prepared TFDS data, else IDX files, else a TFDS download."""
    name = "fashion_mnist"
    try:
        prepared = tfds_source.tfds_is_prepared(name, data_dir)
    except ImportError:
        prepared = False
    if prepared:
        logging.info("fashion_mnist: using prepared TFDS data (data_dir=%s).", data_dir)
        return tfds_source.load_tfds_dataset(name, data_dir, download=False, **tfds_kwargs)

    _, missing = idx.find_idx_files(idx_dir)
    if not missing:
        _check_idx_splits(
            name,
            tfds_kwargs["train_split"],
            tfds_kwargs["test_split"],
            tfds_kwargs["extra_unlabeled_split"],
        )
        logging.info("fashion_mnist: no prepared TFDS data; using IDX files in %s.", idx_dir)
        return idx.load_idx_dataset(idx_dir, name)

    logging.info("fashion_mnist: no TFDS data and no IDX files; trying TFDS download.")
    try:
        return tfds_source.load_tfds_dataset(name, data_dir, **tfds_kwargs)
    except Exception as e:  # pylint: disable=broad-except
        raise FileNotFoundError(
            f"fashion_mnist not available: not prepared in TFDS data_dir={data_dir}, "
            f"no IDX files in {idx_dir}, and the TFDS download failed "
            f"({type(e).__name__}: {e}); fix: apt-get install dataset-fashion-mnist, "
            "or set --config.dataset.idx_dir, or --config.dataset.source=tfds with "
            "internet."
        ) from e
