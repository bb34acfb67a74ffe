"""An image folder as a dataset: `root`/labeled/<class>/**, `root`/unlabeled/** and optional
`root`/val/<class>/**, decoded once into the cache of `folder_cache`."""

from __future__ import annotations

import collections
import math
import os

import numpy as np
from absl import logging

from comatch_jax.data import folder_cache
from comatch_jax.data.answers import UNKNOWN, class_key
from comatch_jax.data.dataset import (
    ImageDataset,
    entries_digest,
    format_channels,
    statistics_from_sums,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
# Fewer evaluation images per class than this: the accuracy is noisy (one image of a class
# is 10 % of that class's accuracy), and the log says so.
EVAL_IMAGES_PER_CLASS = 10

Entry = folder_cache.Entry


def _scan_images(directory: str) -> tuple[list[Entry], int]:
    """Sorted (path relative to `directory`, size, mtime_ns) of the images below it, and the
    number of non-image files ignored (logged). Hidden files and folders are skipped; a folder
    reached twice through symbolic links is listed once."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Image folder {directory} does not exist; create it or fix the path."
        )
    found, ignored, pending, seen = [], 0, [""], set()
    while pending:
        rel_dir = pending.pop()
        abs_dir = os.path.join(directory, rel_dir)
        try:
            stat = os.stat(abs_dir)
            if (stat.st_dev, stat.st_ino) in seen:
                continue
            seen.add((stat.st_dev, stat.st_ino))
            with os.scandir(abs_dir) as it:
                entries = [e for e in it if not e.name.startswith(".")]
        except OSError as e:
            raise type(e)(f"Cannot list {abs_dir} ({e.strerror}); fix its permissions.") from e
        for entry in entries:
            rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
            if entry.is_dir():
                pending.append(rel)
            elif os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                ignored += 1
            else:
                try:
                    stat = entry.stat()
                    found.append((rel, stat.st_size, stat.st_mtime_ns))
                except OSError:  # a broken symlink: decoding reports it as unreadable
                    found.append((rel, -1, 0))
    if ignored:
        kept = ", ".join(IMAGE_EXTENSIONS)
        logging.info(f"Ignored {ignored} non-image files in {directory} (not {kept}).")
    return sorted(found), ignored


def list_image_files(directory: str) -> tuple[list[str], int]:
    """Sorted paths (relative to `directory`, recursive) of its images, and the number of
    non-image files ignored; hidden files and folders (".name") are skipped."""
    entries, ignored = _scan_images(os.fspath(directory))
    return [rel for rel, _, _ in entries], ignored


def scan_unlabeled(root: str) -> list[Entry]:
    """Sorted (path relative to `root`, size, mtime_ns) of the images in `root`/unlabeled/**."""
    entries = _scan_images(os.path.join(root, "unlabeled"))[0]
    return [(os.path.join("unlabeled", rel), size, mtime) for rel, size, mtime in entries]


def _scan_class_tree(root: str, part: str) -> tuple[list[Entry], list[str]]:
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
    counts = collections.Counter(rel.split(os.sep, 1)[0] for rel, _, _ in entries)
    keys = [class_key(name) for name in classes]
    for name, key in zip(classes, keys):
        folder = os.path.join(directory, name)
        if not counts[name]:
            raise ValueError(
                f"Class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)}); add "
                "images or remove the folder."
            )
        if key == UNKNOWN:
            raise ValueError(
                f"Class folder {folder} is named {UNKNOWN}, which answers files keep for 'none "
                "of these classes'; rename the folder."
            )
        if keys.count(key) > 1:
            raise ValueError(
                f"Class folder {folder} appears twice in {directory}, its name stored composed "
                "(NFC) and decomposed (NFD); merge the two folders into one."
            )
    return [(os.path.join(part, rel), size, mtime) for rel, size, mtime in entries], classes


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


def _check_layout(root: str, require_unlabeled: bool) -> None:
    """FileNotFoundError / ValueError (one line) for a root without labeled/ (or unlabeled/
    when the run needs it), saying so when the root is labeled/, unlabeled/ or val/ itself."""
    name, parent = os.path.basename(root), os.path.dirname(root)
    if not os.path.isdir(os.path.join(root, "labeled")) and name in ("labeled", "unlabeled", "val"):
        raise ValueError(
            f"{root} looks like the {name}/ folder itself; pass its parent ({parent}) as "
            "--config.dataset.root."
        )
    if not os.path.isdir(root):
        unlabeled = "and unlabeled/ inside"
        if not require_unlabeled:
            unlabeled = "inside (unlabeled/ is optional for this run)"
        raise FileNotFoundError(
            f"Image folder {root} does not exist; fix the dataset path or create it with "
            f"labeled/<class_name>/ {unlabeled}."
        )
    for part in ("labeled", "unlabeled") if require_unlabeled else ("labeled",):
        directory = os.path.join(root, part)
        if not os.path.isdir(directory):
            fix = (
                f"put the labeled images in {directory}/<class_name>/ (the root is the folder "
                "that holds labeled/)"
                if part == "labeled"
                else f"semi-supervised training needs unlabeled images in {directory} (any "
                "nesting; configs/supervised.py trains without them)"
            )
            raise FileNotFoundError(f"{directory} does not exist; {fix}.")


def load_image_folder(
    root: str,
    *,
    image_size: int,
    cache_dir: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    corrupt_policy: str = "fail",
    require_unlabeled: bool = True,
) -> ImageDataset:
    """Loads `root`/labeled/<class>/**, `root`/unlabeled/** and optional `root`/val/<class>/**.

    Classes are the sorted folder names of labeled/; val/'s class folders match them by
    their Unicode NFC form. Files with other extensions than IMAGE_EXTENSIONS are ignored
    (counted in the log). Each part is decoded by tf.data to image_size x image_size RGB
    (`folder_cache`) into a uint8 cache in `cache_dir` (default `root`/.comatch_cache), read
    back as a memmap; a part is decoded again only when its files change. Without val/,
    a stratified `val_fraction` of labeled/ (seeded) is held out for validation. test/ is not
    read. require_unlabeled=False (a run that draws no unlabeled images) accepts a missing or
    empty unlabeled/ (then [0, S, S, 3]). The options' ranges are checked with the config's
    (config_lib.validate_config).

    Returns an ImageDataset whose mean/std are measured exactly over the train and unlabeled
    images (from the cache's per-image pixel sums) and whose file_digests hash each part's
    (path, size, mtime). The log names the evaluation set and warns when it is small.
    Raises FileNotFoundError / ValueError / PermissionError (one line, naming the path) for a
    folder without this layout (fewer than 2 class folders is found before decoding), a class
    folder named `answers.UNKNOWN`, an unreadable image (corrupt_policy 'fail') or an
    unwritable cache directory.
    """
    root = os.path.abspath(os.fspath(root))
    _check_layout(root, require_unlabeled)
    labeled_entries, class_names = _scan_class_tree(root, "labeled")
    if len(class_names) < 2:  # before decoding anything
        raise ValueError(
            f"{os.path.join(root, 'labeled')} has 1 class ({class_names[0]}); a classifier needs "
            "at least 2 class folders under labeled/."
        )
    class_index = {class_key(name): i for i, name in enumerate(class_names)}
    has_val = os.path.isdir(os.path.join(root, "val"))
    if has_val:
        val_entries, val_classes = _scan_class_tree(root, "val")
        for name in val_classes:
            if class_key(name) not in class_index:
                raise ValueError(
                    f"Class folder {os.path.join(root, 'val', name)} has no counterpart in "
                    f"{os.path.join(root, 'labeled')}; rename it to a labeled class or add "
                    f"{os.path.join(root, 'labeled', name)}/."
                )
    unlabeled_dir = os.path.join(root, "unlabeled")
    unlabeled_entries = scan_unlabeled(root) if os.path.isdir(unlabeled_dir) else []
    if not unlabeled_entries and require_unlabeled:
        raise ValueError(
            f"{unlabeled_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}); add the unlabeled "
            "images there (any nesting)."
        )
    cache_dir = folder_cache.prepare_cache_dir(root, cache_dir)

    options = dict(image_size=image_size, cache_dir=cache_dir, corrupt_policy=corrupt_policy)
    load = lambda part, entries: folder_cache.update_part_cache(root, part, entries, **options)

    def labels_of(paths: list[str]) -> np.ndarray:  # "labeled/<class>/..." -> class index
        return np.array([class_index[class_key(p.split(os.sep)[1])] for p in paths], np.int32)

    labeled = load("labeled", labeled_entries)
    labeled_labels = labels_of(labeled.paths)
    for name, count in zip(class_names, np.bincount(labeled_labels, minlength=len(class_names))):
        if not count:
            raise ValueError(
                f"Every image in {os.path.join(root, 'labeled', name)} is unreadable; replace "
                "them or remove the folder."
            )
    if has_val:
        val = load("val", val_entries)
        train = np.arange(len(labeled_labels))
        test_images, test_labels, test_entries = val.images, labels_of(val.paths), val.entries
        val_source, skipped = "val/", labeled.skipped + val.skipped
    else:
        train, held_out = _stratified_holdout(labeled_labels, len(class_names), val_fraction, seed)
        if not len(held_out):
            raise ValueError(
                f"Cannot hold out validation images: every class in {root}/labeled has one "
                f"image; add images or a {root}/val/<class_name>/ folder."
            )
        test_images, test_labels = labeled.images[held_out], labeled_labels[held_out]
        test_entries = tuple(labeled.entries[i] for i in held_out)
        val_source = f"held out {val_fraction * 100:g}% of labeled, seed {seed}"
        skipped = labeled.skipped
    train_entries = tuple(labeled.entries[i] for i in train)
    unlabeled = load("unlabeled", unlabeled_entries)  # empty if the run needs none
    skipped += unlabeled.skipped
    if skipped:
        logging.warning(
            f"Skipped {len(skipped)} unreadable or corrupt images in {root} (corrupt_policy="
            f"'skip'), e.g. {', '.join(rel for rel, _, _ in skipped[:5])}."
        )
    # Normalisation statistics of the images trained on: train and unlabeled.
    sums = np.concatenate([labeled.row_sums[train], unlabeled.row_sums])
    mean, std = statistics_from_sums(sums, image_size * image_size)
    dataset = ImageDataset(
        train_images=labeled.images if has_val else labeled.images[train],  # a memmap with val/
        train_labels=labeled_labels[train],
        test_images=test_images,
        test_labels=test_labels,
        num_classes=len(class_names),
        class_names=tuple(class_names),
        source=f"image_folder:{root} (val: {val_source})",
        unlabeled_images=folder_cache.random_access(unlabeled.images),
        name="image_folder",
        mean=mean,
        std=std,
        train_paths=tuple(rel for rel, _, _ in train_entries),
        test_paths=tuple(rel for rel, _, _ in test_entries),
        unlabeled_paths=tuple(unlabeled.paths),
        skipped_corrupt=tuple(rel for rel, _, _ in skipped),
        file_digests={
            "train": entries_digest(train_entries),
            "test": entries_digest(test_entries),
            "unlabeled": entries_digest(unlabeled.entries),
        },
    )
    logging.info(
        f"Loaded {dataset.source}: {len(train)} labeled, {len(unlabeled.entries)} unlabeled, "
        f"{len(test_entries)} val images of {image_size}x{image_size}, {len(class_names)} "
        f"classes, {len(skipped)} unreadable skipped; mean {format_channels(mean)}, std "
        f"{format_channels(std)}."
    )
    _log_evaluation_set(root, dataset, has_val, val_fraction)
    return dataset


def _log_evaluation_set(root: str, dataset: ImageDataset, has_val: bool, val_fraction: float):
    """Logs which images a run evaluates on (their accuracy is its 'test accuracy'), and warns
    when a class has none of them or there are fewer than EVAL_IMAGES_PER_CLASS per class."""
    count, num_classes = len(dataset.test_labels), dataset.num_classes
    which = "val/" if has_val else f"a held-out {val_fraction * 100:g} % of labeled/ (no val/)"
    test = os.path.isdir(os.path.join(root, "test"))
    logging.info(
        f"Evaluating on {which}, {count} images: the run's 'test accuracy' is measured on them"
        + ("; test/ is not read (evaluation images go in val/<class_name>/)." if test else ".")
    )
    per_class = np.bincount(dataset.test_labels, minlength=num_classes)
    missing = [name for name, n in zip(dataset.class_names, per_class) if not n]
    some = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    problems = [f"no images of {some} (their accuracy is not measured)"] if missing else []
    if count < EVAL_IMAGES_PER_CLASS * num_classes:
        problems.append(
            f"fewer than {EVAL_IMAGES_PER_CLASS} images per class on average (its accuracy is noisy)"
        )
    if problems:
        logging.warning(
            f"The evaluation set ({count} images, {num_classes} classes) has "
            f"{'; and '.join(problems)}; add images to {root}/val/<class_name>/."
        )
