import jax
import numpy as np
import pytest

from comatch_jax import sampling


@pytest.mark.parametrize("n,batch", [(10, 3), (40, 64), (7, 7)])
def test_every_epoch_is_a_permutation(n, batch):
    rng = jax.random.PRNGKey(0)
    steps = 3 * n  # covers several epochs, batches spanning epoch boundaries
    stream = np.concatenate(
        [
            np.asarray(sampling.epoch_permutation_indices(rng, s, dataset_size=n, batch_size=batch))
            for s in range(steps)
        ]
    )
    for epoch in range(len(stream) // n):
        assert sorted(stream[epoch * n : (epoch + 1) * n]) == list(range(n))


def test_indices_are_a_pure_function_of_rng_and_step():
    rng = jax.random.PRNGKey(3)
    a = sampling.epoch_permutation_indices(rng, 5, dataset_size=100, batch_size=16)
    b = jax.jit(
        lambda s: sampling.epoch_permutation_indices(rng, s, dataset_size=100, batch_size=16)
    )(5)
    np.testing.assert_array_equal(a, b)
    c = sampling.epoch_permutation_indices(
        jax.random.PRNGKey(4), 5, dataset_size=100, batch_size=16
    )
    assert not np.array_equal(a, c)


def test_sample_batch_gathers_matching_images_and_labels():
    images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
    data = {
        "labeled_images": images[:5],
        "labels": np.arange(5, dtype=np.int32),
        "unlabeled_images": images[5:],
        "unlabeled_labels": np.arange(5, 20, dtype=np.int32),
        "sampling_rng": jax.random.PRNGKey(0),
    }
    batch = sampling.sample_batch(data, 2, batch_size=4, unlabeled_batch_size=8)
    np.testing.assert_array_equal(np.asarray(batch["labeled_images"])[:, 0, 0, 0], batch["labels"])
    np.testing.assert_array_equal(
        np.asarray(batch["unlabeled_images"])[:, 0, 0, 0], batch["unlabeled_labels"]
    )
    assert batch["unlabeled_images"].shape == (8, 1, 1, 1)
