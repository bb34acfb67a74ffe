"""Answers label requests from the ground truth, for OFFLINE EVALUATION ONLY.

  python -m comatch_jax.commands.answer_from_truth --requests=requests.csv --workdir=RUN \\
      --out=labels.csv                                    (or: comatch-answer-from-truth ...)
  ... --requests=requests.csv --config=configs/comatch.py --out=labels.csv
  ... --requests=requests.csv --truth=FOLDER/unlabeled_truth.csv --out=labels.csv

It stands in for the person who labels the images, so that the active-learning loop (train,
request, label, retrain) runs unattended on a benchmark whose labels are known. In real use
the labels CSV comes from people, not from this tool.
- A dataset by name (--workdir or --config): the `id` column of the requests CSV
  (comatch_jax.commands.request_labels) is looked up in the train split; writes `id,label`
  (label: the class index).
- An image folder (--truth): the `path` column is looked up in a `path,label` CSV whose paths
  are relative to the unlabeled/ folder beside it (as experiments/make_folder_subset.py and
  experiments/open_set.py write FOLDER/unlabeled_truth.csv); writes `path,label` (label: the
  class name as the truth CSV gives it).
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

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
        if not text.isdigit() or int(text) >= len(labels):
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


def _answer(config: Any, workdir: str, truth: str, requests: str, out: str) -> None:
    if sum(value is not None for value in (config, workdir, truth)) != 1:
        raise ValueError("give exactly one of --truth, --workdir and --config.")
    if truth is not None:
        count = answer_from_truth_csv(requests, truth, out)
    else:
        config = config if config is not None else saved_runs.read_config(workdir)
        count = answer_requests(requests, out, config)
    logging.info("Wrote %d ground-truth labels to %s (offline evaluation).", count, out)


def command() -> None:
    """comatch-answer-from-truth (setup.py): flags are defined here, so importing defines none."""
    config_flags.DEFINE_config_file("config", None, "Config whose dataset to read.")
    flags.DEFINE_string("workdir", None, "A run whose config.json names the dataset.")
    flags.DEFINE_string("truth", None, "An image folder's path,label truth CSV.")
    flags.DEFINE_string("requests", None, "The requests CSV (an id or a path column).")
    flags.DEFINE_string("out", None, "Where to write the labels CSV (id,label or path,label).")
    commands.run(__name__, _answer, ["requests", "out"])


if __name__ == "__main__":
    command()
