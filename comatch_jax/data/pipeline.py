"""The data a run trains on: the labeled/unlabeled/test arrays, and the batches cut from them.

`prepare_data(config)` reads the configured dataset (TFDS, IDX or an image folder, through
comatch_jax.data, which imports TensorFlow lazily) and splits it into a
SemiSupervisedData of uint8 images and int32 labels, with the resolved normalisation and a
fingerprint of the data. Batches are cut by comatch_jax.data.sampling (and, on the host,
comatch_jax.data.prefetch).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from comatch_jax.commands import active_learning
from comatch_jax import multihost


@dataclasses.dataclass(frozen=True)
class SemiSupervisedData:
    """The arrays one run trains and evaluates on (uint8 images, int32 labels)."""

    labeled_images: np.ndarray
    labels: np.ndarray
    unlabeled_images: np.ndarray
    unlabeled_labels: np.ndarray  # ground truth, only to monitor pseudo-label accuracy
    labeled_ids: np.ndarray  # int32 train-split index of each labeled image
    unlabeled_ids: np.ndarray  # int32 train-split index, -1 for extra_unlabeled_split images
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    source: str
    # Image-folder runs: the file of each unlabeled row (relative to dataset.root); then
    # unlabeled_ids are rows of it and labeled_ids are -1 for images from labeled/.
    unlabeled_paths: tuple[str, ...] = ()
    # Per-channel normalisation in [0, 1] units: the config's dataset.mean/std where given,
    # else the data's own (datasets.resolve_normalization).
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    # datasets.data_fingerprint of the source, kept in the run so that a resumed run notices
    # changed data.
    fingerprint: dict[str, Any] | None = None


# Share of the free device memory (host RAM on a CPU) the whole dataset may take on the
# device: the rest is left for the model, its activations and the optimizer state.
DEVICE_DATA_FRACTION = 0.5


def free_device_memory(device: jax.Device) -> tuple[int, str]:
    """(free bytes, what was measured) of `device`: its allocator's limit minus what is in
    use (GPU/TPU memory_stats), or the host's available RAM for a CPU device."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), device.device_kind
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "host RAM"
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "host RAM"


def choose_data_placement(
    data_bytes: int, free_bytes: int, *, fraction: float = DEVICE_DATA_FRACTION
) -> bool:
    """True when `data_bytes` of images fit in `fraction` of `free_bytes` of a device (each
    device holds the whole dataset), e.g. 14 GB of 96 px images on an 80 GB GPU (yes) or a
    16 GB one (no)."""
    return data_bytes <= fraction * free_bytes


def data_on_device(config: ml_collections.ConfigDict, data: SemiSupervisedData) -> bool:
    """Whether the run keeps its images on the device: config.data_on_device when set, else
    measured (choose_data_placement against the first device's free memory). Logs one line
    saying what was chosen and why."""
    nbytes = sum(
        int(np.prod(a.shape)) * a.dtype.itemsize
        for a in (data.labeled_images, data.unlabeled_images)
    )
    size = f"{nbytes / 2**30:.2f} GiB of training images"
    if config.data_on_device is not None:
        on_device = bool(config.data_on_device)
        reason = f"data_on_device={on_device} set in the config ({size})"
    else:
        free, what = free_device_memory(jax.local_devices()[0])
        on_device = choose_data_placement(nbytes, free)
        verb = "fit" if on_device else "do not fit"
        reason = (
            f"{size} {verb} in {DEVICE_DATA_FRACTION:.0%} of the {free / 2**30:.1f} GiB free "
            f"({what}); --config.data_on_device=True/False overrides"
        )
    where = (
        "on the device, batches drawn inside the step"
        if on_device
        else ("on the host, batches gathered and prefetched there")
    )
    logging.info("Images %s: %s.", where, reason)
    return on_device


def with_normalization(
    config: ml_collections.ConfigDict, data: SemiSupervisedData
) -> ml_collections.ConfigDict:
    """A copy of `config` whose dataset.mean/std are the resolved per-channel values of
    `data`, so that the step, the saved config and every command normalise alike."""
    resolved = ml_collections.ConfigDict(config.to_dict())
    resolved.dataset.mean, resolved.dataset.std = tuple(data.mean), tuple(data.std)
    return resolved


def _check_unlabeled_pool(config: ml_collections.ConfigDict, count: int) -> None:
    from comatch_jax.core import methods

    if count == 0 and methods.get_method(config.method).needs_unlabeled_data:
        raise ValueError(
            f"method={config.method} trains on unlabeled images, but none are left (every "
            "image is labeled); use --config=configs/supervised.py, or add unlabeled images."
        )
    if count == 0 and config.mu > 0:  # e.g. supervised with a mu left over from another run
        raise ValueError(
            f"mu={config.mu} asks for unlabeled images, but none are left (every image is "
            "labeled); set --config.mu=0."
        )


