import threading
import time

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from comatch_jax.data import pipeline


def _arrays(tmp_path):
    rng = np.random.default_rng(0)
    images = np.lib.format.open_memmap(
        tmp_path / "images.npy", mode="w+", dtype=np.uint8, shape=(1000, 4, 4, 3)
    )
    images[:] = rng.integers(0, 256, images.shape, dtype=np.uint8)
    return {
        "labeled_images": rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8),
        "labels": np.arange(30, dtype=np.int32),
        "unlabeled_images": images,
        "unlabeled_labels": np.arange(1000, dtype=np.int32),
        "sampling_rng": np.asarray(jax.random.PRNGKey(2)),
    }


def _sharding():
    return NamedSharding(
        jax.sharding.Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data")
    )


def test_host_batch_equals_sample_batch_on_the_device(tmp_path):
    arrays = _arrays(tmp_path)
    sizes = dict(batch_size=8, unlabeled_batch_size=32)
    batch = pipeline.host_batch(arrays, 5, sharding=_sharding(), **sizes)
    on_device = jax.jit(lambda data, step: pipeline.sample_batch(data, step, **sizes))(
        jax.device_put({k: np.asarray(v) for k, v in arrays.items()}), 5
    )
    assert set(batch) == set(on_device)
    for name in batch:
        assert isinstance(batch[name], jax.Array)
        np.testing.assert_array_equal(np.asarray(batch[name]), np.asarray(on_device[name]))


def test_prefetched_batches_are_those_of_their_step_whatever_the_timing(tmp_path):
    arrays = _arrays(tmp_path)
    make = lambda step: pipeline.host_batch(
        arrays, step, batch_size=8, unlabeled_batch_size=32, sharding=_sharding()
    )
    jitter = np.random.default_rng(0).uniform(0, 0.01, 40)

    def slow_make(step):
        time.sleep(jitter[step])
        return make(step)

    with pipeline.Prefetcher(slow_make, start_step=3, stop_step=23, depth=2) as batches:
        for step in range(3, 23):
            time.sleep(jitter[39 - step])
            got = batches.get(step)
            want = make(step)
            for name in want:
                np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]))
        with pytest.raises(ValueError, match="stops before step 23"):
            batches.get(23)
    assert not batches._pending  # nothing left to compute after close


def test_steps_out_of_order_are_refused():
    with pipeline.Prefetcher(lambda step: step, start_step=0) as batches:
        assert batches.get(0) == 0
        with pytest.raises(ValueError, match="asked for step 2, the next is 1"):
            batches.get(2)
        assert batches.get(1) == 1


def test_no_thread_is_left_running_after_an_exception():
    before = threading.active_count()
    with pytest.raises(KeyError):
        with pipeline.Prefetcher(lambda step: step, start_step=0, depth=1) as batches:
            batches.get(0)
            raise KeyError("the step failed")  # the producer is blocked on a full queue
    assert not batches._pending and threading.active_count() == before

    def failing(step):
        if step == 2:
            raise OSError("unreadable image")
        return step

    with pipeline.Prefetcher(failing, start_step=0) as batches:
        assert [batches.get(0), batches.get(1)] == [0, 1]
        with pytest.raises(OSError, match="unreadable image"):
            batches.get(2)
        assert not batches._pending
    with pytest.raises(ValueError, match="depth"):
        pipeline.Prefetcher(lambda step: step, start_step=0, depth=0)


def test_preparation_overlaps_the_consumer():
    """Producer and consumer each take 40 ms a step: 10 steps take ~0.44 s, not 0.8 s."""

    def make(step):
        time.sleep(0.04)
        return step

    start = time.perf_counter()
    with pipeline.Prefetcher(make, start_step=0, stop_step=10) as batches:
        for step in range(10):
            batches.get(step)
            time.sleep(0.04)  # the "step"
    assert time.perf_counter() - start < 0.65
