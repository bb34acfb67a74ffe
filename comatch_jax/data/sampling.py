"""Batch sampling as a pure function of (rng, step), so a resumed run draws the same batches.

Indices walk through a fresh random permutation of the dataset every epoch. Position
p = step * batch_size + i of the stream is element p % N of epoch p // N's permutation, and
that element is computed directly, in O(batch_size) work independent of N, by a keyed
bijection of [0, N): a Feistel network over the smallest power-of-two domain 2**b >= N,
with cycle-walking (re-encrypting values that fall in [N, 2**b) until they land in [0, N);
Black & Rogaway, "Ciphers with Arbitrary Finite Domains", CT-RSA 2002, section 5). Round
keys are hashed from the PRNG key's words, the stream (labeled / unlabeled) and the epoch.

The same uint32 arithmetic runs under jax.numpy (inside a jitted step, on the device) and
under NumPy (the host-batch path, no accelerator work), with bit-identical results: the
module is picked by whether `rng` or `step` is a JAX tracer.

grain's `index_shuffle` (the same idea) is a C++ host function, so it cannot be traced by
jit; TensorFlow's `tf.random_index_shuffle` is TensorFlow. Hence this small implementation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Feistel rounds. Luby-Rackoff: 3-4 rounds of a pseudorandom function give a pseudorandom
# permutation; 6 keep small and unbalanced domains well mixed at negligible cost.
NUM_ROUNDS = 6
LABELED_STREAM, UNLABELED_STREAM = 0, 1

_U32 = np.uint32
_GOLDEN = 0x9E3779B9
_MASK = 0xFFFFFFFF


def _fmix32(h, xp):
    """MurmurHash3's 32-bit finaliser: a bijective avalanche mix of uint32 values."""
    h = h ^ (h >> _U32(16))
    h = h * _U32(0x85EBCA6B)
    h = h ^ (h >> _U32(13))
    h = h * _U32(0xC2B2AE35)
    return h ^ (h >> _U32(16))


def _round_keys(key_words, stream: int, epoch, xp) -> list:
    """NUM_ROUNDS uint32 arrays shaped like `epoch`: hashes of (key words, stream, epoch, round)."""
    # Constants are folded in Python and masked to 32 bits: only array ops wrap (silently).
    h = xp.full(epoch.shape, _U32((stream * _GOLDEN + 0x6A09E667) & _MASK), dtype=xp.uint32)
    for i in range(key_words.shape[0]):
        h = _fmix32((h ^ key_words[i]) + _U32((_GOLDEN * (i + 1)) & _MASK), xp)
    h = _fmix32(h ^ epoch, xp)
    return [_fmix32(h ^ _U32((0x27D4EB2F * (r + 1)) & _MASK), xp) for r in range(NUM_ROUNDS)]


def _feistel(x, keys, bits: int, xp):
    """A bijection of [0, 2**bits) (uint32 x): NUM_ROUNDS rounds, each mapping
    (L, R) = (x >> r, x & (2**r - 1)) to (R << l) | (L ^ F(R, key)), l = bits - r."""
    r = bits // 2
    l = bits - r
    mask_l, mask_r = _U32((1 << l) - 1), _U32((1 << r) - 1)
    for key in keys:
        left, right = x >> _U32(r), x & mask_r
        x = (right << _U32(l)) | (left ^ (_fmix32(right ^ key, xp) & mask_l))
    return x


def _permute(index, keys, size: int, xp):
    """Element `index` (uint32, < size) of the keyed permutation of [0, size), by cycle-walking.

    Each walk re-applies the bijection of [0, 2**bits), 2**bits < 2 * size, to the values still
    outside [0, size); a value's cycle contains its start, so every walk ends. Under jit the
    walks run in a lax.while_loop until none is left (exact, no fixed bound); the expected
    number of walks per value is below 2.
    """
    bits = max(size - 1, 0).bit_length()
    limit = _U32(size)
    x = _feistel(index, keys, bits, xp)
    if xp is np:
        while np.any(x >= limit):
            x = np.where(x >= limit, _feistel(x, keys, bits, np), x)
        return x
    return jax.lax.while_loop(
        lambda x: jnp.any(x >= limit),
        lambda x: jnp.where(x >= limit, _feistel(x, keys, bits, jnp), x),
        x,
    )


