"""A small, JSON-serialisable fingerprint of a dataset, and a plain description of how two
fingerprints differ (so that a run does not silently resume on different data)."""

from __future__ import annotations

from typing import Any

from comatch_jax.data.dataset import ImageDataset

PARTS = ("train", "test", "unlabeled")
_FORMAT = 1


def data_fingerprint(dataset: ImageDataset) -> dict[str, Any]:
    """{"format", "source", "class_names": [...], "parts": {part: {"count", "files"}}}.

    count: images in the part (train, test, unlabeled; 0 when absent); files: the dataset's
    sha256 over the part's sorted (path, size, mtime) entries (image folders, IDX files), or
    None when the data does not come from files it can list. JSON-serialisable.
    """
    arrays = {
        "train": dataset.train_images,
        "test": dataset.test_images,
        "unlabeled": dataset.unlabeled_images,
    }
    return {
        "format": _FORMAT,
        "source": dataset.source,
        "class_names": list(dataset.class_names),
        "parts": {
            part: {
                "count": 0 if arrays[part] is None else int(len(arrays[part])),
                "files": dataset.file_digests.get(part),
            }
            for part in PARTS
        },
    }


def _images(count: int) -> str:
    return f"{count:,} image" if count == 1 else f"{count:,} images"


def describe_data_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What changed from fingerprint `old` to `new`, as one line, or None if nothing did.

    Per part the net change of the count ("unlabeled: 5 -> 7 images (2 added)"), or that files
    were replaced or modified when the count is the same but the file hash differs; classes
    added or removed, or a changed class order (which changes what each label means); a changed
    source.
    """
    changes = []
    old_classes, new_classes = list(old["class_names"]), list(new["class_names"])
    added = [c for c in new_classes if c not in old_classes]
    removed = [c for c in old_classes if c not in new_classes]
    if added:
        changes.append(f"classes added: {', '.join(added)}")
    if removed:
        changes.append(f"classes removed: {', '.join(removed)}")
    if not added and not removed and old_classes != new_classes:
        changes.append("the class order changed (labels now mean other classes)")
    for part in PARTS:
        before = old["parts"].get(part, {"count": 0, "files": None})
        after = new["parts"].get(part, {"count": 0, "files": None})
        a, b = int(before["count"]), int(after["count"])
        if a != b:
            delta = f"{b - a:,} added" if b > a else f"{a - b:,} removed"
            changes.append(f"{part}: {a:,} -> {_images(b)} ({delta})")
        elif before["files"] and after["files"] and before["files"] != after["files"]:
            changes.append(f"{part}: {_images(b)}, but files were replaced or modified")
    if old.get("source") != new.get("source"):
        changes.append(f"source: {old.get('source')} -> {new.get('source')}")
    return "; ".join(changes) if changes else None
