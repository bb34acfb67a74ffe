"""The TrainState pytree (everything that changes during training) and the optimizer."""

from __future__ import annotations

from typing import Any

import flax
import flax.traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from comatch_jax.core import methods


class TrainState(flax.struct.PyTreeNode):
    """All mutable training state; a pure pytree of arrays, checkpointed whole.

    method_state holds what a method carries between steps (CoMatch: memory queue of
    embeddings and probabilities with its pointer, and the distribution-alignment history).
    rng is a typed PRNG key (jax.random.key; scalar, dtype key<fry>), folded with the step
    for each step's augmentations.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any
    ema_batch_stats: Any
    method_state: Any
    rng: jax.Array


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """lr(k) for the optimizer's update count k = 0, 1, ..., K - 1 (K = num_steps).

    Linear warm-up over optim.warmup_steps (none in the official code), then
    'fixmatch_cosine': lr cos(7 pi k / (16 K)) (the official CoMatch / FixMatch schedule,
      github salesforce/CoMatch utils.py WarmupCosineLrScheduler with warmup_iter=0; it
      ends at lr cos(7 pi / 16) = 0.195 lr, not 0); the presets' and the base default,
    'cosine': half-cosine decay to 0 at K, or 'constant'.
    With warm-up, K counts the steps after it (config_lib.validate_config checks the name).
    """
    optim, total = config.optim, config.num_steps
    warmup = optax.linear_schedule(0.0, optim.lr, max(optim.warmup_steps, 1))
    decay_steps = max(total - optim.warmup_steps, 1)
    main = {
        "cosine": optax.cosine_decay_schedule(optim.lr, decay_steps),
        "fixmatch_cosine": lambda k: optim.lr * jnp.cos(7.0 * jnp.pi * k / (16.0 * decay_steps)),
        "constant": optax.constant_schedule(optim.lr),
    }[optim.schedule]
    if optim.warmup_steps <= 0:
        return main
    return optax.join_schedules([warmup, main], [optim.warmup_steps])


def weight_decay_mask(params: Any) -> Any:
    """True for every parameter except BatchNorm's scale and bias.

    The official rule (github salesforce/CoMatch Train_CoMatch.py, `'bn' in name` ->
    weight_decay 0): conv kernels, dense kernels and dense / conv biases are decayed,
    BatchNorm affine parameters are not. A BatchNorm module is recognised structurally:
    the module holding a `scale` parameter (our BatchNorm, flax's nn.BatchNorm / LayerNorm).
    """
    flat = flax.traverse_util.flatten_dict(params)
    norm_modules = {path[:-1] for path in flat if path[-1] == "scale"}
    return flax.traverse_util.unflatten_dict({path: path[:-1] not in norm_modules for path in flat})


class FrozenForState(flax.struct.PyTreeNode):
    count: jax.Array  # updates seen, int32
    inner_state: Any


def frozen_for(steps: int, inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner`, except that its first `steps` updates are zeros and leave its state as it
    was (no momentum, no schedule count): the parameters stay exactly where they are. From
    update `steps` on, `inner` runs as if it had started then (its schedule's k = 0 is the
    overall update `steps`)."""

    def init(params):
        return FrozenForState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        new_updates, new_inner = inner.update(updates, state.inner_state, params)
        frozen = state.count < steps
        new_updates = jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), new_updates)
        new_inner = jax.tree.map(
            lambda old, new: jnp.where(frozen, old, new), state.inner_state, new_inner
        )
        return new_updates, FrozenForState(optax.safe_int32_increment(state.count), new_inner)

    return optax.GradientTransformation(init, update)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """SGD (Nesterov) with coupled weight decay (added to the gradient before momentum, as
    torch.optim.SGD does) on every parameter but BatchNorm's (`weight_decay_mask`).

    Fine-tuning (optax.multi_transform over the backbone and the heads: classifier, embedding
    head, projector, predictor, decoder): optim.backbone_lr_scale = s
    gives the backbone the schedule s lr(k) (weight decay scaled with it, as in a torch
    parameter group), and optim.head_warmup_steps = N freezes the backbone for the first N
    updates (`frozen_for`: heads only, a linear-probe warm start), after which it follows
    s lr(k) from k = N. With s = 1 and N = 0 this is the single SGD above, state and all.
    """
    optim = config.optim
    schedule = learning_rate_schedule(config)
    sgd = lambda lr: optax.sgd(lr, momentum=optim.momentum, nesterov=optim.nesterov)
    decay = optax.add_decayed_weights(optim.weight_decay, mask=weight_decay_mask)
    scale, warmup = float(optim.backbone_lr_scale), int(optim.head_warmup_steps)
    if scale == 1.0 and warmup == 0:
        return optax.chain(decay, sgd(schedule))
    backbone = sgd(lambda k: scale * schedule(k + warmup))
    if warmup:
        backbone = frozen_for(warmup, backbone)
    labels = lambda params: flax.traverse_util.path_aware_map(
        lambda path, _: "backbone" if path[0] == "backbone" else "heads", params
    )
    transforms = {"backbone": backbone, "heads": sgd(schedule)}
    return optax.chain(decay, optax.multi_transform(transforms, labels))


def create_train_state(
    rng: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    method: methods.Method,
    config: ml_collections.ConfigDict,
    image_shape: tuple[int, int, int],
    num_classes: int,
) -> TrainState:
    """Initialises params, optimizer, EMA copies and the method's state from `rng`, a typed
    PRNG key (jax.random.key); the state's own key (TrainState.rng) is split from it."""
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init(init_rng, jnp.zeros((2, *image_shape), jnp.float32), train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        # Copies, not aliases: the whole state is donated to the jitted step.
        ema_params=jax.tree.map(jnp.copy, params),
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
        method_state=method.init_state(config, num_classes, config.model.low_dim),
        rng=state_rng,
    )
