"""Training methods: each is its views, its extra state and its loss over model outputs.

The one train step (train_step.py) makes the views a method names, runs the model once on
all of them, and hands the outputs to the method's loss. A method is one `Method` entry in
METHODS, its loss here, its options in config_lib.base_config and its configs/<name>.py; the
trainer, config validation and the comparison tables (experiments/compare_methods.py) read
the entry, never another loop.

Outputs reach a loss as a dict keyed '<part>_<view>', e.g. 'labeled_weak',
'unlabeled_strong0', each a model output dict (logits, embedding, features, image).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from comatch_jax.core import losses

Outputs = dict[str, dict[str, jax.Array]]
LossFn = Callable[..., tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]]


@dataclasses.dataclass(frozen=True)
class Method:
    """A training method.

    name: the config.method value; configs/<name>.py is its config file.
    labeled_views / unlabeled_views: view slots (names in config.augment) made per part; a
        method with unlabeled views needs config.mu > 0.
    init_state(config, num_classes, embedding_dim) -> the method's extra state pytree
        (carried in TrainState.method_state and checkpointed with it).
    loss(outputs, batch, method_state, config) -> (loss, (new method state, metrics)).
    evaluation: 'classifier' (evaluated by its own classifier) or 'self_supervised' (by kNN
        on frozen features; the classifier is untrained until fine-tuning).
    display_name: its name in comparison tables and figures (METHODS' order is their rows').
    """

    name: str
    labeled_views: tuple[str, ...]
    unlabeled_views: tuple[str, ...]
    init_state: Callable[[ml_collections.ConfigDict, int, int], Any]
    loss: LossFn
    evaluation: str = "classifier"
    display_name: str = ""


def _pseudo_label_accuracy(pseudo_labels: jax.Array, mask: jax.Array, batch: dict) -> jax.Array:
    """Accuracy of the kept pseudo-labels against the (never trained on) true labels."""
    correct = (jnp.argmax(pseudo_labels, axis=-1) == batch["unlabeled_labels"]).astype(jnp.float32)
    return jnp.sum(correct * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ----------------------------------------------------------------------------- supervised
def _no_state(config: ml_collections.ConfigDict, num_classes: int, embedding_dim: int) -> dict:
    return {}


def supervised_loss(outputs: Outputs, batch: dict, method_state: dict, config) -> tuple:
    """Cross-entropy on the labeled weak views only."""
    loss = losses.cross_entropy(outputs["labeled_weak"]["logits"], batch["labels"])
    return loss, (method_state, {"loss_x": loss})


# ----------------------------------------------------------------------------- CoMatch
def init_comatch_state(
    config: ml_collections.ConfigDict, num_classes: int, embedding_dim: int
) -> dict[str, jax.Array]:
    """Memory queue of (embedding, class probability) pairs and the DA history; with
    comatch.threshold_rule='freematch' also FreeMatch's EMAs tau_0 = 1/C (`global_threshold`)
    and p~_0 = 1/C per class (`class_probs`), the paper's start. Fixed-threshold runs carry
    no extra state (their checkpoints keep their structure)."""
    options = config.comatch
    state = {
        "queue_embeddings": jnp.zeros((options.queue_size, embedding_dim), jnp.float32),
        "queue_probs": jnp.zeros((options.queue_size, num_classes), jnp.float32),
        "queue_pointer": jnp.zeros((), jnp.int32),
        "queue_filled": jnp.zeros((), jnp.int32),  # entries written so far, capped at K
        "da_history": jnp.zeros((options.da_length, num_classes), jnp.float32),
        "da_count": jnp.zeros((), jnp.int32),
    }
    if options.threshold_rule == "freematch":
        state["global_threshold"] = jnp.asarray(1.0 / num_classes, jnp.float32)
        state["class_probs"] = jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)
    return state


def enqueue(
    queue: jax.Array, pointer: jax.Array, entries: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Writes `entries` [N, ...] into the ring buffer `queue` [K, ...] at `pointer` (int32),
    CoMatch's memory queue: the official code's `queue[ptr:ptr + N] = entries; ptr = (ptr +
    N) % K` with the wrap-around made explicit (K need not be a multiple of N; if N > K only
    the last K entries stay). Entries are cast to the queue's dtype. Returns (new queue, new
    pointer (pointer + N) % K)."""
    size, count = queue.shape[0], entries.shape[0]
    if count > size:
        entries, pointer, count = entries[-size:], (pointer + count - size) % size, size
    rows = (pointer + jnp.arange(count)) % size
    return queue.at[rows].set(entries.astype(queue.dtype)), (pointer + count) % size


