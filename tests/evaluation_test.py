"""evaluation.evaluate: masked sums over padded batches, batches no larger than the set."""

import jax
import numpy as np
import pytest

from comatch_jax.core import evaluation


def _counting_step(shapes):
    """A stand-in eval step: `correct` counts even labels, `nll` sums the labels."""

    def eval_step(params, batch_stats, images, labels, mask):
        shapes.append(np.shape(images))
        labels, mask = np.asarray(labels), np.asarray(mask)
        return {
            "correct": np.sum(mask * (labels % 2 == 0)),
            "nll": np.sum(mask * labels),
            "count": np.sum(mask),
        }

    return eval_step


@pytest.mark.parametrize("batch_size, batches", [(2, [2, 2, 2]), (5, [5]), (100_000, [5])])
def test_evaluate_masks_the_padding_and_never_pads_beyond_the_set(batch_size, batches):
    images = np.zeros((5, 3, 3, 1), np.uint8)
    labels = np.array([0, 1, 2, 3, 4], np.int32)  # 3 of 5 even, mean 2.0
    shapes = []
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    result = evaluation.evaluate(
        _counting_step(shapes), None, None, images, labels, batch_size, sharding=sharding
    )
    assert result == {"accuracy": 3 / 5, "nll": 2.0}
    assert [shape[0] for shape in shapes] == batches
