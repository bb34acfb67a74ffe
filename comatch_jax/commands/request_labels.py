"""Asks for labels: ranks a trained run's unlabeled images and writes the top ones as CSV.

  python -m comatch_jax.commands.request_labels --workdir=RUN --budget=40 --strategy=entropy \\
      --out=requests.csv                                  (or: comatch-request-labels ...)

Scores every unlabeled train-split image with the run's EMA model, picks `--budget` of them
with `--strategy` (entropy, margin, least_confidence, random, kcenter; see
comatch_jax.commands.active_learning) and writes them most wanted first, one row each:
`id,predicted_class,score` for a dataset by name (id: the image's index in the train split),
`path,predicted_class,score` for an image folder (path: the file under root/unlabeled/).
predicted_class is a class NAME. The answers, `path,label` (label: a class name) or
`id,label` (label: a class index; offline, comatch_jax.commands.answer_from_truth writes
them), train a new run with `--config.dataset.extra_labels_csv=labels.csv`. With
--unknown_rate=R the images likely of none of the classes (ema_model.likely_unknown) are
not requested: OUT_unknown.csv lists them, most unknown-looking first, to check as junk.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import flags, logging

from comatch_jax import cli, commands
from comatch_jax.commands import active_learning, ema_model
from comatch_jax.data import pipeline
from comatch_jax.trainer import saved_runs

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class LabelRequests:
    """The chosen images, most wanted first."""

    ids: np.ndarray  # train-split indices (image folders: rows of data.unlabeled_paths)
    scores: np.ndarray  # the strategy's score (kcenter: distance to the nearest labeled image)
    predicted_classes: np.ndarray  # class indices


def rank_unlabeled(
    run: saved_runs.TrainedRun,
    data: pipeline.SemiSupervisedData,
    *,
    budget: int,
    strategy: str,
    balance_by_predicted_class: bool = False,
    seed: int = 0,
    batch_size: int = 1000,
) -> LabelRequests:
    """Scores the unlabeled train-split images of `data` with `run` and picks `budget`.

    Images already labeled, and those of an extra unlabeled split (no train-split id), are
    never requested. Raises ValueError (one line) for a budget above what is left.
    """
    active_learning.check_strategy(strategy, balance_by_predicted_class)
    answered = np.concatenate([data.labeled_ids, data.unknown_ids])
    candidates = (data.unlabeled_ids >= 0) & ~np.isin(data.unlabeled_ids, answered)
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
    if np.any(data.unlabeled_ids < 0):
        logging.info(
            "Skipping %d extra unlabeled images: they have no train-split id.",
            int(np.sum(data.unlabeled_ids < 0)),
        )
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
    return LabelRequests(
        ids=data.unlabeled_ids[candidates][chosen],
        scores=scores,
        predicted_classes=np.argmax(outputs["probs"][chosen], -1),
    )


def request_labels(
    workdir: str,
    out: str,
    *,
    budget: int,
    strategy: str = "entropy",
    balance_by_predicted_class: bool = False,
    seed: int = 0,
    batch_size: int = 1000,
    unknown_rate: float | None = None,
) -> LabelRequests:
    """The command: ranks the run's unlabeled images and writes the requests CSV to `out`
    (whole). Raises ValueError / OSError with one line."""
    active_learning.check_strategy(strategy, balance_by_predicted_class)
    if budget <= 0:
        raise ValueError(f"--budget must be positive, got {budget}.")
    run = saved_runs.load_run(workdir)
    data = pipeline.prepare_data(run.config)
    if unknown_rate is not None:  # likely unknown: listed apart, never requested
        unknown_csv = os.path.splitext(out)[0] + "_unknown.csv"
        ids = ema_model.write_likely_unknown(workdir, run, data, unknown_rate, unknown_csv)
        data = dataclasses.replace(data, unknown_ids=np.concatenate([data.unknown_ids, ids]))
    requests = rank_unlabeled(
        run,
        data,
        budget=budget,
        strategy=strategy,
        balance_by_predicted_class=balance_by_predicted_class,
        seed=seed,
        batch_size=batch_size,
    )
    keys = [int(i) for i in requests.ids]
    if data.unlabeled_paths:  # an image folder: name each requested file
        root = os.path.abspath(run.config.dataset.root)
        keys = [os.path.join(root, data.unlabeled_paths[i]) for i in keys]
    names = [run.class_names[c] for c in requests.predicted_classes]
    scores = [f"{float(s):.6g}" for s in requests.scores]
    header = ("path" if data.unlabeled_paths else "id", "predicted_class", "score")
    active_learning.write_csv(out, header, zip(keys, names, scores))
    return requests


def _request_labels() -> None:
    options = "budget strategy balance_by_predicted_class seed batch_size unknown_rate".split()
    requests = request_labels(FLAGS.workdir, FLAGS.out, **{o: FLAGS[o].value for o in options})
    logging.info("Wrote %d label requests (%s) to %s", len(requests.ids), FLAGS.strategy, FLAGS.out)


main = cli.entry_point(_request_labels)


def command() -> None:
    """comatch-request-labels (setup.py): flags are defined here, so importing defines none."""
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
    flags.DEFINE_float(
        "unknown_rate", None, "Set apart images above the threshold this share of val exceed."
    )
    flags.mark_flags_as_required(["workdir", "budget", "out"])
    commands.help_for_console_script(__name__)
    cli.run(main)


if __name__ == "__main__":
    command()
