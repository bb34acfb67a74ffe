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


# float32's smallest normal number: the divisor of distribution alignment is floored here so
# that only an exact 0 (a class no batch in the history predicted at all, e.g. one-hot
# probabilities from saturated logits) changes; every positive float32 mean is untouched.
DA_FLOOR = float(jnp.finfo(jnp.float32).tiny)


def distribution_alignment(
    probs: jax.Array, history: jax.Array, count: jax.Array, *, floor: float = DA_FLOOR
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Distribution alignment as in the official CoMatch/ReMixMatch code.

    The batch's mean prediction is pushed into a ring buffer `history` [L, C] of the last L
    batch means (`count` = how many were ever pushed); `probs` [B, C] are divided by the mean
    of the buffer's valid rows (this batch included) and renormalised (github
    salesforce/CoMatch Train_CoMatch.py: prob_list, probs / prob_avg, renormalise).

    Unlike the official float32 code, the mean is floored at `floor` (float32's smallest
    normal number) first: with saturated weak logits (e.g. +-80) float32 softmax is exactly
    one-hot, a class's mean is 0 and the official division is 0 / 0 = NaN in every later
    step. The floor touches only those zeros: a class's mean includes this batch, so a
    probability is at most B L times its class's mean, and confident predictions (means
    near 1e-13) give the official result (to float32 rounding).

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
    strong_logits: jax.Array, pseudo_labels: jax.Array, *, threshold: float | jax.Array
) -> tuple[jax.Array, jax.Array]:
    """L_u^cls, Eq. (9): soft cross-entropy of the strong view against q where max(q) >= tau.

    `threshold` is tau: a scalar (the paper), or class thresholds [C] compared with
    max_c q(c) at argmax_c q (e.g. self_adaptive_thresholds; >= as FreeMatch's official code,
    USB's `max_probs.ge(...)`; a NaN threshold masks its class out). strong_logits [B, C],
    pseudo_labels q [B, C] (a target, no gradient). Averaged over the whole batch (masked
    examples count as zero), as in the official code. Returns (loss [] in nats, mask [B] of
    kept examples, float32).
    """
    pseudo_labels = jax.lax.stop_gradient(pseudo_labels)  # q is a target
    mask = _confident(pseudo_labels, threshold)
    return jnp.mean(soft_cross_entropy(strong_logits, pseudo_labels) * mask), mask


def hard_pseudo_label_loss(
    strong_logits: jax.Array, weak_probs: jax.Array, *, threshold: float | jax.Array
) -> tuple[jax.Array, jax.Array]:
    """CE of the strong view against argmax(p_weak) where max p_weak >= tau: FixMatch's L_u
    (Sohn et al. 2020, Eq. 4) with a scalar `threshold`, FreeMatch's (Wang et al., ICLR 2023,
    Eq. 9) with class thresholds [C] tau_t(argmax p_weak) (freematch_thresholds; >= as the
    official code, USB's `max_probs.ge(...)`, where the paper writes >).

    strong_logits [B, C], weak_probs [B, C] (a target, no gradient). Averaged over the whole
    batch (masked examples count as zero). Returns (loss [] in nats, mask [B] float32).
    """
    weak_probs = jax.lax.stop_gradient(weak_probs)
    mask = _confident(weak_probs, threshold)
    return jnp.mean(_hard_pseudo_label_cross_entropy(strong_logits, weak_probs) * mask), mask


def _confident(probs: jax.Array, threshold: float | jax.Array) -> jax.Array:
    """float32 [B]: 1 where max_c probs(c) >= threshold (a scalar, or [C] taken at argmax_c)."""
    if jnp.ndim(threshold):  # class thresholds, constants (no gradient)
        threshold = jax.lax.stop_gradient(threshold)[jnp.argmax(probs, axis=-1)]
    return (jnp.max(probs, axis=-1) >= threshold).astype(jnp.float32)


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


# ----------------------------------------------------------------------------- adaptive thresholds
def _hard_pseudo_label_cross_entropy(strong_logits: jax.Array, weak_probs: jax.Array) -> jax.Array:
    """Per-example CE of the strong view against argmax(weak_probs) (a target), shape [B]."""
    weak_probs = jax.lax.stop_gradient(weak_probs)
    hard = jax.nn.one_hot(jnp.argmax(weak_probs, axis=-1), weak_probs.shape[-1])
    return soft_cross_entropy(strong_logits, hard)