def comatch_loss(outputs: Outputs, batch: dict, state: dict, config) -> tuple:
    """L = L_x + lambda_cls L_u^cls + lambda_ctr L_u^ctr (Eq. 10), official-code semantics.

    The weak unlabeled view gives p (aligned by DA), smoothed with the queue into q once the
    queue is full; q masks and targets the first strong view and builds W^q; the two strong
    views' embeddings build W^z. The queue then receives the weak views' embeddings with
    the aligned, unsmoothed probabilities (unlabeled) and one-hot labels (labeled).

    comatch.threshold_rule: 'fixed' (the paper) keeps q where max q >= comatch.threshold;
    'freematch' (this library's combination, in neither paper) where max q >= tau_t(argmax
    q), FreeMatch's self-adaptive class thresholds (losses.self_adaptive_thresholds) on q,
    starting at 1/C, so a young model learns from its unlabeled images from the first steps.
    The graph's T (comatch.contrast_threshold) stays fixed: it thresholds the similarity
    q_b . q_j of two pseudo-labels, not a confidence, and a T starting at 1/C would join a
    young model's near-uniform q's into wrong positives (W^q's self-loops teach anyway).

    comatch.unknown_weighting (for unlabeled pools holding images of no known class) weighs
    each kept term of L_u^cls by losses.labeled_similarity_weights: images least like any
    labeled image (this batch's, and those in the queue) weigh least. Not in the paper.
    """
    options = config.comatch
    num_classes = outputs["labeled_weak"]["logits"].shape[-1]
    loss_x = losses.cross_entropy(outputs["labeled_weak"]["logits"], batch["labels"])

    # Everything computed from the weak views is a target: no gradient flows through it.
    weak_logits = jax.lax.stop_gradient(outputs["unlabeled_weak"]["logits"])
    weak_embeddings = jax.lax.stop_gradient(outputs["unlabeled_weak"]["embedding"])
    labeled_embeddings = jax.lax.stop_gradient(outputs["labeled_weak"]["embedding"])
    probs = jax.nn.softmax(weak_logits, axis=-1)
    da_history, da_count = state["da_history"], state["da_count"]
    if options.distribution_alignment:
        probs, da_history, da_count = losses.distribution_alignment(probs, da_history, da_count)

    smoothed = losses.memory_smoothed_pseudo_labels(
        probs,
        weak_embeddings,
        state["queue_embeddings"],
        state["queue_probs"],
        alpha=options.alpha,
        temperature=options.temperature,
    )
    queue_size = state["queue_embeddings"].shape[0]
    pseudo_labels = jnp.where(state["queue_filled"] >= queue_size, smoothed, probs)

    adaptive, threshold = {}, options.threshold
    if options.threshold_rule == "freematch":
        # FreeMatch's self-adaptive rule on q (the memory-smoothed pseudo-labels): tau_t(c)
        # replaces the fixed tau of L_u^cls only; W^q keeps its fixed T (contrast_threshold).
        threshold, global_threshold, class_probs = losses.self_adaptive_thresholds(
            pseudo_labels,
            state["global_threshold"],
            state["class_probs"],
            momentum=options.threshold_momentum,
        )
        adaptive = {"global_threshold": global_threshold, "class_probs": class_probs}
    strong_logits = outputs["unlabeled_strong0"]["logits"]
    loss_u, mask = losses.masked_pseudo_label_loss(
        strong_logits, pseudo_labels, threshold=threshold
    )
    if options.unknown_weighting:
        # References: this batch's labeled images and the queue's one-hot entries (the labeled
        # images it holds; an unlabeled entry is one-hot only if its prediction saturated).
        references = jnp.concatenate([labeled_embeddings, state["queue_embeddings"]])
        is_labeled = jnp.concatenate(
            [jnp.ones(len(labeled_embeddings), bool), jnp.max(state["queue_probs"], -1) == 1.0]
        )
        mask = mask * losses.labeled_similarity_weights(weak_embeddings, references, is_labeled)
        targets = jax.lax.stop_gradient(pseudo_labels)  # q is a target
        loss_u = jnp.mean(losses.soft_cross_entropy(strong_logits, targets) * mask)
    target_graph = losses.pseudo_label_graph(pseudo_labels, threshold=options.contrast_threshold)
    similarity_graph = losses.embedding_graph(
        outputs["unlabeled_strong0"]["embedding"],
        outputs["unlabeled_strong1"]["embedding"],
        temperature=options.temperature,
    )
    loss_ctr = losses.graph_contrastive_loss(target_graph, similarity_graph)
    loss = loss_x + options.lambda_cls * loss_u + options.lambda_ctr * loss_ctr

    new_embeddings = jnp.concatenate([weak_embeddings, labeled_embeddings])
    new_probs = jnp.concatenate([probs, jax.nn.one_hot(batch["labels"], num_classes)])
    queue_embeddings, pointer = enqueue(
        state["queue_embeddings"], state["queue_pointer"], new_embeddings
    )
    queue_probs, _ = enqueue(state["queue_probs"], state["queue_pointer"], new_probs)
    new_state = {
        "queue_embeddings": queue_embeddings,
        "queue_probs": queue_probs,
        "queue_pointer": pointer,
        "queue_filled": jnp.minimum(state["queue_filled"] + new_embeddings.shape[0], queue_size),
        "da_history": da_history,
        "da_count": da_count,
        **adaptive,
    }
    metrics = {
        "loss_x": loss_x,
        "loss_u": loss_u,
        "loss_ctr": loss_ctr,
        "mask_rate": jnp.mean(mask),
        "pseudo_label_acc": _pseudo_label_accuracy(pseudo_labels, mask, batch),
    }
    if adaptive:
        metrics["global_threshold"] = adaptive["global_threshold"]
    return loss, (new_state, metrics)


