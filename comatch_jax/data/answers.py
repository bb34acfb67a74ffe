"""The answers to label requests (config.dataset.extra_labels_csv), read as labeled images.

The file is one of two kinds, told apart by its content:
* an answers CSV (the labelling page's download, answer_from_truth, or typed by hand): a
  `label` column and, to name the image, `id` (a dataset read by name: the image's index in
  its train split) or `path` (an image folder: a file of root/unlabeled/, absolute or
  relative to the root, as the requests CSV names it). A label is a class name (an image
  folder's labels are only its folder names, so folders named 0, 1, 2, 10 read unambiguously)
  or, for ids, also a class index; UNKNOWN answers "none of these classes". An image answered twice must be answered
  alike.
* a Label Studio export (image folders) of the project request_labels writes tasks for:
  JSON (the full task list) or JSON_MIN (both start with `[`), or CSV (an `image` column and
  no `path`). Each task's image URL is mapped back to its file of root/unlabeled/. Cancelled
  annotations are ignored; of an image's other annotations the one updated last counts (ties:
  the higher annotation id), so a reviewer's correction wins.

CSVs are read as spreadsheets save them: UTF-8 with or without a byte-order mark, LF or CRLF
line ends, quoted fields, blank rows ignored; file names that are not UTF-8 round-trip as
surrogate escapes. The file is read once, so its rows and its digest (in the run's data
fingerprint) come from the same bytes. No TensorFlow here.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import unicodedata
import urllib.parse
from collections.abc import Sequence

import numpy as np

# The answer "none of these classes": never trained on as a class; the image stays in the
# unlabeled pool unless dataset.drop_unknown_answers. No class folder may take this name.
UNKNOWN = "__unknown__"
# Label Studio: the task's image field and the Choices control (the export's label column).
IMAGE_NAME, CHOICES_NAME = "image", "label"


def class_key(name: str) -> str:
    """A class name as compared: Unicode NFC, so that a name stored decomposed (NFD, as macOS
    may store a folder name) matches the same name typed or stored composed."""
    return unicodedata.normalize("NFC", name)


def read_csv_table(
    path: str, columns: Sequence[str], raw: bytes | None = None, alternative: Sequence[str] = ()
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, fields), ...]) of a CSV whose header must hold `columns` (or
    else all of `alternative`, where given).

    `raw` is the file's bytes when already read. Header names are stripped of surrounding
    spaces; rows whose fields are all blank are skipped; a row's line number is that of its
    first physical line. Raises OSError, or ValueError in one line naming the file.
    """
    if raw is None:
        with open(path, "rb") as f:
            raw = f.read()
    reader = csv.reader(io.StringIO(raw.decode("utf-8-sig", "surrogateescape"), newline=""))
    table, line = [], 1
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                table.append((line, row))
            line = reader.line_num + 1
    except csv.Error as e:
        raise ValueError(f"{path}: cannot read it as CSV ({e}).") from e
    expected = ",".join(columns)
    if not table:
        raise ValueError(f"{path} is empty; expected a header with columns {expected}.")
    header = [name.strip() for name in table[0][1]]
    missing = [name for name in columns if name not in header]
    if missing and not (alternative and set(alternative) <= set(header)):
        raise ValueError(
            f"{path}: the header {ascii(','.join(header))} lacks column(s) {','.join(missing)}; "
            f"expected a header with columns {expected}."
        )
    for line, row in table[1:]:
        if len(row) != len(header):
            raise ValueError(
                f"{path} line {line}: {len(row)} fields, the header has {len(header)} (quote "
                "fields that hold commas)."
            )
    return header, table[1:]


@dataclasses.dataclass(frozen=True)
class Answers:
    """An answers file as read: ids (int32 [N], train-split indices or rows of the folder's
    unlabeled_paths) answered with class labels (int32 [N]), ids answered UNKNOWN (int32
    [M]), and the sha256 hex of the file's bytes."""

    ids: np.ndarray
    labels: np.ndarray
    unknown_ids: np.ndarray
    digest: str


