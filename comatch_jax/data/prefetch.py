"""Host batches gathered and transferred ahead of the step that uses them.

`host_batch` gathers batch `step` from host arrays (e.g. a memory-mapped image cache) with
NumPy, the rows given by `sampling.batch_indices` (NumPy on the host, no accelerator work),
and puts it onto a sharding. `Prefetcher` runs such a function for steps s, s+1, ... in a
background thread, at most `depth` batches ahead, so gathering and transferring the next
batch overlaps the running step. Batch `step` is always the same whatever the timing: the
producer computes steps strictly in order from a pure function of the step.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Generic, TypeVar

import jax
import numpy as np

from comatch_jax.data import sampling

T = TypeVar("T")


def _gather_rows(source: Any, rows: np.ndarray) -> np.ndarray:
    """source[rows] read in ascending row order (sequential on a memory-mapped file)."""
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), *source.shape[1:]), source.dtype)
    out[order] = source[rows[order]]
    return out


def host_batch(
    arrays: dict[str, Any],
    step: int,
    *,
    batch_size: int,
    unlabeled_batch_size: int,
    sharding: jax.sharding.Sharding,
) -> dict[str, jax.Array]:
    """Batch `step` from host arrays as global jax.Arrays split by `sharding`.

    `arrays` holds what sampling.sample_batch reads (NumPy or memory-mapped images and
    labels, `sampling_rng`). Every process draws the same global rows (a pure function of the
    seed and the step) and reads only those of its own devices. Shapes as sample_batch's.
    """
    indices = sampling.batch_indices(
        arrays, int(step), batch_size=batch_size, unlabeled_batch_size=unlabeled_batch_size
    )
    batch = {}
    for name, (rows, array) in sampling.BATCH_SOURCES.items():
        if rows not in indices:
            continue
        source, selected = arrays[array], np.asarray(indices[rows])
        batch[name] = jax.make_array_from_callback(
            (len(selected), *source.shape[1:]),
            sharding,
            lambda index, source=source, selected=selected: _gather_rows(
                source, selected[index[0]]
            ),
        )
    return batch


class Prefetcher(Generic[T]):
    """Serves make_batch(step) for consecutive steps from `start_step`, computed ahead.

    A background thread calls make_batch(start_step), make_batch(start_step + 1), ... up to
    `stop_step` (exclusive; None = no end), keeping at most `depth` results queued. `get(step)`
    returns make_batch(step); steps must be asked for in order. An exception raised by
    make_batch is re-raised by the `get` of its step. Use as a context manager (or call
    `close`): on exit the thread is stopped and joined, also when the body raised.

    Raises ValueError for depth < 1 and for a `get` of a step other than the next one.
    """

    def __init__(
        self,
        make_batch: Callable[[int], T],
        *,
        start_step: int,
        stop_step: int | None = None,
        depth: int = 2,
    ):
        if depth < 1:
            raise ValueError(f"Prefetcher depth must be >= 1, got {depth}")
        self._make_batch = make_batch
        self._next_step = int(start_step)
        self._stop_step = stop_step
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._produce, args=(int(start_step),), name="comatch_jax-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, step: int) -> None:
        while not self._stopping.is_set() and (self._stop_step is None or step < self._stop_step):
            try:
                item = (step, self._make_batch(step), None)
            except BaseException as error:  # handed to the consumer, which re-raises it
                self._put((step, None, error))
                return
            if not self._put(item):
                return
            step += 1

    def get(self, step: int) -> T:
        """make_batch(step); blocks until it is ready."""
        if step != self._next_step:
            raise ValueError(
                f"Prefetcher serves consecutive steps: asked for step {step}, the next is "
                f"{self._next_step}; make a new Prefetcher to start elsewhere."
            )
        if self._stop_step is not None and step >= self._stop_step:
            raise ValueError(f"Prefetcher stops before step {self._stop_step}, asked for {step}")
        while True:
            try:
                produced, batch, error = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the prefetch thread ended without a batch") from None
        assert produced == step, (produced, step)
        if error is not None:
            self.close()
            raise error
        self._next_step += 1
        return batch

    def close(self) -> None:
        """Stops the producer and waits for it (it finishes the make_batch call it is in)."""
        self._stopping.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> "Prefetcher[T]":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
