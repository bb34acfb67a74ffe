"""A labelling page for label requests: one static HTML file that a person opens from disk.

write_labelling_page(directory, keys, images, probs, scores, class_names) writes
  directory/labelling.html   the page, with the requests embedded as JSON;
  directory/images/NNNNNN.*  one small image per request, named by its position (a file's own
                             name never reaches a URL).
The page needs no server and no network. Per image it offers the model's top guesses as
one-key answers (1-9), a type-ahead search over every class, and answers.UNKNOWN for "none
of these classes"; arrows page, Backspace / Ctrl+Z undo. Answers are kept in the browser's
localStorage under a key made from the requests (two pages never mix), and "Download
answers" saves `path,label` or `id,label` rows with class names as labels, the format of
`--config.dataset.extra_labels_csv`. Names are put on the page as text only, and a
Content-Security-Policy lets no script run but the page's own.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import importlib.resources
import json
import os
from typing import Sequence

import numpy as np
from PIL import Image

from comatch_jax import atomic_files
from comatch_jax.data.answers import UNKNOWN

PAGE_NAME = "labelling.html"
CSV_NAME = "answers.csv"
TOP_GUESSES = 9  # one key each, 1-9


def _template(name: str) -> str:
    return importlib.resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _write_image(image: str | np.ndarray, out_stem: str, size: int) -> str:
    """Writes one request's image: a file becomes a JPEG of longest side <= `size`, a uint8
    HxWxC array a PNG as is (the page shows a small image at a whole multiple of its size).
    Returns the written file's name."""
    if isinstance(image, np.ndarray):
        array = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
        Image.fromarray(np.asarray(array, np.uint8)).save(out_stem + ".png")
        return os.path.basename(out_stem) + ".png"
    try:
        with Image.open(image) as opened:
            picture = opened.convert("RGB")
    except (OSError, ValueError) as e:
        raise ValueError(f"{image}: cannot read it as an image ({e}).") from None
    picture.thumbnail((size, size))
    picture.save(out_stem + ".jpg", quality=90)
    return os.path.basename(out_stem) + ".jpg"


def _embedded_json(data: dict) -> str:
    """JSON that cannot end or open a tag inside <script>: <, > and & are \\u-escaped."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def write_labelling_page(
    directory: str,
    keys: Sequence[str] | Sequence[int],
    images: Sequence[str] | np.ndarray,
    probs: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    *,
    key_column: str = "path",
    title: str = "Label requests",
    image_size: int = 256,
) -> str:
    """Writes the labelling page for N requests into `directory` (created if missing).

    keys: N request keys, the answers CSV's first column, best request first: image-folder
      paths as the answers reader takes them (relative to the folder's root, e.g.
      unlabeled/a.jpg, or absolute; key_column "path") or train-split ids (key_column "id").
    images: N image files (any format PIL reads), or a uint8 array [N, H, W, C] (C = 1 or 3)
      or N such arrays, e.g. a dataset's own pixels.
    probs: float [N, num_classes], the model's class probabilities; the top 9 become the
      one-key answers.
    scores: float [N], the request score (higher = more wanted), shown beside each image.
    Returns the page's path. Raises ValueError (one line) for inputs that do not fit together
    or an image that cannot be read.
    """
    probs, scores = np.asarray(probs, np.float64), np.asarray(scores, np.float64)
    if not (len(keys) == len(images) == len(probs) == len(scores)) or not len(keys):
        raise ValueError(
            f"keys, images, probs and scores must have one entry per request; got {len(keys)}, "
            f"{len(images)}, {len(probs)} and {len(scores)}."
        )
    if not (np.isfinite(probs).all() and np.isfinite(scores).all()):
        raise ValueError("probs and scores must be finite numbers (is the model's output NaN?).")
    keys = [str(k) if key_column == "path" else int(k) for k in keys]
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    stems = [os.path.join(directory, "images", f"{i:06d}") for i in range(len(keys))]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # PIL releases the GIL
        files = list(
            pool.map(lambda i: _write_image(images[i], stems[i], image_size), range(len(keys)))
        )
    top = np.argsort(-probs, axis=1, kind="stable")[:, :TOP_GUESSES]
    identity = json.dumps([key_column, keys, list(class_names)], ensure_ascii=True).encode()
    data = {
        "title": title,
        "key_column": key_column,
        "class_names": list(class_names),
        "unknown_label": UNKNOWN,
        "storage_key": hashlib.sha256(identity).hexdigest()[:16],
        "image_dir": "images",
        "csv_name": CSV_NAME,
        "requests": [
            [key, file, float(f"{score:.4g}"), row.tolist(), np.round(p[row], 4).tolist()]
            for key, file, score, row, p in zip(keys, files, scores, top, probs)
        ],
    }
    script = _template("labelling_page.js")
    script_hash = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    page = (
        _template("labelling_page.html")
        .replace("__SCRIPT_HASH__", f"sha256-{script_hash}")
        .replace("<script>__SCRIPT__</script>", f"<script>{script}</script>")
        .replace("__REQUESTS_JSON__", _embedded_json(data))  # last: no name is ever rescanned
    )
    path = os.path.join(directory, PAGE_NAME)
    with atomic_files.open_atomic(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
