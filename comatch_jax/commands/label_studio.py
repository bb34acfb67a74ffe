"""Label Studio out and in: an image folder's label requests as a Label Studio project, and
its exports back as (path, label) answers.

Out: `write_tasks` writes the tasks JSON to import, one task per requested image, whose
`data.image` is a URL of the file and whose prediction holds the model's top class with
`score` = the request score (sort the Data Manager by "Prediction score", descending, to
label the most wanted first); `labelling_config` gives the project's labelling interface,
an `Image` and single `Choices` over the class names plus `UNKNOWN_LABEL`.
Served by Label Studio itself (local files), the URLs are /data/local-files/?d=<the path
relative to a document root>, and Label Studio needs three settings:
  LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true
  LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<the document root>
  a Local Storage in the project whose absolute path holds the images (not synced).
Any other server works with `url_prefix="http://host/path/"` mapped onto the same root.

In: `read_export` reads a project's export, JSON (the full task list), JSON_MIN or CSV.
"""

from __future__ import annotations

import datetime
import json
import os
import urllib.parse
from typing import Any, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np

from comatch_jax import atomic_files
from comatch_jax.commands import active_learning
from comatch_jax.commands.labelling_page import UNKNOWN_LABEL

LOCAL_FILES_PREFIX = "/data/local-files/?d="
CHOICES_NAME = "label"  # the Choices control: JSON_MIN and CSV exports name their column so
IMAGE_NAME = "image"  # the Image object and the task's data field


def labelling_config(class_names: Sequence[str]) -> str:
    """The labelling config XML: the image, and one choice per class plus UNKNOWN_LABEL
    ("none of these classes"); names are XML-escaped."""
    choices = "".join(
        f"    <Choice value={quoteattr(n)}/>\n" for n in [*class_names, UNKNOWN_LABEL]
    )
    return (
        f'<View>\n  <Image name="{IMAGE_NAME}" value="${IMAGE_NAME}"/>\n'
        f'  <Header value="Choose {UNKNOWN_LABEL} when the image shows none of these classes."/>\n'
        f'  <Choices name="{CHOICES_NAME}" toName="{IMAGE_NAME}" choice="single" required="true">\n'
        f"{choices}  </Choices>\n</View>\n"
    )


def write_tasks(
    path: str,
    image_files: Sequence[str],
    predicted_classes: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    *,
    document_root: str,
    url_prefix: str = LOCAL_FILES_PREFIX,
    model_version: str = "comatch_jax",
) -> None:
    """Writes the tasks JSON (whole) for the requested `image_files`, best request first.

    Each task's image URL is `url_prefix` + the file's path relative to `document_root`,
    percent-encoded byte by byte (any file name survives; read_export decodes it). Raises
    ValueError (one line) for a file outside `document_root` or lengths that differ.
    """
    if not len(image_files) == len(predicted_classes) == len(scores):
        raise ValueError(
            f"image_files, predicted_classes and scores differ in length: {len(image_files)}, "
            f"{len(predicted_classes)}, {len(scores)}."
        )
    root = os.path.abspath(document_root)
    tasks = []
    for file, predicted, score in zip(image_files, predicted_classes, scores):
        relative = os.path.relpath(os.path.abspath(file), root)
        if relative.startswith(os.pardir):
            raise ValueError(
                f"{file} is outside the document root {root}; name a root that holds every "
                "requested image (e.g. the image folder's root)."
            )
        prediction = {"type": "choices", "from_name": CHOICES_NAME, "to_name": IMAGE_NAME}
        prediction["value"] = {"choices": [class_names[int(predicted)]]}
        tasks.append(
            {
                "data": {IMAGE_NAME: url_prefix + urllib.parse.quote(os.fsencode(relative))},
                "predictions": [
                    {"model_version": model_version, "score": float(score), "result": [prediction]}
                ],
            }
        )
    with atomic_files.open_atomic(path, "w", encoding="utf-8") as f:
        json.dump(tasks, f, indent=1, ensure_ascii=False)


def _pool_path(url: str, pool: set[str]) -> str | None:
    """The unlabeled image a task's URL names: its `d` parameter (local files) or its path,
    percent-decoded, matched on its longest tail that is a path of the pool."""
    parts = urllib.parse.urlsplit(url)
    query = (p.partition("=") for p in parts.query.split("&"))
    raw = next((value for name, _, value in query if name == "d"), parts.path)
    pieces = os.fsdecode(urllib.parse.unquote_to_bytes(raw)).split("/")
    return next(
        ("/".join(pieces[i:]) for i in range(len(pieces)) if "/".join(pieces[i:]) in pool), None
    )


