"""Training methods: each is its views, its extra state and its loss over model outputs.

The one train step (train_step.py) makes the views a method names, runs the model once on
all of them, and hands the outputs to the method's loss. Adding a method means adding an
entry to METHODS, never another loop.

Outputs reach a loss as a dict keyed '<part>_<view>', e.g. 'labeled_weak',
'unlabeled_strong0', each a model output dict (logits, embedding, features).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from comatch_jax import losses, memory_queue

Outputs = dict[str, dict[str, jax.Array]]
LossFn = Callable[..., tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]]


@dataclasses.dataclass(frozen=True)
class Method:
    """A training method.

    labeled_views / unlabeled_views: view slots (names in config.augment) made per part.
    init_state(config, num_classes, embedding_dim) -> the method's extra state pytree.
    loss(outputs, batch, method_state, config) -> (loss, (new method state, metrics)).
    """

    name: str
    labeled_views: tuple[str, ...]
    unlabeled_views: tuple[str, ...]
    init_state: Callable[[ml_collections.ConfigDict, int, int], Any]
    loss: LossFn
    # 'classifier': evaluated by its classifier; 'self_supervised': by kNN on frozen features
    # (the classifier is untrained until fine-tuning).
    evaluation: str = "classifier"


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
    """Memory queue of (embedding, class probability) pairs and the DA history."""
    options = config.comatch
    return {
        "queue_embeddings": jnp.zeros((options.queue_size, embedding_dim), jnp.float32),
        "queue_probs": jnp.zeros((options.queue_size, num_classes), jnp.float32),
        "queue_pointer": jnp.zeros((), jnp.int32),
        "queue_filled": jnp.zeros((), jnp.int32),  # entries written so far, capped at K
        "da_history": jnp.zeros((options.da_length, num_classes), jnp.float32),
        "da_count": jnp.zeros((), jnp.int32),
    }


def comatch_loss(outputs: Outputs, batch: dict, state: dict, config) -> tuple:
    """L = L_x + lambda_cls L_u^cls + lambda_ctr L_u^ctr (Eq. 10), official-code semantics.

    The weak unlabeled view gives p (aligned by DA), smoothed with the queue into q once the
    queue is full; q masks and targets the first strong view and builds W^q; the two strong
    views' embeddings build W^z. The queue then receives the weak views' embeddings with
    the aligned, unsmoothed probabilities (unlabeled) and one-hot labels (labeled).
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

    loss_u, mask = losses.masked_pseudo_label_loss(
        outputs["unlabeled_strong0"]["logits"], pseudo_labels, threshold=options.threshold
    )
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
    queue_embeddings, pointer = memory_queue.enqueue(
        state["queue_embeddings"], state["queue_pointer"], new_embeddings
    )
    queue_probs, _ = memory_queue.enqueue(state["queue_probs"], state["queue_pointer"], new_probs)
    new_state = {
        "queue_embeddings": queue_embeddings,
        "queue_probs": queue_probs,
        "queue_pointer": pointer,
        "queue_filled": jnp.minimum(state["queue_filled"] + new_embeddings.shape[0], queue_size),
        "da_history": da_history,
        "da_count": da_count,
    }
    metrics = {
        "loss_x": loss_x,
        "loss_u": loss_u,
        "loss_ctr": loss_ctr,
        "mask_rate": jnp.mean(mask),
        "pseudo_label_acc": _pseudo_label_accuracy(pseudo_labels, mask, batch),
    }
    return loss, (new_state, metrics)


# ----------------------------------------------------------------------------- CoMatch + BT
def comatch_barlow_twins_loss(outputs: Outputs, batch: dict, state: dict, config) -> tuple:
    """CoMatch plus lambda_bt times Barlow Twins on the two strong views' projections (the
    CoMatch paper's stated future work)."""
    loss, (state, metrics) = comatch_loss(outputs, batch, state, config)
    loss_bt = losses.barlow_twins_loss(
        outputs["unlabeled_strong0"]["projection"],
        outputs["unlabeled_strong1"]["projection"],
        lambda_offdiag=config.barlow_twins.lambda_offdiag,
    )
    return loss + config.comatch.lambda_bt * loss_bt, (state, {**metrics, "loss_bt": loss_bt})


# ----------------------------------------------------------------------------- FixMatch
def fixmatch_loss(outputs: Outputs, batch: dict, state: dict, config) -> tuple:
    """FixMatch (Sohn et al. 2020, Eq. 4): L_x + lambda_u CE(strong, argmax p_weak) where
    max p_weak >= tau."""
    options = config.fixmatch
    loss_x = losses.cross_entropy(outputs["labeled_weak"]["logits"], batch["labels"])
    weak_probs = jax.nn.softmax(outputs["unlabeled_weak"]["logits"], axis=-1)
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


METHODS: dict[str, Method] = {
    "supervised": Method("supervised", ("weak",), (), _no_state, supervised_loss),
    "comatch": Method(
        "comatch", ("weak",), ("weak", "strong0", "strong1"), init_comatch_state, comatch_loss
    ),
    "comatch_bt": Method(
        "comatch_bt",
        ("weak",),
        ("weak", "strong0", "strong1"),
        init_comatch_state,
        comatch_barlow_twins_loss,
    ),
    "fixmatch": Method("fixmatch", ("weak",), ("weak", "strong0"), _no_state, fixmatch_loss),
    "simclr": Method(
        "simclr", (), ("strong0", "strong1"), _no_state, simclr_loss, "self_supervised"
    ),
    "barlow_twins": Method(
        "barlow_twins",
        (),
        ("strong0", "strong1"),
        _no_state,
        barlow_twins_method_loss,
        "self_supervised",
    ),
    "simsiam": Method(
        "simsiam", (), ("strong0", "strong1"), _no_state, simsiam_method_loss, "self_supervised"
    ),
    "autoencoder": Method(
        "autoencoder", (), ("weak",), _no_state, autoencoder_loss, "self_supervised"
    ),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name]
