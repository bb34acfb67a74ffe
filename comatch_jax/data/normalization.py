"""Per-channel normalisation that follows the data: standard values per named dataset, measured
values for image folders, and the user's values over both."""

from __future__ import annotations

from collections.abc import Sequence

from absl import logging

from comatch_jax.data.dataset import ImageDataset, image_statistics

# Per-channel (mean, std) of the training split in [0, 1] units (std: over all pixels of the
# split, not the mean of per-image stds), as published and used by the reference code:
#   fashion_mnist, mnist: the training images' statistics, as in PyTorch's examples/mnist
#     (mnist) and Fashion-MNIST benchmarks (0.2860 / 0.3530);
#   cifar10, cifar100: the values of the FixMatch and CoMatch reference code
#     (kekmodel/FixMatch-pytorch, salesforce/CoMatch dataset/cifar.py);
#   svhn_cropped: the train split's statistics used by common SVHN baselines (e.g.
#     PatrickZH/DeepCore datasets/svhn.py);
#   stl10: TorchSSL / USB (microsoft/Semi-supervised-learning), mean [112.4, 109.1, 98.6] / 255,
#     std [68.4, 66.6, 68.5] / 255, on the labeled train and unlabeled splits.
# scikit-learn's digits have no published values: `load_digits_dataset` measures them.
STANDARD_STATISTICS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "stl10": ((0.4409, 0.4279, 0.3868), (0.2683, 0.2610, 0.2687)),
}


def standard_statistics(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of a named dataset (see STANDARD_STATISTICS), or ((), ()) if it has none."""
    return STANDARD_STATISTICS.get(name, ((), ()))


def _channels(count: int) -> str:
    return f"{count} channel" if count == 1 else f"{count} channels"


def resolve_normalization(
    config_mean: Sequence[float], config_std: Sequence[float], dataset: ImageDataset
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel (mean, std) to normalise `dataset`'s images with, in [0, 1] units.

    A non-empty `config_mean` / `config_std` (dataset.mean / dataset.std) wins; an empty one
    means "from the data": the dataset's own values (standard ones for a named dataset,
    measured ones for an image folder), else measured here over its train and unlabeled
    images (streamed; logged). Returns two tuples of C floats, C = the images' channels.

    Raises ValueError (one line) when a given mean/std has a length other than C, or when a
    std entry is not positive.
    """
    channels = dataset.channels
    given = {
        "mean": tuple(float(v) for v in config_mean),
        "std": tuple(float(v) for v in config_std),
    }
    for field, values in given.items():
        if values and len(values) != channels:
            raise ValueError(
                f"dataset.{field} has {len(values)} values but the images have "
                f"{_channels(channels)}; set --config.dataset.{field} to {channels} values, or "
                "to () to use the data's own."
            )
    resolved = dict(given)
    if not (given["mean"] and given["std"]):
        mean, std = dataset.mean, dataset.std
        if not (mean and std):
            mean, std = image_statistics(dataset.train_images, dataset.unlabeled_images)
            logging.info(
                "Measured the per-channel mean %s and std %s of %s.",
                format_channels(mean),
                format_channels(std),
                dataset.source,
            )
        resolved["mean"] = given["mean"] or tuple(mean)
        resolved["std"] = given["std"] or tuple(std)
    if any(s <= 0 for s in resolved["std"]):
        raise ValueError(
            f"dataset.std {format_channels(resolved['std'])} has an entry <= 0 (a constant channel?); "
            "set --config.dataset.std to positive values."
        )
    logging.info(
        "Normalising images with mean %s and std %s (%s).",
        format_channels(resolved["mean"]),
        format_channels(resolved["std"]),
        "given" if given["mean"] and given["std"] else "from the data",
    )
    return resolved["mean"], resolved["std"]


def format_channels(values: Sequence[float]) -> str:
    """Per-channel values (a mean or std in [0, 1] units) as the logs print them, with 4
    decimals: (0.5090, 0.5062, 0.5012)."""
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"
