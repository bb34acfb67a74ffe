"""Losses and pseudo-label machinery of CoMatch (Li, Xiong, Hoi 2021, arXiv 2011.11183).

Every function is pure: arrays in, arrays out, no state. Equation numbers refer to the
CoMatch paper; where the paper and the official implementation (salesforce/CoMatch) differ
in a detail, the official semantics are followed and the docstring says so.

Shapes: B = batch, C = classes, D = embedding size, K = queue size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_LOG_EPS = 1e-7  # the official code's epsilon inside log(W^z)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of integer `labels` [B] under `logits` [B, C] (the L_x term)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example cross-entropy -sum_c targets_c log softmax(logits)_c, shape [B]."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(targets * log_probs, axis=-1)


DA_FLOOR = 1e-12


def distribution_alignment(
    probs: jax.Array, history: jax.Array, count: jax.Array, *, floor: float = DA_FLOOR
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Distribution alignment as in the official CoMatch/ReMixMatch code.

    The batch's mean prediction is pushed into a ring buffer `history` [L, C] of the last L
    batch means (`count` = how many were ever pushed); `probs` [B, C] are divided by the mean
    of the buffer's valid rows (this batch included) and renormalised (github
    salesforce/CoMatch Train_CoMatch.py: prob_list, probs / prob_avg, renormalise).

    Unlike the official float32 code, the mean is floored at `floor` (1e-12) first: with
    saturated weak logits (e.g. +-80) float32 softmax is exactly one-hot, a class's mean
    is 0 and the official division is 0 / 0 = NaN in every later step. A class whose mean
    is above the floor is untouched, so ordinary inputs give the official result (to
    float32 rounding); a row always keeps a positive sum (its largest probability's class
    has a mean of at least that probability / (B L)).

    Returns (aligned probs [B, C] float32, new history, new count).
    """
    length = history.shape[0]
    history = history.at[count % length].set(jnp.mean(probs, axis=0))
    count = count + 1
    valid = (jnp.arange(length) < count)[:, None]
    average = jnp.sum(jnp.where(valid, history, 0.0), axis=0) / jnp.minimum(count, length)
    aligned = probs / jnp.maximum(average, floor)
    aligned = aligned / jnp.sum(aligned, axis=-1, keepdims=True)
    return aligned, history, count


def memory_smoothed_pseudo_labels(
    probs: jax.Array,
    embeddings: jax.Array,
    queue_embeddings: jax.Array,
    queue_probs: jax.Array,
    *,
    alpha: float,
    temperature: float,
) -> jax.Array:
    """Memory-smoothed pseudo-labels, Eq. (3)-(4).

    q_b = alpha p_b + (1 - alpha) sum_k a_bk p_k,  a_bk = softmax_k(z_b . z_k / t),
    where (z_k, p_k) are the K queue entries. probs [B, C], embeddings [B, D],
    queue_embeddings [K, D], queue_probs [K, C] -> [B, C].
    """
    affinity = jax.nn.softmax(embeddings @ queue_embeddings.T / temperature, axis=-1)
    return alpha * probs + (1.0 - alpha) * affinity @ queue_probs


def pseudo_label_graph(pseudo_labels: jax.Array, *, threshold: float) -> jax.Array:
    """Pseudo-label graph W^q, Eq. (5) with the paper's self-loop and threshold T.

    W_bj = q_b . q_j with W_bb = 1, entries below `threshold` zeroed, rows normalised
    to sum to one. pseudo_labels [B, C] -> [B, B].
    """
    graph = pseudo_labels @ pseudo_labels.T
    graph = jnp.where(jnp.eye(graph.shape[0], dtype=bool), 1.0, graph)
    graph = jnp.where(graph >= threshold, graph, 0.0)
    return graph / jnp.sum(graph, axis=-1, keepdims=True)


def embedding_graph(
    embeddings: jax.Array, other_embeddings: jax.Array, *, temperature: float
) -> jax.Array:
    """Embedding graph W^z, Eq. (6)-(7): row-normalised exp(z_b . z'_j / t), shape [B, B].

    `embeddings` and `other_embeddings` [B, D] are the two strong views' L2-normalised
    projections (the official code uses the strong-to-strong similarity, no self pairs).
    """
    return jax.nn.softmax(embeddings @ other_embeddings.T / temperature, axis=-1)


def graph_contrastive_loss(target_graph: jax.Array, similarity_graph: jax.Array) -> jax.Array:
    """L_u^ctr, Eq. (8): mean over rows of the cross-entropy H(W^q_b, W^z_b).

    `target_graph` is W^q (a target: no gradient flows into it), `similarity_graph` W^z.
    The official code's 1e-7 inside the log is kept.
    """
    target_graph = jax.lax.stop_gradient(target_graph)  # W^q is a target, Eq. (8)
    per_row = -jnp.sum(target_graph * jnp.log(similarity_graph + _LOG_EPS), axis=-1)
    return jnp.mean(per_row)


