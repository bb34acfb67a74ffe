"""A saved run's EMA model, the one evaluation reports, as the commands use it, and its
unknown score: how likely an image is of none of the run's classes."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import numpy as np

from comatch_jax.commands import active_learning
from comatch_jax.core import evaluation, unknown_scores
from comatch_jax.data import pipeline
from comatch_jax.trainer import saved_runs

# The default score: nearest_labeled on the pooled features had the best mean AUROC of the
# scores on the open-set benchmark (experiments/open_set.py, experiments/RESULTS.md).
UNKNOWN_SCORE = "nearest_labeled"
THRESHOLD_FILE = "unknown_threshold.json"  # in the workdir: the threshold last picked
Predictor = Callable[[np.ndarray], dict[str, np.ndarray]]


def variables(run: saved_runs.TrainedRun) -> dict[str, Any]:
    """The EMA model's params and BatchNorm statistics."""
    return {"params": run.state.ema_params, "batch_stats": run.state.ema_batch_stats}


def predictor(
    run: saved_runs.TrainedRun, batch_size: int = 1000, progress: bool = True
) -> Predictor:
    """predict(uint8 images [N, H, W, C]) -> {logits, probs, embedding, features}
    (evaluation.predict) with the run's EMA model, compiled once for every call."""
    mean, std = run.config.dataset.mean, run.config.dataset.std
    predict_batch = jax.jit(evaluation.make_predict_fn(run.model, mean, std))
    return lambda images: evaluation.predict(
        predict_batch, variables(run), images, batch_size=batch_size, progress=progress
    )


def feature_maps(run: saved_runs.TrainedRun, image: np.ndarray) -> dict[str, np.ndarray]:
    """evaluation.feature_maps of the EMA model for one uint8 image [H, W, C]."""
    config = run.config.dataset
    return evaluation.feature_maps(run.model, variables(run), image, config.mean, config.std)


class UnknownScorer:
    """scorer(outputs of `predict`) -> the images' unknown scores, float64 [N], higher for an
    image more likely of none of the classes (core.unknown_scores: `score` is one of its
    SCORES; nearest_labeled compares the pooled features with those of data.labeled_images).
    `predict` is predictor(run); `data` is pipeline.prepare_data(run.config), or None for a
    logit score without a threshold. Raises ValueError (one line) for an unknown score."""

    def __init__(
        self,
        run: saved_runs.TrainedRun,
        predict: Predictor,
        data: pipeline.SemiSupervisedData | None,
        score: str = UNKNOWN_SCORE,
    ) -> None:
        if score not in unknown_scores.SCORES:
            choices = ", ".join(unknown_scores.SCORES)
            raise ValueError(f"--unknown_score must be one of {choices}, got {score!r}.")
        self.run, self.predict, self.data, self.score = run, predict, data, score
        nearest = score == "nearest_labeled"
        self.labeled = predict(data.labeled_images)["features"] if nearest else None

    def __call__(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return unknown_scores.compute(
            self.score,
            logits=outputs["logits"],
            embeddings=outputs["features"],
            labeled_embeddings=self.labeled,
        )

    def threshold(self, workdir: str, rate: float) -> float:
        """The threshold T that `rate` of the run's evaluation images (all of known classes)
        score above, i.e. a false-rejection rate of `rate` (unknown_scores.threshold_for_
        rejection_rate). Recorded in workdir/THRESHOLD_FILE {score, rate, step, threshold,
        num_images} and read back while the score, rate and checkpoint step are those asked.
        Raises ValueError (one line) unless 0 <= rate < 1."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"--unknown_rate must be in [0, 1), got {rate}.")
        asked = dict(score=self.score, rate=rate, step=int(self.run.state.step))
        path = os.path.join(workdir, THRESHOLD_FILE)
        if os.path.exists(path):
            with open(path) as f:
                record = json.load(f)
            if all(record.get(key) == value for key, value in asked.items()):
                return float(record["threshold"])
        known = self(self.predict(self.data.test_images))
        threshold = unknown_scores.threshold_for_rejection_rate(known, rate)
        saved_runs.save_json(
            workdir, THRESHOLD_FILE, dict(asked, threshold=threshold, num_images=len(known))
        )
        return threshold


def write_likely_unknown(
    workdir: str,
    run: saved_runs.TrainedRun,
    data: pipeline.SemiSupervisedData,
    rate: float,
    out: str,
) -> np.ndarray:
    """Writes to `out` (CSV, whole) the unlabeled images whose unknown score is above the
    threshold of false-rejection rate `rate` (UnknownScorer.threshold, recorded), highest
    first: `path,unknown_score` (an image folder's files) or `id,unknown_score`. Returns their
    ids (data.unlabeled_ids)."""
    predict = predictor(run)
    scorer = UnknownScorer(run, predict, data)
    threshold = scorer.threshold(workdir, rate)
    scores = scorer(predict(data.unlabeled_images))
    rows = np.flatnonzero((scores > threshold) & (data.unlabeled_ids >= 0))  # ids to name
    rows = rows[np.argsort(-scores[rows], kind="stable")]
    ids, keys, column = data.unlabeled_ids[rows], data.unlabeled_ids[rows].tolist(), "id"
    if data.unlabeled_paths:
        root = os.path.abspath(run.config.dataset.root)
        keys, column = [os.path.join(root, data.unlabeled_paths[i]) for i in ids], "path"
    shown = [f"{score:.6g}" for score in scores[rows]]
    active_learning.write_csv(out, (column, "unknown_score"), zip(keys, shown))
    return ids
