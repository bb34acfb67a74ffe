"""Frozen-feature evaluation: weighted kNN and a linear probe (pure JAX, no TensorFlow)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


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
    """Multinomial logistic regression on standardised frozen features, full batch, Adam.

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
        grads = jax.grad(loss_fn)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), None

    (params, _), _ = jax.lax.scan(update, (params, tx.init(params)), None, length=steps)
    return params["w"], params["b"], mean, std


def linear_probe_predict(probe, features: np.ndarray) -> jax.Array:
    """Predicted classes of a probe from `fit_linear_probe`."""
    weights, bias, mean, std = probe
    return jnp.argmax(((jnp.asarray(features) - mean) / std) @ weights + bias, axis=-1)
