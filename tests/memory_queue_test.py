"""The memory queue's ring-buffer write, checked against hand-computed contents."""

import jax.numpy as jnp
import numpy as np

from comatch_jax.core import memory_queue


def test_enqueue_writes_and_wraps_around():
    queue = jnp.zeros((5, 1))
    queue, pointer = memory_queue.enqueue(queue, jnp.array(0), jnp.array([[1.0], [2.0], [3.0]]))
    np.testing.assert_array_equal(queue[:, 0], [1, 2, 3, 0, 0])
    assert int(pointer) == 3
    # K = 5 is not a multiple of the batch of 3: the write wraps to the front.
    queue, pointer = memory_queue.enqueue(queue, pointer, jnp.array([[4.0], [5.0], [6.0]]))
    np.testing.assert_array_equal(queue[:, 0], [6, 2, 3, 4, 5])
    assert int(pointer) == 1


def test_enqueue_more_entries_than_queue_keeps_the_last():
    queue, pointer = memory_queue.enqueue(jnp.zeros((3,)), jnp.array(1), jnp.arange(1.0, 6.0))
    # Writing 1..5 from position 1 leaves, as a ring buffer would, 3 at 0, 4 at 1, 5 at 2.
    np.testing.assert_array_equal(queue, [3.0, 4.0, 5.0])
    assert int(pointer) == (1 + 5) % 3


def test_enqueue_casts_entries_to_the_queue_dtype():
    queue, _ = memory_queue.enqueue(jnp.zeros((4,), jnp.bfloat16), jnp.array(0), jnp.ones(2))
    assert queue.dtype == jnp.bfloat16
