"""Asks for labels: ranks a trained run's unlabeled images and writes the top ones as CSV,
with a labelling page (and Label Studio's import files) to answer them in.

  python -m comatch_jax.commands.request_labels --workdir=RUN --budget=40 --strategy=entropy \\
      --out=requests.csv                                  (or: comatch-request-labels ...)

Scores every unlabeled train-split image (neither labeled nor answered UNKNOWN) with the
run's EMA model, picks `--budget` of them with `--strategy` (active_learning.STRATEGIES) and
writes them most wanted first, one row each: `id,predicted_class,score` for a dataset by
name (id: the image's index in the train split), `path,predicted_class,score` for an image
folder (path: the file under root/unlabeled/, whole). predicted_class is a class NAME. Beside
it:
  requests_page/labelling.html   the labelling page (comatch_jax.commands.labelling_page),
                                 unless --nolabelling_page;
  requests_tasks.json,           with --label_studio_root=DIR or --label_studio_url=PREFIX
  requests_label_config.xml      (an image folder only): Label Studio's import files, each
                                 file's URL its path under DIR (local files) or PREFIX/ + it;
  requests_unknown.csv           with --unknown_rate=R: the images likely of none of the
                                 classes (ema_model.UnknownScorer), highest score first, to
                                 check as junk; they are never requested.
The answers (the page's download, a Label Studio export, or answer_from_truth's offline) train
a new run with `--config.dataset.extra_labels_csv=FILE`; docs/labelling.md walks the loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.parse
from typing import Any, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np
from absl import flags, logging

from comatch_jax import atomic_files, commands
from comatch_jax.commands import active_learning, ema_model
from comatch_jax.commands.labelling_page import write_labelling_page
from comatch_jax.data import pipeline
from comatch_jax.data.answers import CHOICES_NAME, IMAGE_NAME, UNKNOWN
from comatch_jax.trainer import saved_runs

LOCAL_FILES = "/data/local-files/?d="  # Label Studio's URL of a file under its document root


@dataclasses.dataclass(frozen=True)
class LabelRequests:
    """The chosen images, most wanted first."""

    ids: np.ndarray  # train-split indices (image folders: rows of data.unlabeled_paths)
    rows: np.ndarray  # rows of data.unlabeled_images
    scores: np.ndarray  # the strategy's score (kcenter: distance to the nearest labeled image)
    probs: np.ndarray  # float32 [N, num_classes], the model's class probabilities


def rank_unlabeled(
    run: saved_runs.TrainedRun,
    data: pipeline.SemiSupervisedData,
    *,
    budget: int,
    strategy: str = "entropy",
    balance_by_predicted_class: bool = False,
    seed: int = 0,
    batch_size: int = 1000,
) -> LabelRequests:
    """Scores the unlabeled train-split images of `data` with `run` and picks `budget`.

    Images already labeled or answered UNKNOWN, and those of an extra unlabeled split (no
    train-split id), are never requested; a budget above what is left requests all of it.
    Raises ValueError (one line) for a budget below 1 or no image left, before any scoring.
    """
    answered = np.concatenate([data.labeled_ids, data.unknown_ids])
    candidates = (data.unlabeled_ids >= 0) & ~np.isin(data.unlabeled_ids, answered)
    left = int(candidates.sum())
    if budget <= 0 or not left:
        raise ValueError(
            f"--budget must be positive, got {budget}."
            if budget <= 0
            else "No unlabeled "
            "train-split image is left to request: every one is labeled or answered."
        )
    if budget > left:
        logging.warning(f"--budget={budget} is more than the {left} images not yet answered: all.")
        budget = left
    predict = ema_model.predictor(run, batch_size)
    outputs = predict(data.unlabeled_images[candidates])
    labeled = predict(data.labeled_images)["embedding"] if strategy == "kcenter" else None
    chosen = active_learning.select(
        strategy,
        probs=outputs["probs"],
        budget=budget,
        embeddings=outputs["embedding"],
        labeled_embeddings=labeled,
        balance_by_predicted_class=balance_by_predicted_class,
        seed=seed,
    )
    if strategy == "kcenter":
        scores = active_learning.distance_to_nearest(outputs["embedding"][chosen], labeled)
    else:
        scores = active_learning.strategy_scores(strategy, outputs["probs"], seed)[chosen]
    rows = np.flatnonzero(candidates)[chosen]
    return LabelRequests(data.unlabeled_ids[rows], rows, scores, outputs["probs"][chosen])


def write_label_studio_files(
    stem: str,
    files: Sequence[str],
    predicted_classes: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    *,
    document_root: str,
    url_prefix: str = LOCAL_FILES,
) -> None:
    """Writes (whole) Label Studio's import files for the requested image `files`: stem +
    _label_config.xml, the labelling config (the image, and one choice per class plus UNKNOWN,
    "none of these classes"; names XML-escaped), and stem + _tasks.json, one task per file,
    best request first, whose `data.image` is `url_prefix` + the file's path relative to
    `document_root` percent-encoded byte by byte (any file name survives; data.answers
    decodes it) and whose prediction is the model's top class with `score` = the request
    score (sort the Data Manager by it). ValueError (one line): a file outside the root."""
    root, tasks = os.path.abspath(document_root), []
    for file, predicted, score in zip(files, predicted_classes, scores):
        relative = os.path.relpath(os.path.abspath(file), root)
        if relative.startswith(os.pardir):
            raise ValueError(
                f"{file} is outside the document root {root}; name a root that holds every "
                "requested image (e.g. the image folder's root)."
            )
        choice = {"type": "choices", "from_name": CHOICES_NAME, "to_name": IMAGE_NAME}
        choice["value"] = {"choices": [class_names[int(predicted)]]}
        prediction = {"model_version": "comatch_jax", "score": float(score), "result": [choice]}
        url = url_prefix + urllib.parse.quote(os.fsencode(relative))
        tasks.append({"data": {IMAGE_NAME: url}, "predictions": [prediction]})
    with atomic_files.open_atomic(stem + "_tasks.json", "w", encoding="utf-8") as f:
        json.dump(tasks, f, indent=1, ensure_ascii=False)
    choices = "".join(f"    <Choice value={quoteattr(n)}/>\n" for n in [*class_names, UNKNOWN])
    with atomic_files.open_atomic(stem + "_label_config.xml", "w", encoding="utf-8") as f:
        f.write(
            f'<View>\n  <Image name="{IMAGE_NAME}" value="${IMAGE_NAME}"/>\n'
            f'  <Header value="Choose {UNKNOWN} when the image shows none of these classes."/>\n'
            f'  <Choices name="{CHOICES_NAME}" toName="{IMAGE_NAME}" choice="single" '
            f'required="true">\n{choices}  </Choices>\n</View>\n'
        )


def request_labels(
    workdir: str,
    out: str,
    *,
    labelling_page: bool = True,
    label_studio_root: str | None = None,
    label_studio_url: str | None = None,
    unknown_rate: float | None = None,
    **ranking: Any,
) -> LabelRequests:
    """The command: ranks the run's unlabeled images (`ranking`: rank_unlabeled's keyword
    arguments, budget and strategy first) and writes the requests CSV to `out` (whole), and
    beside it the files of the module's docstring. Logs what to open. Raises ValueError /
    OSError with one line."""
    run = saved_runs.load_run(workdir)
    root = run.config.dataset.root
    if (label_studio_root or label_studio_url) and run.config.dataset.name != "image_folder":
        raise ValueError(
            "--label_studio_root/url need a run on an image folder; label a dataset by name in "
            "the labelling page."
        )
    data, stem = pipeline.prepare_data(run.config), os.path.splitext(out)[0]
    if unknown_rate is not None:  # likely unknown: listed apart, never requested
        scorer = ema_model.UnknownScorer(run, ema_model.predictor(run), data)
        ids = scorer.write_likely_unknown(workdir, unknown_rate, stem + "_unknown.csv")
        data = dataclasses.replace(data, unknown_ids=np.concatenate([data.unknown_ids, ids]))
    requests = rank_unlabeled(run, data, **ranking)
    keys, column, images = requests.ids.tolist(), "id", data.unlabeled_images[requests.rows]
    if data.unlabeled_paths:  # an image folder: its files relative to its root, and whole
        keys, column = [data.unlabeled_paths[i] for i in keys], "path"
        images = [os.path.join(os.path.abspath(root), key) for key in keys]
    probs, scores, classes = requests.probs, requests.scores, run.class_names
    predicted = np.argmax(probs, -1)
    names, shown = [classes[c] for c in predicted], [f"{float(s):.6g}" for s in scores]
    first = images if column == "path" else keys  # an image folder's files named whole
    active_learning.write_csv(out, (column, "predicted_class", "score"), zip(first, names, shown))
    logging.info("Wrote %d label requests to %s", len(keys), out)
    if labelling_page:
        title = f"{len(keys):,} label requests from {os.path.basename(os.path.abspath(workdir))}"
        page = write_labelling_page(
            stem + "_page", keys, images, probs, scores, classes, key_column=column, title=title
        )
        logging.info("To answer them, open %s in a browser.", page)
    if label_studio_root or label_studio_url:
        url, document_root = label_studio_url or LOCAL_FILES, label_studio_root or root
        url += "" if url.endswith(("/", "=")) else "/"  # a folder's URL: its files are under it
        write_label_studio_files(
            stem, images, predicted, scores, classes, document_root=document_root, url_prefix=url
        )
        logging.info("For Label Studio: %s_tasks.json, %s_label_config.xml.", stem, stem)
    return requests


def command() -> None:
    """comatch-request-labels (setup.py): flags are defined here, so importing defines none."""
    flags.DEFINE_string("workdir", None, "Workdir of a trained run.")
    flags.DEFINE_integer("budget", None, "How many labels to request.")
    flags.DEFINE_enum("strategy", "entropy", active_learning.STRATEGIES, "How to rank.")
    flags.DEFINE_bool(
        "balance_by_predicted_class",
        False,
        "Take the requests round-robin over predicted classes (e.g. entropy within class).",
    )
    flags.DEFINE_integer("seed", 0, "Seed of the random strategy.")
    flags.DEFINE_string("out", None, "Where to write the requests CSV.")
    flags.DEFINE_integer("batch_size", 1000, "Images per inference batch.")
    flags.DEFINE_bool("labelling_page", True, "Write the labelling page beside --out.")
    flags.DEFINE_string("label_studio_root", None, "Label Studio's local files document root.")
    flags.DEFINE_string("label_studio_url", None, "Or: the URL prefix of the image folder.")
    flags.DEFINE_float(
        "unknown_rate", None, "Set apart images above the threshold of this rejection rate on val."
    )
    commands.run(__name__, request_labels, ["workdir", "budget", "out"])


if __name__ == "__main__":
    command()
