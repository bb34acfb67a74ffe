"""Speed of the pieces of a CoMatch step, and of the training loop, on whatever JAX runs on.

Figures (median of --repeats timed calls after warm-up), as ms/step and images/s:
  augment     the views of one batch (weak labeled, weak + 2 strong unlabeled)
  bare_step   forward + losses + update + queue + EMA on ready-made views (no augmentation)
  full_step   augment + bare step, batch already on the device
  loop        train.train_and_evaluate's loop on in-memory random data (sampling on the
              device, or with --host_path gathered on the host; logging, no evaluation), per
              step, with an unlabeled pool of --pool_size images; loop_over_full_step is the
              loop's speed over the full step's
  serial_host_loop / prefetch_host_loop (with --host_path)  a bare loop of the jitted step
              fed by prefetch.host_batch, called in turn or from a prefetch.Prefetcher
plus the compiled step's FLOPs (XLA cost analysis), achieved FLOP/s, peak device memory
(where the backend reports it) and host RSS. Needs no TensorFlow.

  python experiments/benchmark.py                         # the CPU default config
  python experiments/benchmark.py --preset=cifar10_40 --dtype=bfloat16   # on a GPU
  taskset -c 0,1 python experiments/benchmark.py          # 2 cores
  python experiments/benchmark.py --preset=cifar10_40 --batch_size=8 --mu=1   # WRN-28-2 on a CPU
  python experiments/benchmark.py --pool_size=512000 --host_path   # the host path, paper's pool
"""

import json
import os
import resource
import tempfile
import time

from comatch_jax import cli

cli.apply_default_cpu_flags()  # before JAX starts a backend, as comatch_jax.main does

import jax
import numpy as np
from absl import app, flags

import gpu_evidence  # experiments/gpu_evidence.py: the smoke config (no side effects)
from comatch_jax import config_lib
from comatch_jax.data import pipeline as prefetch
from comatch_jax.trainer import saved_runs as runs, train
from comatch_jax.core import train_step

flags.DEFINE_string("preset", "", "A config preset (comatch.py's), '' = the CPU default.")
flags.DEFINE_string("method", "comatch", "Method to time.")
flags.DEFINE_string("dtype", "", "Override model.dtype (float32 / bfloat16).")
flags.DEFINE_integer("image_size", 0, "Override the image side (0 = the dataset's).")
flags.DEFINE_integer("num_classes", 0, "Override the number of classes (0 = the dataset's).")
flags.DEFINE_integer("batch_size", 0, "Override the labeled batch size (0 = the config's).")
flags.DEFINE_integer("mu", 0, "Override the unlabeled ratio mu (0 = the config's).")
flags.DEFINE_integer("repeats", 10, "Timed calls per figure.")
flags.DEFINE_integer("loop_steps", 50, "Steps of the training loop to time (0 = skip the loop).")
flags.DEFINE_integer(
    "pool_size", 0, "Unlabeled images of the timed loop (0 = max(4 * unlabeled batch, 1000))."
)
flags.DEFINE_bool(
    "host_path",
    False,
    "Loop: gather each batch on the host and transfer it (the image-folder cache path) "
    "instead of sampling from arrays on the device; also times bare host-fed loops with and "
    "without prefetching.",
)
flags.DEFINE_string("json_out", "", "Also write the figures as JSON here.")
flags.DEFINE_bool(
    "smoke",
    False,
    "gpu_evidence.smoke_config's tiny model and queue, and the weak view in the strong slots "
    "(compiles in seconds on a CPU; for smoke tests, not for figures).",
)
FLAGS = flags.FLAGS

_SHAPES = {
    "fashion_mnist": (28, 1, 10),
    "cifar10": (32, 3, 10),
    "cifar100": (32, 3, 100),
    "stl10": (96, 3, 10),
    "image_folder": (96, 3, 800),
}