# ----------------------------------------------------------------------------- CoMatch + BT
def comatch_bt_loss(outputs: Outputs, batch: dict, state: dict, config) -> tuple:
    """CoMatch plus lambda_bt times Barlow Twins on the two strong views' projections (the
    CoMatch paper's stated future work)."""
    loss, (state, metrics) = comatch_loss(outputs, batch, state, config)
    loss_bt, _ = barlow_twins_method_loss(outputs, batch, state, config)
    return loss + config.comatch.lambda_bt * loss_bt, (state, {**metrics, "loss_bt": loss_bt})


# ----------------------------------------------------------------------------- FixMatch
def init_fixmatch_state(
    config: ml_collections.ConfigDict, num_classes: int, embedding_dim: int
) -> dict[str, jax.Array]:
    """The DA history when fixmatch.distribution_alignment is on, else nothing."""
    options = config.fixmatch
    if not options.distribution_alignment:
        return {}
    return {
        "da_history": jnp.zeros((options.da_length, num_classes), jnp.float32),
        "da_count": jnp.zeros((), jnp.int32),
    }


def fixmatch_loss(outputs: Outputs, batch: dict, state: dict, config) -> tuple:
    """FixMatch (Sohn et al. 2020, Eq. 4): L_x + lambda_u CE(strong, argmax p_weak) where
    max p_weak >= tau. With fixmatch.distribution_alignment, p_weak is first aligned as in
    the official CoMatch repository's Train_fixmatch.py (losses.distribution_alignment)."""
    options = config.fixmatch
    loss_x = losses.cross_entropy(outputs["labeled_weak"]["logits"], batch["labels"])
    # The weak view is the target: no gradient flows through it.
    weak_probs = jax.lax.stop_gradient(
        jax.nn.softmax(outputs["unlabeled_weak"]["logits"].astype(jnp.float32), axis=-1)
    )
    if options.distribution_alignment:
        weak_probs, history, count = losses.distribution_alignment(
            weak_probs, state["da_history"], state["da_count"]
        )
        state = {**state, "da_history": history, "da_count": count}
    loss_u, mask = losses.hard_pseudo_label_loss(
        outputs["unlabeled_strong0"]["logits"], weak_probs, threshold=options.threshold
    )
    metrics = {
        "loss_x": loss_x,
        "loss_u": loss_u,
        "mask_rate": jnp.mean(mask),
        "pseudo_label_acc": _pseudo_label_accuracy(weak_probs, mask, batch),
    }
    return loss_x + options.lambda_u * loss_u, (state, metrics)


