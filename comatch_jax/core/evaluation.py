"""Evaluation and inference on arrays (pure JAX and NumPy; no TensorFlow, no saved runs):
a model's predictions in fixed-size batches (the last one padded, so one compilation serves
every batch), a classifier's test accuracy, weighted kNN and a linear probe on frozen
features (how self-supervised methods are evaluated), and a model's feature maps.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from comatch_jax.core import train_step

PredictFn = Callable[[dict[str, Any], jax.Array], dict[str, jax.Array]]


def make_predict_fn(model: nn.Module, mean: Any, std: Any) -> PredictFn:
    """(variables, uint8 images [B, H, W, C]) -> {logits [B, C], probs [B, C], embedding [B, D],
    features [B, F]}, in eval mode; `mean`, `std` are the data's per-channel statistics in
    [0, 1]."""

    def predict_batch(variables, images):
        outputs = model.apply(variables, train_step.preprocess(images, mean, std), train=False)
        return {
            "logits": outputs["logits"],
            "probs": jax.nn.softmax(outputs["logits"], axis=-1),
            "embedding": outputs["embedding"],
            "features": outputs["features"],
        }

    return predict_batch


def predict(
    predict_batch: PredictFn,
    variables: dict[str, Any],
    images: np.ndarray,
    *,
    batch_size: int = 1000,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Runs `predict_batch` (a jitted make_predict_fn) over uint8 `images` [N, H, W, C].

    Returns NumPy arrays with N rows: `logits`, `probs`, `embedding` (unit norm), `features`.
    `progress` logs a line every 5 seconds. Raises ValueError for no images, images that
    are not uint8 [N, H, W, C], or a batch_size below 1.
    """
    images = np.asarray(images)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if images.dtype != np.uint8 or images.ndim != 4 or not len(images):
        raise ValueError(
            f"predict needs uint8 images [N, H, W, C], got {images.dtype} {images.shape}."
        )
    total, batch_size = len(images), min(batch_size, len(images))
    chunks, start = [], time.time()
    last_report = start
    for first in range(0, total, batch_size):
        batch = images[first : first + batch_size]
        outputs = jax.device_get(predict_batch(variables, _padded(batch, batch_size)))
        chunks.append({name: value[: len(batch)] for name, value in outputs.items()})
        done = first + len(batch)
        if progress and (time.time() - last_report > 5.0 or done == total):
            last_report = time.time()
            rate = done / max(last_report - start, 1e-9)
            logging.info("scored %d/%d images, %.0f images/s", done, total, rate)
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def _padded(chunk: np.ndarray, size: int) -> np.ndarray:
    """`chunk` with rows of zeros appended up to `size` rows: every batch has the compiled
    shape."""
    return np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)])