def _key_words(rng: Any, xp):
    """The PRNG key's data as a flat uint32 array (a raw uint32 key or a typed jax.random.key)."""
    if isinstance(rng, jax.Array) and jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    if xp is np:
        rng = np.asarray(rng)
    if rng.dtype != xp.uint32:
        raise ValueError(
            f"sampling rng must be a PRNG key (uint32 key data), got dtype {rng.dtype}"
        )
    return rng.reshape(-1)


def _array_module(rng: Any, step: Any):
    """jax.numpy when tracing (inside jit), else NumPy: the host path needs no accelerator."""
    traced = isinstance(rng, jax.core.Tracer) or isinstance(step, jax.core.Tracer)
    return jnp if traced else np


def epoch_permutation_indices(
    rng: jax.Array,
    step: Any,
    *,
    dataset_size: int,
    batch_size: int,
    stream: int = LABELED_STREAM,
) -> Any:
    """Indices int32[batch_size] of batch `step` in an epoch-wise shuffled stream.

    Position p = step * batch_size + i is element p % N of epoch p // N's permutation of
    [0, N), N = dataset_size: every index once per epoch, batches may span epochs (e.g. 64
    labeled images drawn from 40). `rng` is a PRNG key (raw uint32 or typed); `stream`
    separates independent streams drawn with one key. Work and memory are O(batch_size),
    independent of N. Inside jit (a traced `rng` or `step`) returns a jax.Array, otherwise
    a NumPy array with the same values. Positions are int32: valid below 2**31 images seen.

    Raises ValueError for dataset_size < 1 or >= 2**31, or a non-uint32 key.
    """
    if not 1 <= dataset_size < 2**31:
        raise ValueError(f"dataset_size must be in [1, 2**31), got {dataset_size}")
    xp = _array_module(rng, step)
    words = _key_words(rng, xp)
    if xp is np:
        positions = np.int64(step) * batch_size + np.arange(batch_size, dtype=np.int64)
    else:
        positions = jnp.asarray(step, jnp.int32) * batch_size + jnp.arange(
            batch_size, dtype=jnp.int32
        )
    epoch = (positions // dataset_size).astype(xp.uint32)
    index = (positions % dataset_size).astype(xp.uint32)
    keys = _round_keys(words, stream, epoch, xp)
    return _permute(index, keys, dataset_size, xp).astype(xp.int32)


def batch_indices(
    data: dict[str, Any], step: Any, *, batch_size: int, unlabeled_batch_size: int
) -> dict[str, Any]:
    """Rows of batch `step`: {'labeled': int32[batch_size], 'unlabeled': int32[...]}.

    Only the sizes of `data`'s arrays and its `sampling_rng` are read, so every process of a
    multi-host run computes the same global batch and then reads just its own rows. Under
    jit the rows are jax arrays; on the host (untraced rng and step) NumPy arrays, computed
    without touching the accelerator.
    """
    rng = data["sampling_rng"]
    indices = {
        "labeled": epoch_permutation_indices(
            rng,
            step,
            dataset_size=data["labels"].shape[0],
            batch_size=batch_size,
            stream=LABELED_STREAM,
        )
    }
    if unlabeled_batch_size:
        indices["unlabeled"] = epoch_permutation_indices(
            rng,
            step,
            dataset_size=data["unlabeled_labels"].shape[0],
            batch_size=unlabeled_batch_size,
            stream=UNLABELED_STREAM,
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
    data: dict[str, Any], step: Any, *, batch_size: int, unlabeled_batch_size: int
) -> dict[str, Any]:
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