def _median_seconds(fn, repeats):
    jax.block_until_ready(fn())  # compile + warm-up
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _random_images(n, size, channels, seed=0):
    """uint8 [n, size, size, channels] noise, made in chunks (no int64 temporaries)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, channels), np.uint8)
    for start in range(0, n, 65536):
        images[start : start + 65536] = rng.integers(
            0, 256, images[start : start + 65536].shape, dtype=np.uint8
        )
    return images


def _random_dataset(size, channels, num_classes, num_labels, num_unlabeled):
    from comatch_jax.data import ImageDataset

    rng = np.random.default_rng(0)
    n = num_labels + num_unlabeled
    labels = (np.arange(n) % num_classes).astype(np.int32)
    return ImageDataset(
        train_images=_random_images(n, size, channels),
        train_labels=labels,
        test_images=rng.integers(0, 256, (num_classes, size, size, channels), dtype=np.uint8),
        test_labels=np.arange(num_classes, dtype=np.int32),
        num_classes=num_classes,
        class_names=tuple(map(str, range(num_classes))),
        source="random (benchmark)",
    )


class _TimingWriter:
    """Records when each training-metrics line is written."""

    def __init__(self):
        self.times = []

    def write_scalars(self, step, scalars):
        if "train/loss" in scalars:  # the trainer's training line
            self.times.append((step, time.perf_counter()))

    def flush(self):
        pass


def benchmark_config(preset="", *, method="comatch", dtype="", batch_size=0, mu=0):
    """The config a benchmark times: `preset` (configs/comatch.py's; '' = the CPU default)
    with `method` and, where given (non-empty / non-zero), model.dtype, batch_size and mu."""
    config = config_lib.config_file("comatch", preset)
    config.method = method
    if dtype:
        config.model.dtype = dtype
    if batch_size:
        config.batch_size = batch_size
    if mu:
        config.mu = mu
    return config


def input_shape(config, image_size=0, num_classes=0):
    """(image side, channels, classes) of config.dataset, with the overrides where non-zero."""
    size, channels, classes = _SHAPES[config.dataset.name]
    return image_size or size, channels, num_classes or classes


def measure(
    config,
    size,
    channels,
    num_classes,
    *,
    repeats=10,
    loop_steps=50,
    pool_size=0,
    host_path=False,
    preset="",
):
    """The figures of the module docstring for `config` at images size x size x channels and
    `num_classes` classes, as a dict (seconds, images/s, GFLOP, GiB). loop_steps=0 skips the
    loop; pool_size=0 means max(4 * unlabeled batch, 1000)."""
    if not config.dataset.mean:  # () = from the data: the trainer resolves it, this must too
        from comatch_jax.data import STANDARD_STATISTICS

        config = config.copy_and_resolve_references()
        config.dataset.mean, config.dataset.std = STANDARD_STATISTICS[config.dataset.name]
    method, model, tx, init_state = runs.build_training(config, num_classes, (size, size, channels))
    # Replicated as the trainer's, so that the state a step returns has the input's sharding
    # and the host loops call the step compiled once.
    replicated = jax.sharding.NamedSharding(_batch_sharding().mesh, jax.sharding.PartitionSpec())
    state = jax.jit(lambda: init_state(jax.random.key(0)), out_shardings=replicated)()
    b, u = config.batch_size, config.batch_size * config.mu
    rng = np.random.default_rng(0)
    batch = jax.device_put(
        {
            "labeled_images": rng.integers(0, 256, (b, size, size, channels), dtype=np.uint8),
            "labels": (np.arange(b) % num_classes).astype(np.int32),
            "unlabeled_images": rng.integers(0, 256, (u, size, size, channels), dtype=np.uint8),
            "unlabeled_labels": (np.arange(u) % num_classes).astype(np.int32),
        },
        _batch_sharding(),  # as prefetch.host_batch's, so the host loops reuse the compiled step
    )
    images_per_step = b * len(method.labeled_views) + u * len(method.unlabeled_views)
    figures = {
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(),
        "preset": preset or "cpu_default",
        "dtype": config.model.dtype,
        "images_per_step": images_per_step,
        "model": config.model.name,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }

    make_views = jax.jit(lambda key, batch: train_step.make_views(key, batch, method, config))
    figures["augment_s"] = _median_seconds(lambda: make_views(jax.random.key(1), batch), repeats)

    # The bare step: the same step with every view slot set to 'none' (no augmentation).
    bare_config = config.copy_and_resolve_references()
    for slot in train_step.VIEW_SLOTS:
        bare_config.augment[slot] = "none"
    bare = jax.jit(
        train_step.make_train_step(model=model, tx=tx, method=method, config=bare_config)
    )
    full = jax.jit(train_step.make_train_step(model=model, tx=tx, method=method, config=config))
    full_compiled = full.lower(state, batch).compile()  # timed, and its cost analysed
    figures["bare_step_s"] = _median_seconds(lambda: bare(state, batch)[1], repeats)
    figures["full_step_s"] = _median_seconds(lambda: full_compiled(state, batch)[1], repeats)
    cost = full_compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    figures["step_gflop"] = float(cost.get("flops", 0.0)) / 1e9
    figures["achieved_gflop_per_s"] = figures["step_gflop"] / figures["full_step_s"]

    # The training loop of main (sampling on the device, logging, checkpoint at the end),
    # timed between its log lines after the first (which includes compilation).
    if loop_steps:
        figures["pool_size"] = pool_size or max(4 * u, 1000)
        figures["host_path"] = host_path
        figures.update(
            time_loop(
                config, size, channels, num_classes, figures["pool_size"], loop_steps, host_path
            )
        )
        if host_path:
            figures.update(
                _time_host_loops(
                    full,
                    state,
                    size,
                    channels,
                    num_classes,
                    b,
                    u,
                    figures["pool_size"],
                    loop_steps,
                    repeats,
                )
            )
        # The config's whole schedule (e.g. 2^19 steps for CIFAR-10) at the loop's speed.
        figures["schedule_steps"] = config.num_steps
        figures["projected_schedule_hours"] = config.num_steps * figures["loop_s"] / 3600
    timed = ("augment", "bare_step", "full_step", "loop", "serial_host_loop", "prefetch_host_loop")
    for name in timed:
        if f"{name}_s" in figures:
            figures[f"{name}_images_per_s"] = images_per_step / figures[f"{name}_s"]
    if "loop_s" in figures:
        figures["loop_over_full_step"] = figures["full_step_s"] / figures["loop_s"]
    figures["augment_fraction_of_full_step"] = figures["augment_s"] / figures["full_step_s"]
    figures["peak_device_memory_gib"] = peak_device_memory_gib()
    figures["host_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return figures


def peak_device_memory_gib():
    """Peak bytes in use on the first device (jax memory_stats) in GiB; 0 where the backend
    reports none (the CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", 0) / 2**30


def main(argv):
    del argv
    config = benchmark_config(
        FLAGS.preset,
        method=FLAGS.method,
        dtype=FLAGS.dtype,
        batch_size=FLAGS.batch_size,
        mu=FLAGS.mu,
    )
    if FLAGS.smoke:
        gpu_evidence.smoke_config(config)
    size, channels, num_classes = input_shape(config, FLAGS.image_size, FLAGS.num_classes)
    figures = measure(
        config,
        size,
        channels,
        num_classes,
        repeats=FLAGS.repeats,
        loop_steps=FLAGS.loop_steps,
        pool_size=FLAGS.pool_size,
        host_path=FLAGS.host_path,
        preset=FLAGS.preset,
    )
    for key, value in figures.items():
        print(f"{key:32s} {value:.4g}" if isinstance(value, float) else f"{key:32s} {value}")
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(figures, f, indent=2)


def time_loop(config, size, channels, num_classes, pool_size, loop_steps, host_path=False):
    """{"loop_s": seconds per step} of train.train_and_evaluate's loop (main's) on random
    in-memory data with an unlabeled pool of `pool_size` images, sampled on the device or,
    with host_path, gathered on the host; timed between log lines after the first."""
    b = config.batch_size
    loop_config = config.copy_and_resolve_references()
    loop_config.num_labels = max(b, num_classes) // num_classes * num_classes
    loop_config.num_steps = loop_steps
    loop_config.log_every = max(loop_steps // 5, 1)
    loop_config.eval_every = loop_config.checkpoint_every = 10 * loop_steps
    loop_config.data_on_device = not host_path
    dataset = _random_dataset(size, channels, num_classes, loop_config.num_labels, pool_size)
    writer = _TimingWriter()
    with tempfile.TemporaryDirectory() as workdir:
        train.train_and_evaluate(loop_config, workdir, writer=writer, dataset=dataset)
    (first_step, first_time), (last_step, last_time) = writer.times[0], writer.times[-1]
    return {"loop_s": (last_time - first_time) / (last_step - first_step)}


def _batch_sharding():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def _time_host_loops(
    full, state, size, channels, num_classes, b, u, pool_size, loop_steps, repeats
):
    """Seconds per step of the jitted full step fed by prefetch.host_batch from host arrays
    (an unlabeled pool of `pool_size`), called in turn (serial) or prefetched in a thread."""
    arrays = {
        "labeled_images": _random_images(max(b, num_classes), size, channels, seed=1),
        "labels": (np.arange(max(b, num_classes)) % num_classes).astype(np.int32),
        "unlabeled_images": _random_images(pool_size, size, channels, seed=2),
        "unlabeled_labels": (np.arange(pool_size) % num_classes).astype(np.int32),
        "sampling_rng": jax.random.key(0),
    }
    make = lambda step: prefetch.host_batch(
        arrays, step, batch_size=b, unlabeled_batch_size=u, sharding=_batch_sharding()
    )
    steps = loop_steps
    figures = {"host_batch_s": _median_seconds(lambda: make(0), repeats)}

    def run(next_batch):
        # Two untimed steps (the first may compile).
        current, metrics = full(state, next_batch(0))
        current, metrics = full(current, next_batch(1))
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for step in range(2, steps + 2):
            current, metrics = full(current, next_batch(step))
        jax.block_until_ready(metrics)
        return (time.perf_counter() - start) / steps

    figures["serial_host_loop_s"] = run(make)
    with prefetch.Prefetcher(make, start_step=0, stop_step=steps + 2, depth=2) as batches:
        figures["prefetch_host_loop_s"] = run(batches.get)
    return figures


if __name__ == "__main__":
    app.run(main)
