"""The TrainState pytree (everything that changes during training) and the optimizer."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from comatch_jax import methods


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
    """lr(step): linear warm-up, then 'cosine' (to 0 at num_steps), 'fixmatch_cosine'
    (lr cos(7 pi k / 16 K), Sohn et al. 2020) or 'constant'."""
    optim, total = config.optim, config.num_steps
    warmup = optax.linear_schedule(0.0, optim.lr, max(optim.warmup_steps, 1))
    decay_steps = max(total - optim.warmup_steps, 1)
    if optim.schedule == "cosine":
        main = optax.cosine_decay_schedule(optim.lr, decay_steps)
    elif optim.schedule == "fixmatch_cosine":
        main = lambda k: optim.lr * jnp.cos(7.0 * jnp.pi * k / (16.0 * decay_steps))
    elif optim.schedule == "constant":
        main = optax.constant_schedule(optim.lr)
    else:
        raise ValueError(
            f"Unknown optim.schedule {optim.schedule!r}; expected cosine, fixmatch_cosine or constant"
        )
    if optim.warmup_steps <= 0:
        return main
    return optax.join_schedules([warmup, main], [optim.warmup_steps])


def weight_decay_mask(params: Any) -> Any:
    """True for conv and dense kernels; BatchNorm scales/biases and biases are not decayed."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """SGD (Nesterov) with coupled weight decay on kernels, as torch.optim.SGD does."""
    optim = config.optim
    return optax.chain(
        optax.add_decayed_weights(optim.weight_decay, mask=weight_decay_mask),
        optax.sgd(learning_rate_schedule(config), momentum=optim.momentum, nesterov=optim.nesterov),
    )


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
    """Initialises params, optimizer, EMA copies and the method's state from `rng`.

    `rng` is a typed PRNG key (jax.random.key); a legacy raw uint32[2] key
    (jax.random.PRNGKey) is wrapped into the typed key with the same bits (same numbers).
    The state's own key (TrainState.rng) is always a typed key, split from it.
    """
    if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
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
