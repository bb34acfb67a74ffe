"""Label Studio out: an image folder's label requests as a Label Studio project (its exports
come back through `--config.dataset.extra_labels_csv`, comatch_jax.data.answers).

`write_tasks` writes the tasks JSON to import, one task per requested image, whose
`data.image` is a URL of the file and whose prediction holds the model's top class with
`score` = the request score (sort the Data Manager by "Prediction score", descending, to
label the most wanted first); `labelling_config` gives the project's labelling interface,
an `Image` and single `Choices` over the class names plus answers.UNKNOWN.
Served by Label Studio itself (local files), the URLs are /data/local-files/?d=<the path
relative to a document root>, and Label Studio needs three settings:
  LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true
  LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<the document root>
  a Local Storage in the project whose absolute path holds the images (not synced).
Any other server works with `url_prefix="http://host/path/"` mapped onto the same root.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Sequence
from xml.sax.saxutils import quoteattr

import numpy as np

from comatch_jax import atomic_files
from comatch_jax.data.answers import CHOICES_NAME, IMAGE_NAME, UNKNOWN

LOCAL_FILES_PREFIX = "/data/local-files/?d="


def labelling_config(class_names: Sequence[str]) -> str:
    """The labelling config XML: the image, and one choice per class plus UNKNOWN
    ("none of these classes"); names are XML-escaped."""
    choices = "".join(
        f"    <Choice value={quoteattr(n)}/>\n" for n in [*class_names, UNKNOWN]
    )
    return (
        f'<View>\n  <Image name="{IMAGE_NAME}" value="${IMAGE_NAME}"/>\n'
        f'  <Header value="Choose {UNKNOWN} when the image shows none of these classes."/>\n'
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
    percent-encoded byte by byte (any file name survives; data.answers decodes it). Raises
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