def _check_num_classes(dataset) -> None:
    if dataset.num_classes < 2:
        where = (
            "class folders under labeled/"
            if dataset.name == "image_folder"
            else "classes in the dataset"
        )
        raise ValueError(
            f"{dataset.source} has {dataset.num_classes} class "
            f"({', '.join(dataset.class_names) or 'none'}); a classifier needs at least 2 {where}."
        )


def _check_image_size(config: ml_collections.ConfigDict, dataset) -> None:
    """small_cnn halves the image len(widths) - 1 times (VALID 2x2 pooling): a smaller image
    leaves no pixels and every output is NaN (the strided convolutions of wide_resnet and
    resnet pad, so any size works)."""
    if config.model.name != "small_cnn":
        return
    height, width = dataset.train_images.shape[1:3]
    needed = 2 ** (len(config.model.widths) - 1)
    if min(height, width) < needed:
        advice = (
            f"set --config.dataset.image_size={needed} or more"
            if dataset.name == "image_folder"
            else f"use at most {int(np.log2(min(height, width))) + 1} model.widths"
        )
        raise ValueError(
            f"model small_cnn with {len(config.model.widths)} widths needs images of at least "
            f"{needed}x{needed} pixels, the data has {height}x{width}; {advice}."
        )


def prepare_data(config: ml_collections.ConfigDict, dataset: Any = None) -> SemiSupervisedData:
    """Loads the dataset (unless given) and splits it into labeled and unlabeled parts.

    The rows of `config.dataset.extra_labels_csv` (id,label), if set, join the labeled set
    with their given labels and leave the unlabeled set (image folders: path,label rows, see
    _folder_data).
    """
    from comatch_jax import data as datasets  # imports TensorFlow lazily, only to read files

    if dataset is None:
        if config.dataset.name == "image_folder":
            dataset = load_image_folder_dataset(config)
        else:
            dataset = datasets.load_dataset(config.dataset)
    _check_num_classes(dataset)
    _check_image_size(config, dataset)
    mean, std = datasets.resolve_normalization(config.dataset.mean, config.dataset.std, dataset)
    extras = {"mean": mean, "std": std, "fingerprint": datasets.data_fingerprint(dataset)}
    if dataset.name == "image_folder":
        return dataclasses.replace(_folder_data(dataset, config), **extras)
    labeled, unlabeled = datasets.split_labeled_unlabeled(
        dataset.train_labels,
        num_labels=config.num_labels,
        num_classes=dataset.num_classes,
        seed=config.seed,
        include_labeled_in_unlabeled=config.dataset.include_labeled_in_unlabeled,
    )
    labels = dataset.train_labels[labeled]
    extra_labels_csv = config.dataset.get("extra_labels_csv")
    if extra_labels_csv:
        extra_ids, extra_labels = active_learning.read_labels_csv(
            extra_labels_csv,
            num_images=len(dataset.train_labels),
            num_classes=dataset.num_classes,
            already_labeled=labeled,
        )
        order = np.argsort(np.concatenate([labeled, extra_ids]), kind="stable")
        labeled = np.concatenate([labeled, extra_ids])[order]
        labels = np.concatenate([labels, extra_labels])[order]
        if not config.dataset.include_labeled_in_unlabeled:
            unlabeled = np.setdiff1d(unlabeled, extra_ids).astype(np.int32)
    unlabeled_images = dataset.train_images[unlabeled]
    unlabeled_labels = dataset.train_labels[unlabeled]
    unlabeled_ids = unlabeled
    extra = dataset.unlabeled_images
    if extra is not None and len(extra):
        unlabeled_images = np.concatenate([unlabeled_images, extra])
        # Extra unlabeled images have no ground truth: -1 never matches a pseudo-label.
        unlabeled_labels = np.concatenate([unlabeled_labels, np.full(len(extra), -1, np.int32)])
        unlabeled_ids = np.concatenate([unlabeled_ids, np.full(len(extra), -1, np.int32)])
    _check_unlabeled_pool(config, len(unlabeled_images))
    logging.info(
        "Data from %s: %d labeled, %d unlabeled, %d test images of shape %s, %d classes",
        dataset.source,
        len(labeled),
        len(unlabeled_images),
        len(dataset.test_labels),
        dataset.train_images.shape[1:],
        dataset.num_classes,
    )
    return SemiSupervisedData(
        labeled_images=dataset.train_images[labeled],
        labels=labels.astype(np.int32),
        unlabeled_images=unlabeled_images,
        unlabeled_labels=unlabeled_labels.astype(np.int32),
        labeled_ids=labeled.astype(np.int32),
        unlabeled_ids=unlabeled_ids.astype(np.int32),
        test_images=dataset.test_images,
        test_labels=dataset.test_labels.astype(np.int32),
        num_classes=dataset.num_classes,
        class_names=tuple(dataset.class_names),
        source=dataset.source,
        **extras,
    )


