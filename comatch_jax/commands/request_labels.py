"""Asks for labels: ranks a trained run's unlabeled images and writes the top ones as CSV.

  python -m comatch_jax.commands.request_labels --workdir=RUN --budget=40 --strategy=entropy \\
      --out=requests.csv

Scores every unlabeled train-split image with the run's EMA model, picks `--budget` of them
with `--strategy` (entropy, margin, least_confidence, random, kcenter; see
comatch_jax.commands.active_learning) and writes `id,score,predicted_class,predicted_class_name`, the
most wanted first. Once labeled (`id,label`; offline, comatch_jax.commands.answer_from_truth fills them in), the
answers train a new run with `--config.dataset.extra_labels_csv=labels.csv`.

Image-folder runs add a `path` column (the file under root/unlabeled/); their answers are a
`path,label` CSV (label = class folder name or index), passed the same way.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import flags, logging

from comatch_jax.commands import active_learning
from comatch_jax import cli
from comatch_jax.core import inference
from comatch_jax.trainer import saved_runs as runs
from comatch_jax.data import pipeline as training_data

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class LabelRequests:
    """The chosen images, most wanted first."""

    ids: np.ndarray  # train-split indices
    scores: np.ndarray  # the strategy's score (kcenter: distance to the nearest labeled image)
    predicted_classes: np.ndarray


def rank_unlabeled(
    run: runs.TrainedRun,
    data: training_data.SemiSupervisedData,
    *,
    budget: int,
    strategy: str,
    balance_by_predicted_class: bool = False,
    seed: int = 0,
    batch_size: int = 1000,
) -> LabelRequests:
    """Scores the unlabeled train-split images of `data` with `run` and picks `budget`.

    Images of an extra unlabeled split have no train-split id and cannot be requested.
    """
    active_learning.check_strategy(strategy, balance_by_predicted_class)
    candidates = (data.unlabeled_ids >= 0) & ~np.isin(data.unlabeled_ids, data.labeled_ids)
    if not candidates.any():
        raise ValueError(
            "No unlabeled train-split image is left to request: every one is already labeled "
            "(e.g. through dataset.extra_labels_csv); there is nothing to ask for."
        )
    if budget <= 0 or budget > int(candidates.sum()):
        raise ValueError(
            f"--budget must be in 1..{int(candidates.sum())} (the unlabeled train-split "
            f"images), got {budget}."
        )
    skipped = int(np.sum(data.unlabeled_ids < 0))
    if skipped:
        logging.info("Skipping %d extra unlabeled images: they have no train-split id.", skipped)
    ids = data.unlabeled_ids[candidates]
    outputs = inference.predict(run, data.unlabeled_images[candidates], batch_size)
    labeled_embeddings = None
    if strategy == "kcenter":
        labeled_embeddings = inference.predict(run, data.labeled_images, batch_size)["embedding"]
    chosen = active_learning.select(
        strategy,
        probs=outputs["probs"],
        budget=budget,
        embeddings=outputs["embedding"],
        labeled_embeddings=labeled_embeddings,
        balance_by_predicted_class=balance_by_predicted_class,
        seed=seed,
    )
    if strategy == "kcenter":
        scores = active_learning.distance_to_nearest(
            outputs["embedding"][chosen], labeled_embeddings
        )
    else:
        scores = active_learning.strategy_scores(strategy, outputs["probs"], seed)[chosen]
    return LabelRequests(
        ids=ids[chosen], scores=scores, predicted_classes=np.argmax(outputs["probs"][chosen], -1)
    )


def define_flags() -> None:
    """The command-line flags (defined only when run as a program, so importing is free)."""
    flags.DEFINE_string("workdir", None, "Workdir of a trained run.")
    flags.DEFINE_integer("budget", None, "How many labels to request.")
    flags.DEFINE_string("strategy", "entropy", f"One of {', '.join(active_learning.STRATEGIES)}.")
    flags.DEFINE_bool(
        "balance_by_predicted_class",
        False,
        "Take the requests round-robin over predicted classes (e.g. entropy within class).",
    )
    flags.DEFINE_integer("seed", 0, "Seed of the random strategy.")
    flags.DEFINE_string("out", None, "Where to write the requests CSV.")
    flags.DEFINE_integer("batch_size", 1000, "Images per inference batch.")
    flags.mark_flags_as_required(["workdir", "budget", "out"])


def request_labels(
    workdir: str,
    out: str,
    *,
    budget: int,
    strategy: str = "entropy",
    balance_by_predicted_class: bool = False,
    seed: int = 0,
    batch_size: int = 1000,
) -> LabelRequests:
    """The command: ranks the run's unlabeled images and writes the requests CSV to `out`
    (whole; image-folder runs add each file's absolute path, quoted as the csv module does,
    so any file name round-trips). Raises ValueError / OSError with one line."""
    active_learning.check_strategy(strategy, balance_by_predicted_class)
    if budget <= 0:
        raise ValueError(f"--budget must be positive, got {budget}.")
    run = runs.load_run(workdir)
    data = training_data.prepare_data(run.config)
    requests = rank_unlabeled(
        run,
        data,
        budget=budget,
        strategy=strategy,
        balance_by_predicted_class=balance_by_predicted_class,
        seed=seed,
        batch_size=batch_size,
    )
    paths = None
    if data.unlabeled_paths:  # an image folder: name each requested file
        root = os.path.abspath(run.config.dataset.root)
        paths = [os.path.join(root, data.unlabeled_paths[i]) for i in requests.ids]
    active_learning.write_requests_csv(
        out, requests.ids, requests.scores, requests.predicted_classes, run.class_names, paths=paths
    )
    return requests


def _request_labels() -> None:
    requests = request_labels(
        FLAGS.workdir,
        FLAGS.out,
        budget=FLAGS.budget,
        strategy=FLAGS.strategy,
        balance_by_predicted_class=FLAGS.balance_by_predicted_class,
        seed=FLAGS.seed,
        batch_size=FLAGS.batch_size,
    )
    logging.info("Wrote %d label requests (%s) to %s", len(requests.ids), FLAGS.strategy, FLAGS.out)


main = cli.entry_point(_request_labels)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
