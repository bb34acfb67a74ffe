"""Batch sampling as a pure function of (rng, step), so a resumed run draws the same batches.

Indices walk through a fresh random permutation of the dataset every epoch; epoch e's
permutation is drawn from fold_in(rng, e). Runs on the host or inside a jitted step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def epoch_permutation_indices(
    rng: jax.Array, step: jax.Array, *, dataset_size: int, batch_size: int
) -> jax.Array:
    """Indices int32[batch_size] of batch `step` in an epoch-wise shuffled stream.

    Position p = step * batch_size + i is element p % N of permutation p // N. A batch may
    span several epochs (e.g. 64 labeled images drawn from 40), so the few permutations it
    touches are drawn and gathered from. Positions are int32: valid below 2**31 images seen.
    """
    step = jnp.asarray(step, jnp.int32)
    start = step * batch_size
    positions = start + jnp.arange(batch_size, dtype=jnp.int32)
    first_epoch = start // dataset_size
    num_epochs = batch_size // dataset_size + 2  # static bound on epochs one batch can span
    epochs = first_epoch + jnp.arange(num_epochs, dtype=jnp.int32)
    permutations = jax.vmap(
        lambda epoch: jax.random.permutation(jax.random.fold_in(rng, epoch), dataset_size)
    )(epochs)
    return permutations[positions // dataset_size - first_epoch, positions % dataset_size].astype(
        jnp.int32
    )


def batch_indices(
    data: dict[str, jax.Array], step: jax.Array, *, batch_size: int, unlabeled_batch_size: int
) -> dict[str, jax.Array]:
    """Rows of batch `step`: {'labeled': int32[batch_size], 'unlabeled': int32[...]}.

    Only the sizes of `data`'s arrays and its `sampling_rng` are read, so every process of a
    multi-host run computes the same global batch and then reads just its own rows.
    """
    labeled_rng, unlabeled_rng = jax.random.split(data["sampling_rng"])
    indices = {
        "labeled": epoch_permutation_indices(
            labeled_rng, step, dataset_size=data["labels"].shape[0], batch_size=batch_size
        )
    }
    if unlabeled_batch_size:
        indices["unlabeled"] = epoch_permutation_indices(
            unlabeled_rng,
            step,
            dataset_size=data["unlabeled_labels"].shape[0],
            batch_size=unlabeled_batch_size,
        )
    return indices


# Which rows (batch_indices' keys) each batch entry is gathered with, from which array.
BATCH_SOURCES = {
    "labeled_images": ("labeled", "labeled_images"),
    "labels": ("labeled", "labels"),
    "unlabeled_images": ("unlabeled", "unlabeled_images"),
    "unlabeled_labels": ("unlabeled", "unlabeled_labels"),
}


def sample_batch(
    data: dict[str, jax.Array], step: jax.Array, *, batch_size: int, unlabeled_batch_size: int
) -> dict[str, jax.Array]:
    """Gathers batch `step` from whole-dataset arrays.

    `data` holds `labeled_images` uint8 [NL, H, W, C], `labels` [NL], `unlabeled_images`
    [NU, H, W, C], `unlabeled_labels` [NU] (ground truth, for monitoring pseudo-label
    accuracy only) and `sampling_rng` (a PRNG key). Works on device or host arrays.
    """
    indices = batch_indices(
        data, step, batch_size=batch_size, unlabeled_batch_size=unlabeled_batch_size
    )
    return {
        name: data[array][indices[rows]]
        for name, (rows, array) in BATCH_SOURCES.items()
        if rows in indices
    }
