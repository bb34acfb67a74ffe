"""`load_dataset(config)`: the reader for `config.dataset.name`, and where fashion_mnist comes
from when no source is named (prepared TFDS data, else the Debian IDX files, else a download)."""

from __future__ import annotations

import ml_collections
from absl import logging

from comatch_jax.core import methods
from comatch_jax.data import digits, idx, image_folder, tfds_source
from comatch_jax.data.dataset import ImageDataset

KNOWN_DATASETS = tfds_source.TFDS_DATASETS + ("digits", "image_folder")


def draws_unlabeled_images(config: ml_collections.ConfigDict) -> bool:
    """Whether a run of `config` draws unlabeled images: mu > 0 or a method that trains on
    them (a method with unlabeled views)."""
    return config.mu > 0 or bool(methods.get_method(config.method).unlabeled_views)


def load_dataset(config: ml_collections.ConfigDict) -> ImageDataset:
    """The dataset of a run's config (its `dataset` section, and `seed`, `method`, `mu`).

    dataset.name: a TFDS name (tfds_source.TFDS_DATASETS), "digits" (scikit-learn) or
    "image_folder" (`root`, `image_size`, `cache_dir`, `val_fraction`, `corrupt_policy`; the
    run's seed picks the held-out validation images, and unlabeled/ may be missing when the
    run draws no unlabeled images). dataset.source, for TFDS names: "tfds", "idx"
    (fashion_mnist and mnist IDX files in `idx_dir`) or "auto" (fashion_mnist: prepared TFDS
    data, else IDX files, else a TFDS download; the other names: "tfds").

    Raises ValueError (one line) for an unknown name or options the source cannot honour
    (config_lib.validate_config checks `source`), FileNotFoundError when the data is not available offline and cannot be fetched.
    """
    options = config.dataset
    name, source, extra_split = options.name, options.source, options.extra_unlabeled_split
    if name not in KNOWN_DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}; set --config.dataset.name to one of "
            f"{', '.join(KNOWN_DATASETS)}."
        )
    if name == "image_folder":
        if not options.root:
            raise ValueError("dataset.name=image_folder needs --config.dataset.root=DIR")
        return image_folder.load_image_folder(
            options.root,
            image_size=options.image_size,
            cache_dir=options.cache_dir,
            val_fraction=options.val_fraction,
            seed=config.seed,
            corrupt_policy=options.corrupt_policy,
            require_unlabeled=draws_unlabeled_images(config),
        )
    if name == "digits":
        if source != "auto" or extra_split is not None:
            raise ValueError(
                "Dataset 'digits' comes from scikit-learn only; use --config.dataset.source=auto "
                "and no extra_unlabeled_split."
            )
        return digits.load_digits_dataset()
    splits = dict(
        train_split=options.train_split,
        test_split=options.test_split,
        extra_unlabeled_split=extra_split,
    )
    if source == "tfds" or (source == "auto" and name != "fashion_mnist"):
        return tfds_source.load_tfds_dataset(name, options.data_dir, **splits)
    if source == "auto":  # fashion_mnist
        try:
            prepared = tfds_source.tfds_is_prepared(name, options.data_dir)
        except ImportError:  # no TensorFlow Datasets here
            prepared = False
        if prepared:
            logging.info("fashion_mnist: reading the prepared TFDS data.")
            return tfds_source.load_tfds_dataset(name, options.data_dir, download=False, **splits)
        if idx.find_idx_files(options.idx_dir)[1]:  # IDX files missing
            logging.info("fashion_mnist: no prepared TFDS data, no IDX files; downloading.")
            try:
                return tfds_source.load_tfds_dataset(name, options.data_dir, **splits)
            except Exception as e:  # pylint: disable=broad-except
                raise FileNotFoundError(
                    f"fashion_mnist not available: not prepared in TFDS data_dir="
                    f"{options.data_dir}, no IDX files in {options.idx_dir}, and the TFDS "
                    f"download failed ({type(e).__name__}: {e}); fix: apt-get install "
                    "dataset-fashion-mnist, or set --config.dataset.idx_dir, or "
                    "--config.dataset.source=tfds with internet."
                ) from e
        logging.info("fashion_mnist: reading the IDX files in %s.", options.idx_dir)
    if tuple(splits.values()) != ("train", "test", None):
        raise ValueError(
            f"IDX source for {name} only has the full 'train' and 'test' splits; use "
            "source=tfds for split slicing or extra_unlabeled_split."
        )
    return idx.load_idx_dataset(options.idx_dir, name)
