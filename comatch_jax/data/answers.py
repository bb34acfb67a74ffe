"""The answers to label requests (config.dataset.extra_labels_csv), read as labeled images.

An answers CSV has a `label` column and, to name the image, either `id` (a dataset read by
name: the image's index in its train split) or `path` (an image folder: a file of
root/unlabeled/, absolute or relative to the root, as the requests CSV names it). A label
is a class name or a class index; UNKNOWN answers "none of these classes".

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
import os
import unicodedata
from collections.abc import Sequence

import numpy as np

CSV_READ = {"encoding": "utf-8-sig", "errors": "surrogateescape"}
# The answer "none of these classes": never trained on as a class; the image stays in the
# unlabeled pool unless dataset.drop_unknown_answers. No class folder may take this name.
UNKNOWN = "__unknown__"


def class_key(name: str) -> str:
    """A class name as compared: Unicode NFC, so that a name stored decomposed (NFD, as macOS
    may store a folder name) matches the same name typed or stored composed."""
    return unicodedata.normalize("NFC", name)


def read_csv_table(
    path: str, columns: Sequence[str], raw: bytes | None = None
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, fields), ...]) of a CSV whose header must hold `columns`.

    `raw` is the file's bytes when already read. Header names are stripped of surrounding
    spaces; rows whose fields are all blank are skipped; a row's line number is that of its
    first physical line. Raises FileNotFoundError, or ValueError in one line naming the file.
    """
    reader = csv.reader(
        io.StringIO((_read(path) if raw is None else raw).decode(**CSV_READ), newline="")
    )
    table, line = [], 1
    try:
        for row in reader:
            table.append((line, row))
            line = reader.line_num + 1
    except csv.Error as e:
        raise ValueError(f"{path}: cannot read it as CSV ({e}).") from e
    table = [(line, row) for line, row in table if any(cell.strip() for cell in row)]
    expected = ",".join(columns)
    if not table:
        raise ValueError(f"{path} is empty; expected a header with columns {expected}.")
    header = [name.strip() for name in table[0][1]]
    missing = [name for name in columns if name not in header]
    if missing:
        shown = ",".join(header)
        shown = repr(shown) if shown.isprintable() and shown.isascii() else ascii(shown)
        raise ValueError(
            f"{path}: the header {shown} lacks column(s) {','.join(missing)}; expected a "
            f"header with columns {expected}."
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
    """Reads an answers CSV: `path,label` with `root` (an image folder whose unlabeled/ files
    are `unlabeled_paths`), else `id,label` with ids in 0..num_images-1 not in `labeled_ids`.

    A row repeated with the same label counts once. Raises ValueError in one line naming the
    file, the line and what to do, for: an empty file, an image outside the pool (or already
    labeled), a label that is no class, a label that is one class's name and another class's
    index (class folders 0, 1, 2, 10: '2' names class '2' but index 2 is class '10'), an image
    answered twice with different labels.
    """
    raw = _read(path)
    key = "id" if root is None else "path"
    header, rows = read_csv_table(path, (key, "label"), raw)
    if not rows:
        raise ValueError(f"{path} has a header but no rows; add {key},label rows or unset it.")
    key_column, label_column = header.index(key), header.index("label")
    by_name = {class_key(name): i for i, name in enumerate(class_names)}
    position = {p: i for i, p in enumerate(unlabeled_paths)}
    labeled = set(np.asarray(labeled_ids).tolist())
    answered: dict[int, tuple[int, int]] = {}  # id -> (label, -1 for UNKNOWN; line)

    def image_id(text: str, line: int) -> int:
        where = f"{path} line {line}"
        if root is not None:
            found = None
            for name in dict.fromkeys((text, text.strip())):  # spaces kept if a file has them
                relative = os.path.relpath(name, root) if os.path.isabs(name) else name
                found = position.get(os.path.normpath(relative))
                if found is not None:
                    return found
            raise ValueError(
                f"{where}: {text!r} is not an image of {root}/unlabeled/ (paths are absolute or "
                f"relative to {root}); fix the path or remove the row."
            )
        try:
            index = int(text.strip())
        except ValueError:
            raise ValueError(f"{where}: id {text!r} is not an integer; fix the row.") from None
        if not 0 <= index < num_images:
            raise ValueError(
                f"{where}: id {index} is not in the train split (ids are 0..{num_images - 1}); "
                "fix the row."
            )
        if index in labeled:
            raise ValueError(f"{where}: id {index} is already in the labeled set; remove it.")
        return index

    def label_of(text: str, line: int) -> int:
        label = text.strip()
        if label == UNKNOWN:
            return -1
        named = by_name.get(class_key(label))
        indexed = int(label) if label.isascii() and label.isdigit() else None
        indexed = indexed if indexed is not None and indexed < len(class_names) else None
        if named is not None and indexed is not None and named != indexed:
            raise ValueError(
                f"{path} line {line}: label {label!r} is both the class named {label!r} and "
                f"class index {indexed} (the class {class_names[indexed]!r}); rename the class "
                "folders so that no name is a number (e.g. class_2) and write class names."
            )
        if named is None and indexed is None:
            shown = ", ".join(class_names[:5]) + (", ..." if len(class_names) > 5 else "")
            raise ValueError(
                f"{path} line {line}: label {label!r} is neither a class name ({shown}) nor an "
                f"index 0..{len(class_names) - 1}, nor {UNKNOWN} (none of these classes)."
            )
        return named if named is not None else indexed

    for line, row in rows:
        image, label = image_id(row[key_column], line), label_of(row[label_column], line)
        earlier = answered.setdefault(image, (label, line))
        if earlier[0] != label:
            shown = lambda value: UNKNOWN if value < 0 else class_names[value]
            raise ValueError(
                f"{path} line {line}: {row[key_column].strip()!r} appears more than once, "
                f"answered {shown(label)!r} here and {shown(earlier[0])!r} on line {earlier[1]}; "
                "keep one of the rows."
            )
    ids = np.array([i for i, (label, _) in answered.items() if label >= 0], np.int32)
    return Answers(
        ids=ids,
        labels=np.array([label for label, _ in answered.values() if label >= 0], np.int32),
        unknown_ids=np.array([i for i, (label, _) in answered.items() if label < 0], np.int32),
        digest=hashlib.sha256(raw).hexdigest(),
    )


def _read(path: str) -> bytes:
    """The bytes of `path`; FileNotFoundError or ValueError in one line naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file.") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror or e}).") from e
