"""An oracle for OFFLINE EVALUATION ONLY: answers label requests from the ground truth.

  python -m comatch_jax.commands.answer_from_truth --requests=requests.csv --workdir=RUN --out=labels.csv
  python -m comatch_jax.commands.answer_from_truth --requests=requests.csv --config=configs/comatch.py --out=labels.csv

Reads the `id` column of a requests CSV (comatch_jax.commands.request_labels), looks the ids up in the
train split of the run's (or the config's) dataset and writes `id,label`. It stands in for
the person who labels the images, so that the active-learning loop (train, request, label,
retrain) runs unattended on a benchmark whose labels are known. In real use the labels CSV
comes from people, not from this tool.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from comatch_jax.commands import active_learning
from comatch_jax import cli

FLAGS = flags.FLAGS


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run saved in its workdir."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} holds no comatch_jax run (no config.json).")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def ground_truth_labels(
    requests_csv: str, train_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) for the ids of `requests_csv`, from the train split's true labels."""
    ids = active_learning.read_request_ids(requests_csv, num_images=len(train_labels))
    return ids, np.asarray(train_labels)[ids]


def define_flags() -> None:
    """The command-line flags (defined only when run as a program, so importing is free)."""
    config_flags.DEFINE_config_file("config", None, "Config whose dataset to read (or --workdir).")
    flags.DEFINE_string("workdir", None, "A run whose config.json names the dataset (or --config).")
    flags.DEFINE_string("requests", None, "The requests CSV (needs an id column).")
    flags.DEFINE_string("out", None, "Where to write the labels CSV (id,label).")
    flags.mark_flags_as_required(["requests", "out"])


def answer_requests(
    requests_csv: str, out: str, config: ml_collections.ConfigDict, dataset: Any = None
) -> int:
    """The command: writes the ground-truth `id,label` answers to `requests_csv` (whole) for
    the train split of `config.dataset` (or the given `dataset`); returns how many.
    Raises ValueError (one line) for an image folder, which has no ground truth."""
    if config.dataset.name == "image_folder":
        raise ValueError(
            "an image folder has no ground truth to answer requests with: label the "
            "requested files by hand as a path,label CSV (label = class folder name), e.g. "
            "copy the path column of the requests CSV and add a label column."
        )
    if dataset is None:
        from comatch_jax import data as datasets  # imports TensorFlow lazily, only to read files

        dataset = datasets.load_dataset(config.dataset)
    ids, labels = ground_truth_labels(requests_csv, dataset.train_labels)
    active_learning.write_labels_csv(out, ids, labels)
    return len(ids)


def _oracle() -> None:
    if (FLAGS.config is None) == (FLAGS.workdir is None):
        raise ValueError("give exactly one of --config and --workdir.")
    config = FLAGS.config if FLAGS.config is not None else read_run_config(FLAGS.workdir)
    count = answer_requests(FLAGS.requests, FLAGS.out, config)
    logging.info(
        "Oracle: wrote %d ground-truth labels to %s (offline evaluation).", count, FLAGS.out
    )


main = cli.entry_point(_oracle)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