def read_answers(
    path: str,
    class_names: Sequence[str],
    *,
    num_images: int = 0,
    labeled_ids: Sequence[int] = (),
    root: str | None = None,
    unlabeled_paths: Sequence[str] = (),
) -> Answers:
    """Reads an answers CSV or a Label Studio export: `path,label` with `root` (an image
    folder whose unlabeled/ files are `unlabeled_paths`), else `id,label` with ids in
    0..num_images-1 not in `labeled_ids`.

    A row repeated with the same label counts once. Raises OSError, or ValueError in one line
    naming the file, the row and what to do, for: an empty or malformed file, an image outside
    the pool (or already labeled), a label that is no class, an id's label that is one class's
    name and another class's index (classes 0, 1, 10, 2: '2' names class '2' but index 2 is
    class '10'), an image answered twice with different labels (answers CSV).
    """
    with open(path, "rb") as f:
        raw = f.read()
    key, studio = ("id", ()) if root is None else ("path", (IMAGE_NAME, CHOICES_NAME))
    fix, entries = "fix the row or remove it", None  # entries: of a Label Studio export
    if raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"[", b"{"):
        try:
            tasks = json.loads(raw.decode("utf-8-sig"))
        except ValueError as e:
            raise ValueError(f"{path}: cannot read it as JSON ({e}); export it again.") from None
        entries = [(f"entry {i + 1}", task) for i, task in enumerate(tasks)]
    else:
        header, table = read_csv_table(path, (key, "label"), raw, studio)
        if key not in header:
            entries = [(f"line {line}", dict(zip(header, row))) for line, row in table]
        elif not table:
            raise ValueError(f"{path} has a header but no rows; add {key},label rows or unset it.")
        else:
            at = header.index(key), header.index("label")
            rows = [(f"line {line}", row[at[0]], row[at[1]]) for line, row in table]
    if entries is not None:
        if root is None:
            raise ValueError(
                f"{path} is a Label Studio export, which answers an image folder's requests; a "
                "dataset read by name takes an id,label CSV (the labelling page's download)."
            )
        rows = _label_studio_rows(path, entries, set(unlabeled_paths))
        fix = "relabel the task in Label Studio and export again"
    by_name = {class_key(name): i for i, name in enumerate(class_names)}
    position = {p: i for i, p in enumerate(unlabeled_paths)}
    labeled = set(np.asarray(labeled_ids).tolist())
    answered: dict[int, tuple[int, str]] = {}  # id -> (label, -1 for UNKNOWN; where)

    def image_id(text: str, where: str) -> int:
        if root is not None:
            for name in dict.fromkeys((text, text.strip())):  # spaces kept if a file has them
                relative = os.path.relpath(name, root) if os.path.isabs(name) else name
                found = position.get(os.path.normpath(relative))
                if found is not None:
                    return found
            raise ValueError(
                f"{where}: {text!r} is not an image of {root}/unlabeled/ (paths are absolute or "
                f"relative to {root}); {fix}."
            )
        if not (text.strip().isdecimal() and int(text) < num_images):
            raise ValueError(
                f"{where}: id {text!r} is not in the train split (ids are 0..{num_images - 1}); "
                f"{fix}."
            )
        if int(text) in labeled:
            raise ValueError(f"{where}: id {int(text)} is already in the labeled set; remove it.")
        return int(text)

    def label_of(text: str, where: str) -> int:
        label = text.strip()
        if label == UNKNOWN:
            return -1
        named = by_name.get(class_key(label))
        number = root is None and label.isascii() and label.isdigit()
        number = number and int(label) < len(class_names)  # indices: ids only, never folders
        indexed = int(label) if number else None
        if named is not None and indexed is not None and named != indexed:
            raise ValueError(
                f"{where}: label {label!r} is both the class named {label!r} and class index "
                f"{indexed} (the class {class_names[indexed]!r}); rename the class folders so "
                "that no name is a number (e.g. class_2) and write class names."
            )
        if named is None and indexed is None:
            shown = ", ".join(class_names[:5]) + (", ..." if len(class_names) > 5 else "")
            index = "" if root is not None else f" nor an index 0..{len(class_names) - 1},"
            raise ValueError(
                f"{where}: label {label!r} is neither a class name ({shown}){index} nor "
                f"{UNKNOWN} (none of these classes); {fix}."
            )
        return named if named is not None else indexed

    for where, image, label in rows:
        at = f"{path} {where}"
        image_text, image, label = image, image_id(image, at), label_of(label, at)
        earlier = answered.setdefault(image, (label, where))
        if earlier[0] != label:
            shown = lambda value: UNKNOWN if value < 0 else class_names[value]
            raise ValueError(
                f"{at}: {image_text.strip()!r} appears more than once, answered "
                f"{shown(label)!r} here and {shown(earlier[0])!r} on {earlier[1]}; keep one of "
                "the rows."
            )
    ids = np.array(list(answered), np.int32)
    labels = np.array([label for label, _ in answered.values()], np.int32)
    digest = hashlib.sha256(raw).hexdigest()
    return Answers(ids[labels >= 0], labels[labels >= 0], ids[labels < 0], digest)


