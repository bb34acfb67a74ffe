import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comatch_jax.data import pipeline

SIZES = [1, 2, 3, 5, 7, 8, 13, 16, 31, 32, 33, 40, 97, 127, 128, 129, 1000, 1021, 1024, 4099]


def _stream(rng, n, batch, steps, stream=pipeline.LABELED_STREAM):
    return np.concatenate(
        [
            pipeline.epoch_permutation_indices(
                rng, s, dataset_size=n, batch_size=batch, stream=stream
            )
            for s in range(steps)
        ]
    )


@pytest.mark.parametrize("n", SIZES)
def test_every_epoch_is_a_permutation_for_many_sizes(n):
    """Primes, powers of two and their neighbours, 1, 2, sizes below and above the batch."""
    rng = jax.random.PRNGKey(0)
    for batch in (1, 5, 64):
        steps = max(3 * n // batch + 1, 3)  # >= 3 epochs; batches spanning epoch boundaries
        stream = _stream(rng, n, batch, steps)
        assert stream.dtype == np.int32 and len(stream) == steps * batch
        for epoch in range(len(stream) // n):
            np.testing.assert_array_equal(
                np.sort(stream[epoch * n : (epoch + 1) * n]), np.arange(n)
            )


def test_a_batch_spanning_several_epochs():
    """64 labeled images drawn from 10: one batch holds six whole epochs and part of a seventh."""
    rng = jax.random.PRNGKey(1)
    batch = pipeline.epoch_permutation_indices(rng, 0, dataset_size=10, batch_size=64)
    for epoch in range(6):
        np.testing.assert_array_equal(np.sort(batch[epoch * 10 : (epoch + 1) * 10]), np.arange(10))
    epochs = [tuple(batch[e * 10 : (e + 1) * 10]) for e in range(6)]
    assert len(set(epochs)) > 1  # a fresh permutation every epoch
    next_batch = pipeline.epoch_permutation_indices(rng, 1, dataset_size=10, batch_size=64)
    # Epoch 6 straddles the two batches: 4 positions in batch 0, 6 in batch 1.
    np.testing.assert_array_equal(np.sort(np.r_[batch[60:], next_batch[:6]]), np.arange(10))


@pytest.mark.parametrize("n,batch", [(1, 4), (2, 3), (97, 16), (1000, 256), (40, 64), (4099, 7)])
def test_device_jitted_and_host_numpy_give_identical_indices(n, batch):
    rng = jax.random.PRNGKey(3)
    fn = jax.jit(
        lambda rng, s: pipeline.epoch_permutation_indices(rng, s, dataset_size=n, batch_size=batch)
    )
    for step in (0, 1, 7, 1000, 123457):
        host = pipeline.epoch_permutation_indices(rng, step, dataset_size=n, batch_size=batch)
        assert isinstance(host, np.ndarray)
        device = fn(rng, jnp.int32(step))
        assert isinstance(device, jax.Array) and device.dtype == jnp.int32
        np.testing.assert_array_equal(host, np.asarray(device))


def test_typed_and_raw_keys_draw_the_same_indices():
    raw, typed = jax.random.PRNGKey(5), jax.random.key(5)
    a = pipeline.epoch_permutation_indices(raw, 2, dataset_size=100, batch_size=16)
    b = pipeline.epoch_permutation_indices(typed, 2, dataset_size=100, batch_size=16)
    c = jax.jit(
        lambda k, s: pipeline.epoch_permutation_indices(k, s, dataset_size=100, batch_size=16)
    )(typed, 2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_seeds_streams_and_epochs_give_different_orders():
    n = 1000
    a = pipeline.epoch_permutation_indices(jax.random.PRNGKey(0), 0, dataset_size=n, batch_size=n)
    b = pipeline.epoch_permutation_indices(jax.random.PRNGKey(1), 0, dataset_size=n, batch_size=n)
    c = pipeline.epoch_permutation_indices(jax.random.PRNGKey(0), 1, dataset_size=n, batch_size=n)
    d = pipeline.epoch_permutation_indices(
        jax.random.PRNGKey(0), 0, dataset_size=n, batch_size=n, stream=pipeline.UNLABELED_STREAM
    )
    for other in (b, c, d):
        assert np.mean(a == other) < 0.02  # ~1/n agree by chance


def test_orders_are_not_trivially_structured():
    """A batch is no contiguous run or stride, and position does not predict the index."""
    n, batch = 60_000, 256
    rows = pipeline.epoch_permutation_indices(
        jax.random.PRNGKey(0), 3, dataset_size=n, batch_size=batch
    )
    assert len(np.unique(rows)) == batch
    gaps = np.diff(np.sort(rows))
    assert np.mean(gaps == 1) < 0.05 and len(np.unique(np.diff(rows))) > batch // 2
    # Spread over the pool: each quarter of [0, n) gets 25% +- 10% of the batch.
    quarters = np.bincount(rows * 4 // n, minlength=4)
    assert np.all(np.abs(quarters - batch / 4) < 0.1 * batch)
    order = pipeline.epoch_permutation_indices(
        jax.random.PRNGKey(0), 0, dataset_size=4096, batch_size=4096
    )
    assert abs(np.corrcoef(np.arange(4096), order)[0, 1]) < 0.1
    assert abs(np.corrcoef(order[:-1], order[1:])[0, 1]) < 0.1


def test_positions_are_roughly_uniform_over_seeds():
    """Where index 0 lands in a permutation of 8, over 1,600 keys: each of 8 slots ~200."""
    counts = np.zeros(8, int)
    for seed in range(1600):
        order = pipeline.epoch_permutation_indices(
            jax.random.PRNGKey(seed), 0, dataset_size=8, batch_size=8
        )
        counts[np.flatnonzero(order == 0)[0]] += 1
    chi2 = np.sum((counts - 200) ** 2 / 200)
    assert chi2 < 30, counts  # 7 degrees of freedom: p < 1e-4 for a uniform draw


def test_bad_sizes_and_keys_are_one_line_errors():
    with pytest.raises(ValueError, match="dataset_size"):
        pipeline.epoch_permutation_indices(jax.random.PRNGKey(0), 0, dataset_size=0, batch_size=4)
    with pytest.raises(ValueError, match="PRNG key"):
        pipeline.epoch_permutation_indices(np.zeros(2, np.float32), 0, dataset_size=4, batch_size=4)


def test_batch_indices_on_host_equal_those_inside_jit():
    data = {
        "labels": np.zeros(40, np.int32),
        "unlabeled_labels": np.zeros(60_000, np.int32),
        "sampling_rng": np.asarray(jax.random.PRNGKey(7)),
    }
    host = pipeline.batch_indices(data, 11, batch_size=64, unlabeled_batch_size=256)
    device = jax.jit(
        lambda data, step: pipeline.batch_indices(
            data, step, batch_size=64, unlabeled_batch_size=256
        )
    )(data, 11)
    assert set(host) == {"labeled", "unlabeled"}
    for name in host:
        assert isinstance(host[name], np.ndarray)
        np.testing.assert_array_equal(host[name], np.asarray(device[name]))


def test_sample_batch_gathers_matching_images_and_labels():
    images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
    data = {
        "labeled_images": images[:5],
        "labels": np.arange(5, dtype=np.int32),
        "unlabeled_images": images[5:],
        "unlabeled_labels": np.arange(5, 20, dtype=np.int32),
        "sampling_rng": jax.random.PRNGKey(0),
    }
    batch = pipeline.sample_batch(data, 2, batch_size=4, unlabeled_batch_size=8)
    np.testing.assert_array_equal(np.asarray(batch["labeled_images"])[:, 0, 0, 0], batch["labels"])
    np.testing.assert_array_equal(
        np.asarray(batch["unlabeled_images"])[:, 0, 0, 0], batch["unlabeled_labels"]
    )
    assert batch["unlabeled_images"].shape == (8, 1, 1, 1)
    on_device = jax.jit(
        lambda data, step: pipeline.sample_batch(data, step, batch_size=4, unlabeled_batch_size=8)
    )(jax.device_put(data), 2)
    for name in batch:
        np.testing.assert_array_equal(batch[name], np.asarray(on_device[name]))