def evaluate(
    eval_step: Callable[..., dict[str, jax.Array]],
    params: Any,
    batch_stats: Any,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    sharding: jax.sharding.Sharding | None = None,
) -> dict[str, float]:
    """Accuracy and mean NLL over the whole set, in batches of `batch_size` or of the whole
    set where that is smaller (rounded up to a multiple of the devices); the last batch is
    padded and masked.

    `eval_step(params, batch_stats, images, labels, mask)` returns the summed `correct`,
    `nll` and `count` (train_step.make_eval_step). With `sharding` (the batch sharding of the
    mesh) every chunk is split over the devices, so in a multi-host run each process
    evaluates its share of every chunk."""
    totals = {"correct": 0.0, "nll": 0.0, "count": 0.0}
    devices = 1 if sharding is None else len(sharding.device_set)  # a batch splits over them
    batch_size = min(batch_size, max(-(-len(labels) // devices), 1) * devices)
    for start in range(0, len(labels), batch_size):
        real = min(batch_size, len(labels) - start)
        mask = (np.arange(batch_size) < real).astype(np.float32)  # the padding is not counted
        rows = slice(start, start + batch_size)
        chunk = (_padded(images[rows], batch_size), _padded(labels[rows], batch_size), mask)
        if sharding is not None:  # the same host values on every process: each keeps its rows
            chunk = jax.device_put(chunk, sharding)
        sums = eval_step(params, batch_stats, *chunk)
        for key, value in jax.device_get(sums).items():
            totals[key] += float(value)
    return {"accuracy": totals["correct"] / totals["count"], "nll": totals["nll"] / totals["count"]}


@functools.partial(jax.jit, static_argnames=("num_classes", "k"))
def knn_predict(
    train_features: jax.Array,
    train_labels: jax.Array,
    test_features: jax.Array,
    *,
    num_classes: int,
    k: int,
    temperature: float,
) -> jax.Array:
    """Weighted kNN (Wu et al. 2018): cosine similarity, the k nearest training features vote
    for their class with weight exp(sim / temperature). Returns predicted classes [M].
    k is capped at the number of training features."""
    train = train_features / jnp.linalg.norm(train_features, axis=-1, keepdims=True)
    test = test_features / jnp.linalg.norm(test_features, axis=-1, keepdims=True)
    similarity = test @ train.T  # [M, N]
    top_similarity, top_index = jax.lax.top_k(similarity, min(k, train.shape[0]))
    weights = jnp.exp(top_similarity / temperature)
    votes = jax.nn.one_hot(train_labels[top_index], num_classes) * weights[..., None]
    return jnp.argmax(jnp.sum(votes, axis=1), axis=-1)


def knn_evaluate(
    predict_batch: PredictFn,
    variables: dict[str, Any],
    labeled_images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    k: int,
    temperature: float,
    batch_size: int,
) -> dict[str, float]:
    """Weighted-kNN test accuracy, the labeled images' features being the memory bank."""
    features = lambda images: predict(predict_batch, variables, images, batch_size=batch_size)[
        "features"
    ]
    predicted = knn_predict(
        features(labeled_images),
        labels,
        features(test_images),
        num_classes=num_classes,
        k=k,
        temperature=temperature,
    )
    return {"accuracy": float(np.mean(np.asarray(predicted) == test_labels))}


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "seed"))
def fit_linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    steps: int,
    learning_rate: float,
    weight_decay: float,
    seed: int = 0,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Multinomial logistic regression on standardised frozen features, full batch, AdamW.

    Returns (weights [F, C], bias [C], feature mean, feature std) for `linear_probe_predict`.
    """
    features = jnp.asarray(features, jnp.float32)
    mean, std = jnp.mean(features, axis=0), jnp.std(features, axis=0) + 1e-6
    x = (features - mean) / std
    params = {
        "w": 0.01 * jax.random.normal(jax.random.key(seed), (x.shape[1], num_classes)),
        "b": jnp.zeros((num_classes,)),
    }
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)

    def loss_fn(p):
        logits = x @ p["w"] + p["b"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1))

    def update(carry, _):
        p, opt_state = carry
        updates, opt_state = tx.update(jax.grad(loss_fn)(p), opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), None

    (params, _), _ = jax.lax.scan(update, (params, tx.init(params)), None, length=steps)
    return params["w"], params["b"], mean, std


@jax.jit
def linear_probe_predict(probe: tuple[jax.Array, ...], features: np.ndarray) -> jax.Array:
    """Predicted classes [M] of a probe from `fit_linear_probe` for `features` [M, F]."""
    weights, bias, mean, std = probe
    return jnp.argmax(((jnp.asarray(features) - mean) / std) @ weights + bias, axis=-1)


def feature_maps(
    model: nn.Module, variables: dict[str, Any], image: np.ndarray, mean: Any, std: Any
) -> dict[str, np.ndarray]:
    """The output of every convolution of the model's encoder (backbone) for one uint8 image
    [H, W, C], in forward order: {module path in the backbone: float32 [h, w, channels]}."""
    _, state = model.apply(
        variables,
        train_step.preprocess(np.asarray(image)[None], mean, std),
        train=False,
        capture_intermediates=lambda module, method: isinstance(module, nn.Conv)
        and method == "__call__",
        mutable=["intermediates"],
    )
    captured = state["intermediates"]
    convolutions = traverse_util.flatten_dict(captured.get("backbone", captured))  # no heads
    # flax keeps creation order, i.e. forward order; each output is kept as a 1-tuple.
    return {
        "/".join(path[:-1]): np.asarray(out[0][0], np.float32) for path, out in convolutions.items()
    }
