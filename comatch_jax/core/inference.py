"""Batched, jitted inference with a trained run's EMA model (no TensorFlow).

`predict` maps uint8 images to class probabilities, CoMatch embeddings and pooled features,
in fixed-size batches (the last one padded, so one compilation serves every batch), with a
progress line on long passes. `feature_maps` returns the convolution outputs for one image.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from comatch_jax.core import train_step

if TYPE_CHECKING:
    from comatch_jax.trainer.saved_runs import TrainedRun

# Seconds between two progress lines of a long pass.
_PROGRESS_EVERY_S = 5.0


def ema_variables(run: TrainedRun) -> dict[str, Any]:
    """The EMA model's variables, the ones evaluation reports."""
    return {"params": run.state.ema_params, "batch_stats": run.state.ema_batch_stats}


def make_predict_fn(model: nn.Module, mean: Any, std: Any):
    """(variables, uint8 images [B, H, W, C]) -> {probs, embedding, features}, eval mode."""

    def predict_batch(variables, images):
        outputs = model.apply(variables, train_step.preprocess(images, mean, std), train=False)
        return {
            "probs": jax.nn.softmax(outputs["logits"], axis=-1),
            "embedding": outputs["embedding"],
            "features": outputs["features"],
        }

    return predict_batch


def _progress_bar(done: int, total: int, start: float, width: int = 30) -> str:
    filled = int(width * done / max(total, 1))
    elapsed = time.time() - start
    rate = done / max(elapsed, 1e-9)
    eta = (total - done) / max(rate, 1e-9)
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} images "
        f"| {rate:.0f} img/s | ETA {eta:.0f} s"
    )


def predict(
    run: TrainedRun, images: np.ndarray, batch_size: int = 1000, progress: bool = True
) -> dict[str, np.ndarray]:
    """Runs the EMA model of `run` over uint8 `images` [N, H, W, C].

    Returns numpy `probs` [N, num_classes], `embedding` [N, low_dim] (unit norm) and
    `features` [N, F]. `progress` logs a bar every few seconds on long passes.
    """
    config = run.config
    return predict_with(
        run.model,
        ema_variables(run),
        images,
        mean=config.dataset.mean,
        std=config.dataset.std,
        batch_size=batch_size,
        progress=progress,
    )


def predict_with(
    model: nn.Module,
    variables: dict[str, Any],
    images: np.ndarray,
    *,
    mean: Any,
    std: Any,
    batch_size: int = 1000,
    progress: bool = True,
    predict_batch: Any = None,
) -> dict[str, np.ndarray]:
    """`predict` for any model variables (e.g. during training). `predict_batch` may be a
    jitted make_predict_fn(...) to reuse across calls."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"predict needs uint8 images [N, H, W, C], got {images.dtype} {images.shape}."
        )
    predict_batch = predict_batch or jax.jit(make_predict_fn(model, mean, std))
    total = len(images)
    batch_size = min(batch_size, max(total, 1))
    chunks: list[dict[str, np.ndarray]] = []
    start = last_report = time.time()
    for first in range(0, total, batch_size):
        batch = images[first : first + batch_size]
        real = len(batch)
        if real < batch_size:  # pad so every batch has the compiled shape
            padding = np.zeros((batch_size - real, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, padding])
        outputs = jax.device_get(predict_batch(variables, batch))
        chunks.append({name: value[:real] for name, value in outputs.items()})
        done = first + real
        if progress and (time.time() - last_report > _PROGRESS_EVERY_S or done == total):
            last_report = time.time()
            logging.info("scoring %s", _progress_bar(done, total, start))
    if not chunks:
        raise ValueError("predict got no images.")
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def feature_maps(run: TrainedRun, image: np.ndarray) -> dict[str, np.ndarray]:
    """The output of every convolution of the EMA model's encoder (backbone) for one uint8
    image [H, W, C], in forward order: {module path in the backbone: [h, w, channels]}."""
    config = run.config
    inputs = train_step.preprocess(np.asarray(image)[None], config.dataset.mean, config.dataset.std)
    _, state = run.model.apply(
        ema_variables(run),
        inputs,
        train=False,
        capture_intermediates=lambda module, method_name: isinstance(module, nn.Conv)
        and method_name == "__call__",
        mutable=["intermediates"],
    )
    maps: dict[str, np.ndarray] = {}

    def collect(tree: Any, path: tuple[str, ...]) -> None:
        for key, value in tree.items():  # flax keeps creation order, i.e. forward order
            if key == "__call__":
                maps["/".join(path)] = np.asarray(value[0][0], np.float32)
            else:
                collect(value, path + (key,))

    captured = state["intermediates"]
    collect(captured.get("backbone", captured), ())  # the encoder, without any head
    return maps
