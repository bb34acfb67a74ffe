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
    """scorer(outputs of `predict`) -> their unknown scores, float64 [N], higher for an image
    more likely of none of the classes: core.unknown_scores' `score` (one of its SCORES),
    nearest_labeled on the pooled features with data.labeled_images as the references.
    `predict` is predictor(run); `data`, prepare_data of the run's config, may be None for a
    logit score without a threshold."""

    def __init__(
        self,
        run: saved_runs.TrainedRun,
        predict: Predictor,
        data: pipeline.SemiSupervisedData | None,
        score: str = UNKNOWN_SCORE,
    ) -> None:
        self.run, self.predict, self.data, self.score = run, predict, data, score
        nearest = score == "nearest_labeled"
        self.labeled = predict(data.labeled_images)["features"] if nearest else None

    def __call__(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        logits, features = outputs["logits"], outputs["features"]
        return unknown_scores.compute(
            self.score, logits=logits, embeddings=features, labeled_embeddings=self.labeled
        )

    def threshold(self, workdir: str, rate: float) -> float:
        """The threshold that `rate` of the run's evaluation images (all of known classes)
        score above (unknown_scores.threshold_for_rejection_rate): recorded in
        workdir/THRESHOLD_FILE, and read back while its score, rate and step are those asked."""
        asked = dict(score=self.score, rate=rate, step=int(self.run.state.step))
        path = os.path.join(workdir, THRESHOLD_FILE)
        if os.path.exists(path):
            with open(path) as f:
                record = json.load(f)
            if asked.items() <= record.items():
                return record["threshold"]
        known = self(self.predict(self.data.test_images))
        threshold = unknown_scores.threshold_for_rejection_rate(known, rate)
        record = dict(asked, threshold=threshold, num_images=len(known))
        saved_runs.save_json(workdir, THRESHOLD_FILE, record)
        return threshold

    def write_likely_unknown(self, workdir: str, rate: float, out: str) -> np.ndarray:
        """Writes to `out` (CSV, whole) the unlabeled images scoring above threshold(workdir,
        rate), highest first: `path,unknown_score` (an image folder's files, whole) or
        `id,unknown_score`. Returns their ids (data.unlabeled_ids)."""
        threshold, data = self.threshold(workdir, rate), self.data
        scores = self(self.predict(data.unlabeled_images))
        rows = np.flatnonzero((scores > threshold) & (data.unlabeled_ids >= 0))  # ids to name
        rows = rows[np.argsort(-scores[rows], kind="stable")]
        ids, keys, column = data.unlabeled_ids[rows], data.unlabeled_ids[rows].tolist(), "id"
        if data.unlabeled_paths:
            root = os.path.abspath(self.run.config.dataset.root)
            keys, column = [os.path.join(root, data.unlabeled_paths[i]) for i in ids], "path"
        shown = [f"{score:.6g}" for score in scores[rows]]
        active_learning.write_csv(out, (column, "unknown_score"), zip(keys, shown))
        return ids