def _order(updated_at: str | None, annotation_id: Any) -> tuple[datetime.datetime, int]:
    """An annotation's sort key: when it was last updated, then its id."""
    when = datetime.datetime.fromisoformat((updated_at or "0001-01-01").replace("Z", "+00:00"))
    return when.replace(tzinfo=when.tzinfo or datetime.timezone.utc), int(annotation_id or 0)


def _annotations(path: str) -> list[tuple[str, Any, Any, tuple[datetime.datetime, int]]]:
    """(where, image URL, label(s), sort key) of each annotation that was not cancelled, from
    any of the three export formats; ValueError (one line) if malformed."""
    if path.lower().endswith(".csv"):
        header, rows = active_learning.read_csv_table(path, (IMAGE_NAME, CHOICES_NAME))
        entries = [(f"line {line}", dict(zip(header, row))) for line, row in rows]
    else:
        try:
            with open(path, encoding="utf-8-sig") as f:
                tasks = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read it as JSON ({e}); export it again.") from None
        if not isinstance(tasks, list):
            raise ValueError(f"{path}: not a list of tasks; export the project again.")
        entries = [(f"entry {i + 1}", task) for i, task in enumerate(tasks)]
    records = []
    try:
        for where, entry in entries:
            where = f"{where} (task {entry.get('id')})"
            if "annotations" not in entry:  # CSV, JSON_MIN: one row per annotation, none cancelled
                order = _order(entry.get("updated_at"), entry.get("annotation_id"))
                records.append((where, entry[IMAGE_NAME], entry.get(CHOICES_NAME), order))
                continue
            for annotation in entry["annotations"]:  # JSON: each task with all its annotations
                if not annotation.get("was_cancelled"):
                    result = annotation["result"]
                    labels = [
                        c for r in result if r["type"] == "choices" for c in r["value"]["choices"]
                    ]
                    order = _order(annotation.get("updated_at"), annotation.get("id"))
                    records.append((where, entry["data"][IMAGE_NAME], labels, order))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(
            f"{path} {where}: not a Label Studio task of an image and choices ({type(e).__name__}: "
            f"{e}); export the project again as JSON, JSON_MIN or CSV."
        ) from None
    return records


def read_export(
    path: str, *, unlabeled_paths: Sequence[str], class_names: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The answers in a Label Studio export (JSON, JSON_MIN or CSV, as the Export button or
    /api/projects/<id>/export?exportType=... writes it) of a project made by write_tasks.

    Each annotated image is mapped back to its path in `unlabeled_paths` through its URL.
    Cancelled (skipped) annotations are ignored; where an image has several annotations the
    one updated last counts (ties: the higher annotation id), so a reviewer's correction
    wins. Returns (paths, labels), one per answered image in the export's order; a label is
    a class name or UNKNOWN_LABEL. Raises ValueError, one line naming the row, for a
    malformed file, an image not in the pool, a label that is not a class, or no answer.
    """
    pool, allowed = set(unlabeled_paths), {*class_names, UNKNOWN_LABEL}
    latest: dict[str, tuple[tuple[datetime.datetime, int], str]] = {}
    for where, url, labels, order in _annotations(path):
        # JSON_MIN and CSV hold one choice as its name, several as {"choices": [...]}.
        labels = labels.get("choices", labels) if isinstance(labels, dict) else labels
        label = labels[0] if isinstance(labels, list) and len(labels) == 1 else labels
        if label in (None, "", []):
            continue  # a task without an answer
        key = _pool_path(str(url), pool)
        if key is None:
            raise ValueError(
                f"{path} {where}: image {url!r} is not in the unlabeled pool; delete the task "
                "in Label Studio, or train on the image folder it came from."
            )
        if not isinstance(label, str) or label not in allowed:
            raise ValueError(
                f"{path} {where}: label {label!r} is neither a class of the run nor "
                f"{UNKNOWN_LABEL}; give the project labelling_config(class_names), relabel "
                "the task and export again."
            )
        if key not in latest or order > latest[key][0]:
            latest[key] = (order, label)
    if not latest:
        raise ValueError(
            f"{path}: no answered image (cancelled annotations do not count); label some in "
            "Label Studio and export again."
        )
    return list(latest), [label for _, label in latest.values()]