# ----------------------------------------------------------------------------- FreeMatch
def init_freematch_state(
    config: ml_collections.ConfigDict, num_classes: int, embedding_dim: int
) -> dict[str, jax.Array]:
    """tau_0 = 1/C and p~_0 = h~_0 = 1/C per class (the paper's start)."""
    uniform = jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)
    return {
        "global_threshold": jnp.asarray(1.0 / num_classes, jnp.float32),
        "class_probs": uniform,
        "class_histogram": uniform,
    }


def freematch_loss(outputs: Outputs, batch: dict, state: dict, config) -> tuple:
    """FreeMatch (Wang et al. 2023): L_x + lambda_u L_u + lambda_f L_f with self-adaptive
    class thresholds tau_t(c) updated from this batch's weak view first (official order)."""
    options = config.freematch
    loss_x = losses.cross_entropy(outputs["labeled_weak"]["logits"], batch["labels"])
    weak_probs = jax.nn.softmax(
        jax.lax.stop_gradient(outputs["unlabeled_weak"]["logits"]).astype(jnp.float32), axis=-1
    )
    thresholds, global_threshold, class_probs, class_histogram = losses.freematch_thresholds(
        weak_probs,
        state["global_threshold"],
        state["class_probs"],
        state["class_histogram"],
        momentum=options.momentum,
    )
    strong_logits = outputs["unlabeled_strong0"]["logits"]
    loss_u, mask = losses.hard_pseudo_label_loss(strong_logits, weak_probs, threshold=thresholds)
    loss_f = losses.freematch_fairness_loss(strong_logits, mask, class_probs, class_histogram)
    loss = loss_x + options.lambda_u * loss_u + options.lambda_f * loss_f
    new_state = {
        "global_threshold": global_threshold,
        "class_probs": class_probs,
        "class_histogram": class_histogram,
    }
    metrics = {
        "loss_x": loss_x,
        "loss_u": loss_u,
        "loss_fair": loss_f,
        "mask_rate": jnp.mean(mask),
        "global_threshold": global_threshold,
        "pseudo_label_acc": _pseudo_label_accuracy(weak_probs, mask, batch),
    }
    return loss, (new_state, metrics)


# ----------------------------------------------------------------------------- SoftMatch
def init_softmatch_state(
    config: ml_collections.ConfigDict, num_classes: int, embedding_dim: int
) -> dict[str, jax.Array]:
    """mu_0 = 1/C, sigma_0^2 = 1 (paper and official code); E[p] set by the first batch."""
    return {
        "confidence_mean": jnp.asarray(1.0 / num_classes, jnp.float32),
        "confidence_variance": jnp.asarray(1.0, jnp.float32),
        "class_mean": jnp.full((num_classes,), 1.0 / num_classes, jnp.float32),
        "alignment_count": jnp.zeros((), jnp.int32),
    }


def softmatch_loss(outputs: Outputs, batch: dict, state: dict, config) -> tuple:
    """SoftMatch (Chen et al. 2023): L_x + mean_b lambda(p_b) CE(strong_b, argmax p_b).

    As in the official code, uniform alignment (if on) enters only the weights: the Gaussian
    estimates and lambda use the aligned p, the pseudo-label is argmax of the raw p.
    """
    options = config.softmatch
    loss_x = losses.cross_entropy(outputs["labeled_weak"]["logits"], batch["labels"])
    weak_probs = jax.nn.softmax(
        jax.lax.stop_gradient(outputs["unlabeled_weak"]["logits"]).astype(jnp.float32), axis=-1
    )
    class_mean, count = state["class_mean"], state["alignment_count"]
    weighting_probs = weak_probs
    if options.uniform_alignment:
        weighting_probs, class_mean, count = losses.uniform_alignment(
            weak_probs, class_mean, count, momentum=options.momentum
        )
    mean, variance = losses.softmatch_gaussian(
        weighting_probs,
        state["confidence_mean"],
        state["confidence_variance"],
        momentum=options.momentum,
    )
    weights = losses.softmatch_weights(
        weighting_probs, mean, variance, lambda_max=1.0, n_sigma=options.n_sigma
    )
    loss_u = losses.weighted_hard_pseudo_label_loss(
        outputs["unlabeled_strong0"]["logits"], weak_probs, weights
    )
    new_state = {
        "confidence_mean": mean,
        "confidence_variance": variance,
        "class_mean": class_mean,
        "alignment_count": count,
    }
    metrics = {
        "loss_x": loss_x,
        "loss_u": loss_u,
        "mask_rate": jnp.mean(weights),  # the weight mass
        "confidence_mean": mean,
        "pseudo_label_acc": _pseudo_label_accuracy(weak_probs, weights, batch),
    }
    return loss_x + options.lambda_u * loss_u, (new_state, metrics)


