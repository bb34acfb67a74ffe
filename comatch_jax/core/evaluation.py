"""Test-set evaluation during training: classifier accuracy and NLL, or weighted kNN.

Methods evaluated by their classifier use `evaluate` (a jitted eval step over fixed-size,
padded and masked chunks); self-supervised methods, whose classifier is untrained, use
`knn_evaluate` on frozen features (Wu et al. 2018).
"""

from __future__ import annotations

import jax
import numpy as np

from comatch_jax.core import frozen_feature_probes, inference
from comatch_jax.data import pipeline as training_data


def evaluate(
    eval_step,
    params,
    batch_stats,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    sharding: jax.sharding.Sharding | None = None,
) -> dict[str, float]:
    """Accuracy and mean NLL over the whole set; the last batch is padded and masked.

    With `sharding` (the batch sharding of the mesh) every chunk is split over the devices, so
    in a multi-host run each process evaluates its share of every chunk."""
    totals = {"correct": 0.0, "nll": 0.0, "count": 0.0}
    for start in range(0, len(labels), batch_size):
        chunk_images = images[start : start + batch_size]
        chunk_labels = labels[start : start + batch_size]
        pad = batch_size - len(chunk_labels)
        mask = np.concatenate([np.ones(len(chunk_labels), np.float32), np.zeros(pad, np.float32)])
        if pad:
            chunk_images = np.concatenate(
                [chunk_images, np.zeros((pad, *chunk_images.shape[1:]), chunk_images.dtype)]
            )
            chunk_labels = np.concatenate([chunk_labels, np.zeros(pad, chunk_labels.dtype)])
        chunk = (chunk_images, chunk_labels, mask)
        if sharding is not None:  # the same host values on every process: each keeps its rows
            chunk = jax.device_put(chunk, sharding)
        sums = eval_step(params, batch_stats, *chunk)
        for key, value in jax.device_get(sums).items():
            totals[key] += float(value)
    return {"accuracy": totals["correct"] / totals["count"], "nll": totals["nll"] / totals["count"]}


def knn_evaluate(
    predict_batch, variables, data: training_data.SemiSupervisedData, config
) -> dict[str, float]:
    """Weighted-kNN test accuracy with the labeled images' features as the memory bank."""
    predict = lambda images: inference.predict_with(
        None,
        variables,
        images,
        mean=None,
        std=None,
        batch_size=config.eval_batch_size,
        progress=False,
        predict_batch=predict_batch,
    )["features"]
    predictions = frozen_feature_probes.knn_predict(
        predict(data.labeled_images),
        data.labels,
        predict(data.test_images),
        num_classes=data.num_classes,
        k=config.probe.knn_k,
        temperature=config.probe.knn_temperature,
    )
    return {"accuracy": float(np.mean(np.asarray(predictions) == data.test_labels))}