def _label_studio_rows(
    path: str, entries: list[tuple[str, dict]], pool: set[str]
) -> list[tuple[str, str, str]]:
    """(where, image of the pool, label) of the annotation that counts for each image of a
    Label Studio export's entries (tasks, or rows of one annotation each). Raises ValueError
    (one line) for a malformed entry, an image outside the pool or no answer at all."""
    annotations = []  # (where, image URL, label(s), (ISO 8601 time updated, annotation id))
    try:
        for where, entry in entries:
            where = f"{where} (task {entry.get('id')})"
            if "annotations" not in entry:  # JSON_MIN, CSV: one annotation, not cancelled
                order = (str(entry.get("updated_at") or ""), int(entry.get("annotation_id") or 0))
                annotations.append((where, entry[IMAGE_NAME], entry.get(CHOICES_NAME), order))
            for annotation in entry.get("annotations", ()):  # JSON: a task, all its annotations
                if not annotation.get("was_cancelled"):
                    results = annotation["result"]
                    labels = [
                        c for r in results if r["type"] == "choices" for c in r["value"]["choices"]
                    ]
                    order = (
                        str(annotation.get("updated_at") or ""),
                        int(annotation.get("id") or 0),
                    )
                    annotations.append((where, entry["data"][IMAGE_NAME], labels, order))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(
            f"{path} {where}: not a Label Studio task of an image and choices ({type(e).__name__}: "
            f"{e}); export the project again as JSON, JSON_MIN or CSV."
        ) from None
    latest = {}
    for where, url, labels, order in annotations:
        # JSON_MIN and CSV hold one choice as its name, several as {"choices": [...]}.
        labels = labels.get("choices", labels) if isinstance(labels, dict) else labels
        label = labels[0] if isinstance(labels, list) and len(labels) == 1 else labels
        if label in (None, "", []):
            continue  # a task without an answer
        image = _pool_path(str(url), pool)
        if image is None:
            raise ValueError(
                f"{path} {where}: image {url!r} is not in the unlabeled pool; delete the task "
                "in Label Studio, or train on the image folder it came from."
            )
        if image not in latest or order > latest[image][0]:
            latest[image] = (order, where, label if isinstance(label, str) else json.dumps(label))
    if not latest:
        raise ValueError(
            f"{path}: no answered image (cancelled annotations do not count); label some in "
            "Label Studio and export again."
        )
    return [(where, image, label) for image, (_, where, label) in latest.items()]


def _pool_path(url: str, pool: set[str]) -> str | None:
    """The unlabeled image a task's URL names: its `d` parameter (local files) or its path,
    percent-decoded, matched on its longest tail that is a path of the pool."""
    parts = urllib.parse.urlsplit(url)
    query = (p.partition("=") for p in parts.query.split("&"))
    raw = next((value for name, _, value in query if name == "d"), parts.path)
    pieces = os.fsdecode(urllib.parse.unquote_to_bytes(raw)).split("/")
    return next((tail for i in range(len(pieces)) if (tail := "/".join(pieces[i:])) in pool), None)
