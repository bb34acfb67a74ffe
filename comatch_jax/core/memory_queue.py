"""The memory queue (ring buffer) CoMatch keeps of past embeddings and class probabilities.

A queue is an array [K, ...] plus an int32 pointer to the next row to write; `enqueue` is a
pure function, so the queue lives in the TrainState and is checkpointed with it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def enqueue(
    queue: jax.Array, pointer: jax.Array, entries: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Writes `entries` [N, ...] into the ring buffer `queue` [K, ...] at `pointer`.

    Wraps around when the write passes the end (K need not be a multiple of N; if N > K
    only the last K entries stay). Entries are cast to the queue's dtype. Returns (new queue,
    new pointer = (pointer + N) % K, int32). Source: the official CoMatch code's queue update
    (`queue[ptr:ptr + N] = entries; ptr = (ptr + N) % K`), with the wrap-around made explicit.
    """
    size, count = queue.shape[0], entries.shape[0]
    if count > size:
        entries, pointer, count = entries[-size:], (pointer + count - size) % size, size
    rows = (pointer + jnp.arange(count)) % size
    return queue.at[rows].set(entries.astype(queue.dtype)), (pointer + count) % size
