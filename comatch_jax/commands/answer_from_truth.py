"""Answers label requests from the ground truth, for OFFLINE EVALUATION ONLY.

  python -m comatch_jax.commands.answer_from_truth --requests=requests.csv --workdir=RUN \\
      --out=labels.csv                                    (or: comatch-answer-from-truth ...)
  ... --requests=requests.csv --truth=FOLDER/unlabeled_truth.csv --out=labels.csv

It stands in for the person who labels the images, so that the active-learning loop (train,
request, label, retrain) runs unattended on a benchmark whose labels are known.
- A dataset by name (--workdir): the `id` column of the requests CSV (request_labels) is
  looked up in the run's train split; writes `id,label` (label: the class index).
- An image folder (--truth): the `path` column is looked up in a `path,label` CSV whose paths
  are relative to the unlabeled/ folder beside it (as experiments/make_folder_subset.py and
  experiments/open_set.py write FOLDER/unlabeled_truth.csv); writes `path,label` (label: the
  class name as the truth CSV gives it).
"""

from __future__ import annotations

import os

import ml_collections
from absl import flags, logging

from comatch_jax import commands, data
from comatch_jax.commands import active_learning
from comatch_jax.data.answers import read_csv_table
from comatch_jax.trainer import saved_runs


def answer_requests(requests_csv: str, out: str, config: ml_collections.ConfigDict) -> int:
    """Writes the true `id,label` of every requested id of the train split of
    `config.dataset` to `out` (whole); returns how many. Raises ValueError naming the first
    line whose id is not in the train split."""
    if config.dataset.name == "image_folder":
        raise ValueError(
            "an image folder's requests are answered from a truth CSV: pass "
            "--truth=FOLDER/unlabeled_truth.csv (path,label), or label the requested files "
            "by hand as a path,label CSV (label = class folder name)."
        )
    labels = data.load_dataset(config).train_labels
    header, rows = read_csv_table(requests_csv, ("id",))
    answers = []
    for line, row in rows:
        text = row[header.index("id")].strip()
        if not text.isdecimal() or int(text) >= len(labels):
            raise ValueError(
                f"{requests_csv} line {line}: id {text!r} is not in the train split (ids are "
                f"0..{len(labels) - 1})."
            )
        answers.append((int(text), int(labels[int(text)])))
    active_learning.write_csv(out, ("id", "label"), answers)
    return len(answers)


def answer_from_truth_csv(requests_csv: str, truth_csv: str, out: str) -> int:
    """Writes `path,label` for every `path` of an image folder's requests CSV, the label
    read from `truth_csv` (path,label; paths relative to the unlabeled/ folder beside it);
    returns how many. Raises ValueError naming the first requested path it lacks."""
    unlabeled = os.path.join(os.path.dirname(os.path.abspath(truth_csv)), "unlabeled")
    header, rows = read_csv_table(truth_csv, ("path", "label"))
    path, label = header.index("path"), header.index("label")
    truth = {os.path.normpath(row[path]): row[label].strip() for _, row in rows}
    header, rows = read_csv_table(requests_csv, ("path",))
    answers, path = [], header.index("path")
    for line, row in rows:
        requested = row[path]
        relative = os.path.relpath(os.path.join(os.path.dirname(unlabeled), requested), unlabeled)
        if relative not in truth:
            raise ValueError(
                f"{requests_csv} line {line}: {requested!r} is not in {truth_csv} (its paths "
                f"are relative to {unlabeled})."
            )
        answers.append((requested, truth[relative]))
    active_learning.write_csv(out, ("path", "label"), answers)
    return len(answers)


def _answer(workdir: str | None, truth: str | None, requests: str, out: str) -> None:
    if (workdir is None) == (truth is None):
        raise ValueError("give one of --truth and --workdir.")
    if truth is not None:
        count = answer_from_truth_csv(requests, truth, out)
    else:
        count = answer_requests(requests, out, saved_runs.read_config(workdir))
    logging.info("Wrote %d ground-truth labels to %s (offline evaluation).", count, out)


def command() -> None:
    """comatch-answer-from-truth (setup.py): flags are defined here, so importing defines none."""
    flags.DEFINE_string("workdir", None, "A run whose config.json names the dataset.")
    flags.DEFINE_string("truth", None, "An image folder's path,label truth CSV.")
    flags.DEFINE_string("requests", None, "The requests CSV (an id or a path column).")
    flags.DEFINE_string("out", None, "Where to write the labels CSV (id,label or path,label).")
    commands.run(__name__, _answer, ["requests", "out"])


if __name__ == "__main__":
    command()
