"""The pure train and eval steps: augment + forward + loss + update + method state + EMA.

Steps are built by factories from the config and jitted once by the trainer, with the
state donated. They import neither TensorFlow nor clu's writers, so they run anywhere JAX
runs.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from comatch_jax.core import augment, methods
from comatch_jax.core.train_state import TrainState, learning_rate_schedule

VIEW_SLOTS = ("weak", "strong0", "strong1")
Batch = dict[str, jax.Array]
StepFn = Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]


def preprocess(images: jax.Array, mean: Any, std: Any) -> jax.Array:
    """uint8 [..., C] -> float32 (x / 255 - mean) / std, per channel.

    mean, std: C floats in [0, 1] units (a config's dataset.mean/std once resolved from the
    data: data.pipeline.prepare_data). Raises ValueError when their length is not C, e.g.
    the unresolved default ().
    """
    channels = images.shape[-1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"normalisation mean {tuple(mean)} / std {tuple(std)} do not have one value per "
            f"channel of the {channels}-channel images; resolve them from the data "
            "(data.resolve_normalization) or set --config.dataset.mean/std."
        )
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def make_views(
    rng: jax.Array, batch: Batch, method: methods.Method, config: ml_collections.ConfigDict
) -> dict[str, jax.Array]:
    """Augmented uint8 views keyed '<part>_<slot>', each from its own key; every view gets
    the options of config.augment that are not slot -> view names."""
    options = {k: v for k, v in config.augment.items() if k not in VIEW_SLOTS}
    requests = [("labeled", slot) for slot in method.labeled_views]
    requests += [("unlabeled", slot) for slot in method.unlabeled_views]
    keys = jax.random.split(rng, len(requests))
    return {
        f"{part}_{slot}": augment.make_view(
            config.augment[slot], key, batch[f"{part}_images"], **options
        )
        for key, (part, slot) in zip(keys, requests)
    }


def ema_update(ema: Any, new: Any, decay: float) -> Any:
    """ema <- decay * ema + (1 - decay) * new, leaf by leaf (after the optimizer update)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, new)


def concat_per_device(arrays: list[jax.Array], groups: int) -> jax.Array:
    """Concatenates arrays along the batch as `groups` contiguous chunks, chunk d holding
    chunk d of every array: with each array sharded over `groups` devices, chunk d is what
    device d holds, so per-device BatchNorm (models.BatchNorm groups) sees each device's
    own images. With groups = 1 this is jnp.concatenate."""
    return jnp.concatenate(
        [a.reshape(groups, a.shape[0] // groups, *a.shape[1:]) for a in arrays], axis=1
    ).reshape(-1, *arrays[0].shape[1:])


def split_per_device(x: jax.Array, sizes: list[int], groups: int) -> list[jax.Array]:
    """Inverse of concat_per_device: the arrays of batch sizes `sizes` back from x."""
    grouped = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
    pieces = jnp.split(grouped, np.cumsum([size // groups for size in sizes])[:-1], axis=1)
    return [piece.reshape(-1, *x.shape[1:]) for piece in pieces]


def schedule_count(opt_state: Any) -> jax.Array:
    """The optimizer's update count (int32 scalar), at which its learning-rate schedule is
    evaluated: optax's ScaleByScheduleState.count in `opt_state` (the last 'count')."""
    return optax.tree_utils.tree_get_all_with_path(opt_state, "count")[-1][1]


def make_train_step(
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    method: methods.Method,
    config: ml_collections.ConfigDict,
) -> StepFn:
    """Returns train_step(state, batch) -> (state, metrics) for a batch of uint8 images."""
    mean, std = config.dataset.mean, config.dataset.std
    teacher_views = ("unlabeled_weak",) if config.ema.teacher_weak_views else ()
    bn_groups = getattr(model, "bn_groups", 1)  # per-device BatchNorm: one group per device
    schedule = learning_rate_schedule(config)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        step_rng = jax.random.fold_in(state.rng, state.step)
        views = make_views(step_rng, batch, method, config)
        # Optionally the EMA model (eval mode) computes the weak unlabeled view's outputs,
        # hence the pseudo-labels and queue entries (large-scale presets).
        teacher_outputs = {
            name: model.apply(
                {"params": state.ema_params, "batch_stats": state.ema_batch_stats},
                preprocess(views.pop(name), mean, std),
                train=False,
            )
            for name in teacher_views
            if name in views
        }
        names = list(views)
        sizes = [views[name].shape[0] for name in names]
        inputs = preprocess(concat_per_device([views[n] for n in names], bn_groups), mean, std)

        def loss_fn(params):
            # One forward over all student views, so BatchNorm sees them together, as in
            # the official code.
            outputs, model_updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                inputs,
                train=True,
                mutable=["batch_stats"],
            )
            pieces = {
                key: split_per_device(value, sizes, bn_groups) for key, value in outputs.items()
            }
            per_view = {
                name: {**{key: pieces[key][i] for key in outputs}, "image": views[name]}
                for i, name in enumerate(names)
            }
            per_view.update(jax.lax.stop_gradient(teacher_outputs))
            loss, (method_state, metrics) = method.loss(per_view, batch, state.method_state, config)
            return loss, (model_updates["batch_stats"], method_state, metrics)

        (loss, (batch_stats, method_state, metrics)), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if config.ema.average_batch_stats:
            ema_batch_stats = ema_update(state.ema_batch_stats, batch_stats, config.ema.decay)
        else:  # the official code copies the BN statistics into the EMA model
            ema_batch_stats = batch_stats
        candidate = state.replace(
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            ema_params=ema_update(state.ema_params, params, config.ema.decay),
            ema_batch_stats=ema_batch_stats,
            method_state=method_state,
        )
        if config.nonfinite_policy == "skip":
            # A non-finite loss or gradient leaves the state as it was (the step still counts).
            finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
            candidate = jax.tree.map(lambda new, old: jnp.where(finite, new, old), candidate, state)
            metrics = {**metrics, "skipped": jnp.logical_not(finite)}
        new_state = candidate.replace(step=state.step + 1)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            # The kept params (a skipped step keeps the previous ones).
            "param_norm": optax.tree.norm(new_state.params),
            # The rate this step's update used: the schedule at the optimizer's own count,
            # which a skipped step does not advance (state.step does).
            "learning_rate": schedule(schedule_count(state.opt_state)),
        }
        return new_state, metrics

    return train_step


def make_eval_step(model: nn.Module, config: ml_collections.ConfigDict) -> Callable:
    """eval_step(params, batch_stats, images uint8, labels, mask) -> summed metrics.

    `mask` marks real examples, so a padded last batch is evaluated exactly.
    """
    mean, std = config.dataset.mean, config.dataset.std

    def eval_step(params, batch_stats, images, labels, mask):
        outputs = model.apply(
            {"params": params, "batch_stats": batch_stats},
            preprocess(images, mean, std),
            train=False,
        )
        log_probs = jax.nn.log_softmax(outputs["logits"])
        nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
        correct = (jnp.argmax(outputs["logits"], axis=-1) == labels).astype(jnp.float32)
        return {
            "correct": jnp.sum(correct * mask),
            "nll": jnp.sum(nll * mask),
            "count": jnp.sum(mask),
        }

    return eval_step
