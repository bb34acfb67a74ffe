"""Time the batch indices of one unlabeled batch at several pool sizes (jitted and on the host).

  python experiments/sampler_timing.py                                  # this tree's sampler
  python experiments/sampler_timing.py --sampling_py=/path/to/old/sampling.py   # another version

The host figure is whatever `sampling.epoch_permutation_indices` does for an untraced step
(the host-batch path): NumPy in the Feistel sampler, eager JAX in the permutation sampler.
"""

import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

flags.DEFINE_string("sampling_py", "", "Path of a sampling.py to time ('' = comatch_jax's).")
flags.DEFINE_list("pools", ["1000", "60000", "512000"], "Pool sizes.")
flags.DEFINE_integer("batch_size", 256, "Indices per call.")
flags.DEFINE_integer("repeats", 20, "Timed calls per figure (median).")
FLAGS = flags.FLAGS


def _median_ms(fn, repeats):
    jax.block_until_ready(fn(0))
    times = []
    for step in range(1, repeats + 1):
        start = time.perf_counter()
        jax.block_until_ready(fn(step))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main(argv):
    del argv
    if FLAGS.sampling_py:
        spec = importlib.util.spec_from_file_location("sampling_under_test", FLAGS.sampling_py)
        sampling = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sampling)
    else:
        from comatch_jax.data import pipeline as sampling
    rng = jax.random.PRNGKey(0)
    print(f"{'pool':>8s} {'jitted ms':>10s} {'host ms':>10s}")
    for pool in map(int, FLAGS.pools):
        kwargs = dict(dataset_size=pool, batch_size=FLAGS.batch_size)
        jitted = jax.jit(lambda s: sampling.epoch_permutation_indices(rng, s, **kwargs))
        jit_ms = _median_ms(lambda s: jitted(jnp.int32(s)), FLAGS.repeats)
        host_ms = _median_ms(
            lambda s: np.asarray(sampling.epoch_permutation_indices(rng, s, **kwargs)),
            FLAGS.repeats,
        )
        print(f"{pool:8d} {jit_ms:10.3f} {host_ms:10.3f}", flush=True)


if __name__ == "__main__":
    app.run(main)