def masked_pseudo_label_loss(
    strong_logits: jax.Array, pseudo_labels: jax.Array, *, threshold: float
) -> tuple[jax.Array, jax.Array]:
    """L_u^cls, Eq. (9): soft cross-entropy of the strong view against q where max(q) >= tau.

    Averaged over the whole batch (masked examples count as zero), as in the official code.
    Returns (loss, mask [B] of kept examples as float).
    """
    pseudo_labels = jax.lax.stop_gradient(pseudo_labels)  # q is a target
    mask = (jnp.max(pseudo_labels, axis=-1) >= threshold).astype(jnp.float32)
    return jnp.mean(soft_cross_entropy(strong_logits, pseudo_labels) * mask), mask


def hard_pseudo_label_loss(
    strong_logits: jax.Array, weak_probs: jax.Array, *, threshold: float
) -> tuple[jax.Array, jax.Array]:
    """FixMatch's unlabeled loss: CE of the strong view against argmax(p_weak) where max >= tau.

    Returns (loss averaged over the whole batch, mask [B] as float).
    """
    weak_probs = jax.lax.stop_gradient(weak_probs)  # the weak view's prediction is a target
    mask = (jnp.max(weak_probs, axis=-1) >= threshold).astype(jnp.float32)
    hard = jax.nn.one_hot(jnp.argmax(weak_probs, axis=-1), weak_probs.shape[-1])
    return jnp.mean(soft_cross_entropy(strong_logits, hard) * mask), mask


def enqueue(
    queue: jax.Array, pointer: jax.Array, entries: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Writes `entries` [N, ...] into the ring buffer `queue` [K, ...] at `pointer`.

    Wraps around when the write passes the end (K need not be a multiple of N; if N > K
    only the last K entries stay). Returns (new queue, new pointer = (pointer + N) % K).
    """
    size, count = queue.shape[0], entries.shape[0]
    if count > size:
        entries, pointer, count = entries[-size:], (pointer + count - size) % size, size
    rows = (pointer + jnp.arange(count)) % size
    return queue.at[rows].set(entries.astype(queue.dtype)), (pointer + count) % size


# ----------------------------------------------------------------------------- self-supervised
def barlow_twins_loss(
    embeddings: jax.Array, other_embeddings: jax.Array, *, lambda_offdiag: float
) -> jax.Array:
    """Barlow Twins (Zbontar et al. 2021, Eq. 1-2).

    Each embedding dimension is standardised over the batch; C = z^A_n^T z^B_n / N is the
    cross-correlation matrix [D, D]; L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2.
    """

    def standardise(z):
        z = z.astype(jnp.float32)
        return (z - jnp.mean(z, axis=0)) / jnp.sqrt(jnp.var(z, axis=0) + 1e-5)

    n = embeddings.shape[0]
    correlation = standardise(embeddings).T @ standardise(other_embeddings) / n
    diagonal = jnp.diagonal(correlation)
    on_diagonal = jnp.sum((1.0 - diagonal) ** 2)
    off_diagonal = jnp.sum(correlation**2) - jnp.sum(diagonal**2)
    return on_diagonal + lambda_offdiag * off_diagonal


def nt_xent_loss(
    embeddings: jax.Array, other_embeddings: jax.Array, *, temperature: float
) -> jax.Array:
    """SimCLR's NT-Xent (Chen et al. 2020, Eq. 1) over the 2N views.

    For each of the 2N L2-normalised views, cross-entropy of its positive (the other view of
    the same image) against all 2N - 1 other views, with similarities divided by t; mean
    over the 2N anchors.
    """
    z = jnp.concatenate([embeddings, other_embeddings]).astype(jnp.float32)
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    n = embeddings.shape[0]
    logits = z @ z.T / temperature
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)  # no self-pairs
    positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(log_probs[jnp.arange(2 * n), positives])


def negative_cosine(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """D(p, z) = -mean_b cos(p_b, stop_gradient(z_b)), SimSiam's Eq. 1 with Eq. 3's stop-grad."""
    target = jax.lax.stop_gradient(target)  # SimSiam: the target branch gets no gradient
    p = prediction / jnp.linalg.norm(prediction, axis=-1, keepdims=True)
    z = target / jnp.linalg.norm(target, axis=-1, keepdims=True)
    return -jnp.mean(jnp.sum(p * z, axis=-1))


def simsiam_loss(
    prediction: jax.Array,
    other_prediction: jax.Array,
    projection: jax.Array,
    other_projection: jax.Array,
) -> jax.Array:
    """SimSiam (Chen & He 2021, Eq. 4): L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2."""
    return 0.5 * negative_cosine(prediction, other_projection) + 0.5 * negative_cosine(
        other_prediction, projection
    )


def reconstruction_loss(
    reconstruction_logits: jax.Array, images: jax.Array, *, kind: str
) -> jax.Array:
    """Autoencoder loss between pixel logits and target intensities in [0, 1].

    'mse': mean squared error of sigmoid(logits); 'bce': mean binary cross-entropy.
    """
    images = images.astype(jnp.float32)
    if kind == "mse":
        return jnp.mean((jax.nn.sigmoid(reconstruction_logits) - images) ** 2)
    if kind == "bce":
        return jnp.mean(
            -images * jax.nn.log_sigmoid(reconstruction_logits)
            - (1.0 - images) * jax.nn.log_sigmoid(-reconstruction_logits)
        )
    raise ValueError(f"reconstruction kind must be 'mse' or 'bce', got {kind!r}")