# ----------------------------------------------------------------------------- self-supervised
def simclr_loss(outputs: Outputs, batch: dict, state: dict, config) -> tuple:
    """NT-Xent between the two views' L2-normalised projections (the `embedding` head)."""
    loss = losses.nt_xent_loss(
        outputs["unlabeled_strong0"]["embedding"],
        outputs["unlabeled_strong1"]["embedding"],
        temperature=config.simclr.temperature,
    )
    return loss, (state, {"loss_ssl": loss})


def barlow_twins_method_loss(outputs: Outputs, batch: dict, state: dict, config) -> tuple:
    """Redundancy reduction between the two views' projector outputs."""
    loss = losses.barlow_twins_loss(
        outputs["unlabeled_strong0"]["projection"],
        outputs["unlabeled_strong1"]["projection"],
        lambda_offdiag=config.barlow_twins.lambda_offdiag,
    )
    return loss, (state, {"loss_ssl": loss})


def simsiam_method_loss(outputs: Outputs, batch: dict, state: dict, config) -> tuple:
    """Symmetric negative cosine between predictions and stop-gradient projections."""
    first, second = outputs["unlabeled_strong0"], outputs["unlabeled_strong1"]
    loss = losses.simsiam_loss(
        first["prediction"], second["prediction"], first["projection"], second["projection"]
    )
    return loss, (state, {"loss_ssl": loss})


def autoencoder_loss(outputs: Outputs, batch: dict, state: dict, config) -> tuple:
    """Reconstruct the (weakly augmented) input image from the backbone's features."""
    view = outputs["unlabeled_weak"]
    loss = losses.reconstruction_loss(
        view["reconstruction"], view["image"] / 255.0, kind=config.autoencoder.loss
    )
    return loss, (state, {"loss_ssl": loss})


# ----------------------------------------------------------------------------- the table
_WEAK, _SEMI, _PAIR = ("weak",), ("weak", "strong0"), ("strong0", "strong1")
_COMATCH, _CLS, _SSL = ("weak", "strong0", "strong1"), "classifier", "self_supervised"
_ENTRIES = (  # in the row order of comparison tables
    Method("supervised", _WEAK, (), _no_state, supervised_loss, _CLS, "Supervised only"),
    Method("autoencoder", (), _WEAK, _no_state, autoencoder_loss, _SSL, "Autoencoder"),
    Method("simclr", (), _PAIR, _no_state, simclr_loss, _SSL, "SimCLR"),
    Method("simsiam", (), _PAIR, _no_state, simsiam_method_loss, _SSL, "SimSiam"),
    Method("barlow_twins", (), _PAIR, _no_state, barlow_twins_method_loss, _SSL, "Barlow Twins"),
    Method("fixmatch", _WEAK, _SEMI, init_fixmatch_state, fixmatch_loss, _CLS, "FixMatch"),
    Method("freematch", _WEAK, _SEMI, init_freematch_state, freematch_loss, _CLS, "FreeMatch"),
    Method("softmatch", _WEAK, _SEMI, init_softmatch_state, softmatch_loss, _CLS, "SoftMatch"),
    Method("comatch", _WEAK, _COMATCH, init_comatch_state, comatch_loss, _CLS, "CoMatch"),
    Method(
        "comatch_bt",
        _WEAK,
        _COMATCH,
        init_comatch_state,
        comatch_bt_loss,
        _CLS,
        "CoMatch + Barlow Twins",
    ),
)
METHODS: dict[str, Method] = {method.name: method for method in _ENTRIES}


def get_method(name: str) -> Method:
    """The METHODS entry called `name`; ValueError listing the known ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name]
