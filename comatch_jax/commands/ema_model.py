"""A saved run's EMA model, the one evaluation reports, as the commands use it."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from comatch_jax.core import evaluation
from comatch_jax.trainer import saved_runs


def variables(run: saved_runs.TrainedRun) -> dict[str, Any]:
    """The EMA model's params and BatchNorm statistics."""
    return {"params": run.state.ema_params, "batch_stats": run.state.ema_batch_stats}


def predictor(
    run: saved_runs.TrainedRun, batch_size: int = 1000, progress: bool = True
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """predict(uint8 images [N, H, W, C]) -> {probs, embedding, features} (evaluation.predict)
    with the run's EMA model, compiled once for every call."""
    mean, std = run.config.dataset.mean, run.config.dataset.std
    predict_batch = jax.jit(evaluation.make_predict_fn(run.model, mean, std))
    return lambda images: evaluation.predict(
        predict_batch, variables(run), images, batch_size=batch_size, progress=progress
    )


def feature_maps(run: saved_runs.TrainedRun, image: np.ndarray) -> dict[str, np.ndarray]:
    """evaluation.feature_maps of the EMA model for one uint8 image [H, W, C]."""
    config = run.config.dataset
    return evaluation.feature_maps(run.model, variables(run), image, config.mean, config.std)