def freematch_thresholds(
    probs: jax.Array,
    global_threshold: jax.Array,
    class_probs: jax.Array,
    class_histogram: jax.Array,
    *,
    momentum: float,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """FreeMatch's self-adaptive thresholds (Wang et al., ICLR 2023, arXiv 2205.07246): the
    class thresholds tau_t(c), tau_t and p~_t of self_adaptive_thresholds (Eq. 6-8) on the
    weak view's probabilities `probs` [B, C], and h~_t = lambda h~_{t-1} + (1 - lambda)
    Hist(argmax_c p_b) / B (Eq. 10), the histogram EMA the fairness term needs
    (`class_histogram` [C]). The paper starts tau_0, p~_0 (and h~_0 here) at 1/C; the
    official code (USB) starts them at 1, which keeps the mask near empty over the first
    several hundred steps at momentum 0.999. Returns (class thresholds [C], tau_t [], p~_t
    [C], h~_t [C]), float32; NaN in `probs` or the state propagates."""
    probs = jax.lax.stop_gradient(probs.astype(jnp.float32))
    num_classes = probs.shape[-1]
    thresholds, global_threshold, class_probs = self_adaptive_thresholds(
        probs, global_threshold, class_probs, momentum=momentum
    )
    histogram = jnp.mean(jax.nn.one_hot(jnp.argmax(probs, axis=-1), num_classes), axis=0)
    class_histogram = momentum * class_histogram + (1.0 - momentum) * histogram
    return thresholds, global_threshold, class_probs, class_histogram


def self_adaptive_thresholds(
    probs: jax.Array, global_threshold: jax.Array, class_probs: jax.Array, *, momentum: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """FreeMatch's self-adaptive threshold rule (Wang et al., ICLR 2023, Eq. 6-8), alone.

    probs [B, C] float (the pseudo-label distributions, targets: no gradient),
    global_threshold tau_{t-1} [], class_probs p~_{t-1} [C], momentum lambda in [0, 1):
      tau_t    = lambda tau_{t-1}  + (1 - lambda) mean_b max_c p_b(c)
      p~_t(c)  = lambda p~_{t-1}(c) + (1 - lambda) mean_b p_b(c)
      tau_t(c) = p~_t(c) / max_c' p~_t(c') * tau_t
    updated with this batch first (official order). Returns (class thresholds tau_t(c) [C],
    tau_t [], p~_t [C]), all float32. Used by FreeMatch (freematch_thresholds) and by
    CoMatch's comatch.threshold_rule='freematch' on the memory-smoothed pseudo-labels.
    """
    probs = jax.lax.stop_gradient(probs.astype(jnp.float32))
    global_threshold = momentum * global_threshold + (1.0 - momentum) * jnp.mean(
        jnp.max(probs, axis=-1)
    )
    class_probs = momentum * class_probs + (1.0 - momentum) * jnp.mean(probs, axis=0)
    thresholds = class_probs / jnp.max(class_probs) * global_threshold
    return thresholds, global_threshold, class_probs


def _inverse_or_zero(x: jax.Array) -> jax.Array:
    """1 / x where x is at least the dtype's smallest normal number, else 0 (the official
    code's inf -> 0, extended to denormals: a never-predicted class's histogram EMA decays
    as lambda^t towards the denormals, whose reciprocal overflows to inf on a device that
    keeps them, and inf / inf = NaN downstream). No inf is made in either branch."""
    usable = x >= jnp.finfo(x.dtype).tiny
    return jnp.where(usable, 1.0 / jnp.where(usable, x, 1.0), 0.0)


def freematch_fairness_loss(
    strong_logits: jax.Array,
    mask: jax.Array,
    class_probs: jax.Array,
    class_histogram: jax.Array,
) -> jax.Array:
    """FreeMatch's self-adaptive fairness L_f (Wang et al., ICLR 2023, Eq. 11-12).

    Over the kept examples (mask [B]), p_bar = the mean of the strong view's probabilities
    Q_b and h_bar = the histogram of argmax Q_b (normalised) (Eq. 11); with p~_t =
    `class_probs` [C] and h~_t = `class_histogram` [C] (the EMAs of freematch_thresholds,
    this step's):
      L_f = -H(SumNorm(p~_t / h~_t), SumNorm(p_bar / h_bar)),  H(x, y) = -sum_c x_c log y_c,
    (Eq. 12) i.e. sum_c x_c log y_c. Division by a zero histogram entry gives 0 (official
    code; here also by an entry below the dtype's smallest normal number, see
    _inverse_or_zero) and log gets +1e-12 (official code); 1/h are constants (no gradient),
    the gradient flows through p_bar. 0 when no example is kept. strong_logits [B, C] float
    -> [] float32 (nats, <= 0). NaN only from NaN inputs, or an all-zero p~_t / h~_t ratio
    (0 / 0 SumNorm), which the EMAs from 1/C cannot reach.
    """
    mask = jax.lax.stop_gradient(mask.astype(jnp.float32))
    num_classes = strong_logits.shape[-1]
    kept = jnp.sum(mask)
    safe_kept = jnp.maximum(kept, 1.0)
    probs = jax.nn.softmax(strong_logits.astype(jnp.float32), axis=-1)
    mean_probs = jnp.sum(probs * mask[:, None], axis=0) / safe_kept
    one_hot = jax.nn.one_hot(jnp.argmax(probs, axis=-1), num_classes)
    histogram = jax.lax.stop_gradient(jnp.sum(one_hot * mask[:, None], axis=0) / safe_kept)
    target = class_probs * _inverse_or_zero(class_histogram)
    target = jax.lax.stop_gradient(target / jnp.sum(target))
    modulated = mean_probs * _inverse_or_zero(histogram)
    modulated = modulated / jnp.maximum(jnp.sum(modulated), 1e-30)
    loss = jnp.sum(target * jnp.log(modulated + 1e-12))
    return jnp.where(kept > 0, loss, 0.0)


SOFTMATCH_VARIANCE_FLOOR = 1e-12  # softmatch_weights' floor on sigma_t^2


def softmatch_gaussian(
    probs: jax.Array, mean: jax.Array, variance: jax.Array, *, momentum: float
) -> tuple[jax.Array, jax.Array]:
    """SoftMatch's Gaussian estimates (Chen et al., ICLR 2023, arXiv 2301.10921, section
    'Gaussian Function for Sample Weighting'; the official code's SoftMatchWeightingHook):
      mu_t      = m mu_{t-1}      + (1 - m) mean_b max_c p_b(c)
      sigma_t^2 = m sigma_{t-1}^2 + (1 - m) B/(B-1) var_b max_c p_b(c)  (unbiased)
    probs [B, C] float (a target, no gradient), mean [], variance [] (confidences, unitless),
    momentum m in [0, 1). The paper (and code) start from mu_0 = 1/C, sigma_0^2 = 1.
    Returns (mu_t, sigma_t^2), float32. Raises ValueError for B < 2 (the unbiased variance
    of one value is 0 / 0 = NaN; config validation asks batch_size * mu >= 2 up front).
    sigma_t^2 may be 0 (momentum 0, equal confidences): softmatch_weights floors it.
    """
    if probs.shape[0] < 2:
        raise ValueError(
            f"softmatch_gaussian needs a batch of at least 2 (an unbiased variance), "
            f"got probs of shape {probs.shape}"
        )
    confidence = jnp.max(jax.lax.stop_gradient(probs.astype(jnp.float32)), axis=-1)
    mean = momentum * mean + (1.0 - momentum) * jnp.mean(confidence)
    variance = momentum * variance + (1.0 - momentum) * jnp.var(confidence, ddof=1)
    return mean, variance


def softmatch_weights(
    probs: jax.Array,
    mean: jax.Array,
    variance: jax.Array,
    *,
    lambda_max: float = 1.0,
    n_sigma: float = 1.0,
) -> jax.Array:
    """SoftMatch's truncated Gaussian sample weights (Chen et al., ICLR 2023, section
    'Gaussian Function for Sample Weighting'):
      lambda(p) = lambda_max exp(-(max p - mu_t)^2 / (2 sigma_t^2 / n_sigma^2)) if max p < mu_t,
                  lambda_max otherwise.
    n_sigma = 1 is the paper's equation; the official code (USB) uses n_sigma = 2 (a Gaussian
    half as wide). probs [B, C] float (a target), mean [], variance [] (softmatch_gaussian)
    -> weights [B] float32 in [0, lambda_max]. sigma_t^2 is floored at
    SOFTMATCH_VARIANCE_FLOOR (1e-12; the official code has no floor): with momentum 0 and a
    batch of equal confidences sigma_t^2 = 0 and the official 0 / 0 is NaN; floored, a
    confidence at mu_t weighs lambda_max and one below it ~0. NaN only from NaN inputs.
    """
    confidence = jnp.max(jax.lax.stop_gradient(probs.astype(jnp.float32)), axis=-1)
    gap = jnp.minimum(confidence - mean, 0.0)
    variance = jnp.maximum(variance, SOFTMATCH_VARIANCE_FLOOR)
    return lambda_max * jnp.exp(-(gap**2) / (2.0 * variance / n_sigma**2))


def uniform_alignment(
    probs: jax.Array, class_mean: jax.Array, count: jax.Array, *, momentum: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """SoftMatch's uniform alignment (Chen et al., ICLR 2023, its uniform alignment section):
    UA(p) = Normalize(p * u(C) / E[p]), u(C) = 1/C.

    E[p] = `class_mean` [C] is the EMA (momentum m in [0, 1)) of the batch's mean prediction
    over the steps, updated with this batch first; its first value is the first batch's mean
    (`count` [] int = updates so far = 0), as in the official code (USB DistAlignEMAHook).
    probs [B, C] float (a target, no gradient). Returns (aligned probs [B, C] float32, new
    class_mean [C], count + 1). E[p] is floored at DA_FLOOR (float32's smallest normal
    number) in the division, as distribution_alignment (USB's dist_align adds 1e-6 instead):
    a class whose probability is exactly 0 across the first batch (saturated logits) would
    otherwise give 0 / 0 = NaN weights, mu_t and sigma_t^2 from then on. Every positive
    E[p] is untouched.
    """
    probs = jax.lax.stop_gradient(probs.astype(jnp.float32))
    batch_mean = jnp.mean(probs, axis=0)
    class_mean = jnp.where(
        count == 0, batch_mean, momentum * class_mean + (1 - momentum) * batch_mean
    )
    aligned = probs / probs.shape[-1] / jnp.maximum(class_mean, DA_FLOOR)
    return aligned / jnp.sum(aligned, axis=-1, keepdims=True), class_mean, count + 1


def weighted_hard_pseudo_label_loss(
    strong_logits: jax.Array, weak_probs: jax.Array, weights: jax.Array
) -> jax.Array:
    """SoftMatch's L_u (Chen et al., ICLR 2023: the unified sample-weighted L_u of its
    quantity-quality trade-off section, with the truncated Gaussian weights):
    mean_b lambda_b CE(strong_b, argmax p_weak_b).

    strong_logits [B, C] float; weak_probs [B, C] and weights [B] (softmatch_weights) are
    targets (no gradient); the pseudo-label is argmax of the raw p (the official code's, not
    the aligned p). Averaged over the whole batch. Returns the loss [] float32 in nats."""
    weights = jax.lax.stop_gradient(weights)
    return jnp.mean(_hard_pseudo_label_cross_entropy(strong_logits, weak_probs) * weights)


# ----------------------------------------------------------------------------- open-set
def labeled_similarity_weights(
    embeddings: jax.Array,
    reference_embeddings: jax.Array,
    reference_mask: jax.Array,
    *,
    n_sigma: float = 2.0,
) -> jax.Array:
    """Weights that play down unlabeled images unlike every labeled image (likely of no
    known class), for CoMatch's L_u^cls (comatch.unknown_weighting).

    s_b = max_k z_b . r_k, the cosine similarity of each unlabeled image's L2-normalised
    embedding z_b (`embeddings` [B, D]) to its most similar labeled embedding r_k among the
    rows of `reference_embeddings` [M, D] where `reference_mask` [M] is True: the kNN
    in-distribution score of Sun et al. (ICML 2022, arXiv 2204.06507) with k = 1. The weight
    is SoftMatch's truncated Gaussian (Chen et al., ICLR 2023; n_sigma = 2 as its official
    code) over s, with this batch's mean mu and variance sigma^2, instead of the confidence:
      w_b = 1 where s_b >= mu,  exp(-(s_b - mu)^2 / (2 sigma^2 / n_sigma^2)) below,
    so the images least like a labeled one weigh least, with no threshold to tune; sigma^2
    is floored at SOFTMATCH_VARIANCE_FLOOR. Needs one True in `reference_mask`. Returns
    [B] float32 in (0, 1], a target (no gradient). IOMatch and OpenMatch drop likely outliers
    from the pseudo-label loss with a learned one-vs-all detector instead.
    """
    embeddings = jax.lax.stop_gradient(embeddings.astype(jnp.float32))
    references = jax.lax.stop_gradient(reference_embeddings.astype(jnp.float32))
    similarity = jnp.where(reference_mask[None, :], embeddings @ references.T, -jnp.inf)
    nearest = jnp.max(similarity, axis=-1)
    gap = jnp.minimum(nearest - jnp.mean(nearest), 0.0)
    variance = jnp.maximum(jnp.var(nearest), SOFTMATCH_VARIANCE_FLOOR)
    return jnp.exp(-(gap**2) / (2.0 * variance / n_sigma**2))