def prepare_data_in_turn(config: ml_collections.ConfigDict, dataset: Any) -> SemiSupervisedData:
    """prepare_data; in a multi-host run process 0 first, so that it alone builds an image
    folder's decode cache (on a shared disk the others then read it)."""
    if jax.process_count() == 1 or dataset is not None or config.dataset.name != "image_folder":
        return prepare_data(config, dataset)
    data = prepare_data(config, dataset) if multihost.is_primary() else None
    multihost.barrier("image cache built")
    return data if data is not None else prepare_data(config, dataset)


def draws_unlabeled_images(config: ml_collections.ConfigDict) -> bool:
    """Whether a run of `config` draws unlabeled images: mu > 0 or a method that trains on
    them (methods.Method.needs_unlabeled_data). False for supervised-only runs (mu = 0)."""
    from comatch_jax.core import methods

    return config.mu > 0 or methods.get_method(config.method).needs_unlabeled_data


def load_image_folder_dataset(config: ml_collections.ConfigDict):
    """The image-folder source: labeled/<class>/, unlabeled/** (optional for a run that draws
    no unlabeled images), optional val/<class>/."""
    from comatch_jax import data as datasets

    options = config.dataset
    if not options.root:
        raise ValueError("dataset.name=image_folder needs --config.dataset.root=DIR")
    # A run that draws no unlabeled images (supervised-only, mu = 0) does not need unlabeled/;
    # where it exists it is still loaded (its images count in the folder's mean/std).
    return datasets.load_image_folder(
        options.root,
        image_size=options.image_size,
        cache_dir=options.cache_dir,
        val_fraction=options.val_fraction,
        seed=config.seed,
        corrupt_policy=options.corrupt_policy,
        require_unlabeled=draws_unlabeled_images(config),
    )


def _folder_data(dataset, config: ml_collections.ConfigDict) -> SemiSupervisedData:
    """All of labeled/ is labeled (num_labels does not apply); val/ (or the held-out part)
    is the evaluation set. The unlabeled images stay a memory-mapped uint8 cache.

    `config.dataset.extra_labels_csv` (path,label: the answers to a requests CSV) adds
    unlabeled images to the labeled set; they also stay in the unlabeled pool (the cache is
    not rewritten), as with dataset.include_labeled_in_unlabeled.
    """

    unlabeled_count = len(dataset.unlabeled_paths)
    labeled_images = np.asarray(dataset.train_images)
    labels = dataset.train_labels.astype(np.int32)
    labeled_ids = np.full(len(labels), -1, np.int32)  # labeled/ images have no unlabeled row
    extra_labels_csv = config.dataset.get("extra_labels_csv")
    if extra_labels_csv:
        rows, extra_labels = active_learning.read_folder_labels_csv(
            extra_labels_csv,
            root=config.dataset.root,
            unlabeled_paths=dataset.unlabeled_paths,
            class_names=dataset.class_names,
        )
        labeled_images = np.concatenate([labeled_images, dataset.unlabeled_images[np.sort(rows)]])
        labels = np.concatenate([labels, extra_labels[np.argsort(rows)]])
        labeled_ids = np.concatenate([labeled_ids, np.sort(rows)])
        logging.info("Added %d labeled images from %s.", len(rows), extra_labels_csv)
    _check_unlabeled_pool(config, unlabeled_count)
    logging.info(
        "Data from %s: %d labeled, %d unlabeled, %d evaluation images, %d classes",
        dataset.source,
        len(labels),
        unlabeled_count,
        len(dataset.test_labels),
        dataset.num_classes,
    )
    return SemiSupervisedData(
        labeled_images=labeled_images,
        labels=labels,
        unlabeled_images=dataset.unlabeled_images,
        unlabeled_labels=np.full(unlabeled_count, -1, np.int32),  # no ground truth
        labeled_ids=labeled_ids,
        unlabeled_ids=np.arange(unlabeled_count, dtype=np.int32),  # rows of unlabeled_paths
        test_images=np.asarray(dataset.test_images),
        test_labels=dataset.test_labels.astype(np.int32),
        num_classes=dataset.num_classes,
        class_names=tuple(dataset.class_names),
        source=dataset.source,
        unlabeled_paths=tuple(dataset.unlabeled_paths),
    )
