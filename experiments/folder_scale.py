"""An image folder at the paper's scale: decode-cache build, incremental update, and the loop.

Issue 15, item 4. On a folder made by `make_synthetic_folder.py` (e.g. 512,000 unlabeled +
25,600 labeled + 8,000 val images of 96 px, 800 classes):

  build        `datasets.load_image_folder` from an empty cache, in a child process: wall
               time, images/s, the child's peak RSS (getrusage of children: the memory the
               build really needed, not this driver's) and the cache's size on disk
  incremental  --add copies of existing unlabeled JPEGs written under unlabeled/_added/ (new
               paths), then the load again (the unlabeled part is decoded again); then they
               are removed and the load again
  loop         `train.train_and_evaluate`'s loop (main's) on the host path (data_on_device
               false: batches gathered from the memory-mapped cache) with the competition96
               shapes (96 px, 800 classes, B = 64, mu = 4, queue 30,000) and a small model,
               at each --pools unlabeled pool size (the first N cached rows); seconds per
               step timed between log lines after the first (compilation excluded)

  python experiments/folder_scale.py --root=/data/synthetic96 --json_out=scale.json

Each part is a separate child process so that the RSS and the timings of one do not include
another's. Needs TensorFlow (the folder decoder); writes nothing but the cache, the
temporary added files (removed again) and --json_out.
"""

import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_string("root", "", "The image folder (labeled/, unlabeled/, val/).")
flags.DEFINE_integer("image_size", 96, "Decoded side in pixels.")
flags.DEFINE_string("cache_dir", "", "Cache folder ('' = ROOT/.comatch_cache).")
flags.DEFINE_bool("fresh", True, "Remove the cache first, so that the build is timed from zero.")
flags.DEFINE_integer("add", 1000, "Images added (and removed again) for the incremental figures.")
flags.DEFINE_list("pools", ["512000", "5000"], "Unlabeled pool sizes of the timed loops.")
flags.DEFINE_integer("loop_steps", 50, "Loop steps per pool.")
flags.DEFINE_string("model", "small_cnn", "Model of the timed loops.")
flags.DEFINE_string("json_out", "", "Also write the figures as JSON here.")
flags.DEFINE_string("part", "", "Internal: run one part in this process (build / loop).")
flags.DEFINE_integer("pool", 0, "Internal: the loop's pool size.")
FLAGS = flags.FLAGS


def _cache_dir():
    return FLAGS.cache_dir or os.path.join(os.path.abspath(FLAGS.root), ".comatch_cache")


def _size_on_disk(directory):
    return sum(
        os.path.getsize(os.path.join(parent, name))
        for parent, _, names in os.walk(directory)
        for name in names
    )


def _load():
    from comatch_jax import data as datasets

    return datasets.load_image_folder(
        FLAGS.root, image_size=FLAGS.image_size, cache_dir=FLAGS.cache_dir or None
    )


def _part_build():
    start = time.perf_counter()
    dataset = _load()
    seconds = time.perf_counter() - start
    images = len(dataset.train_images) + len(dataset.test_images) + len(dataset.unlabeled_images)
    return {"seconds": seconds, "images": images, "mean": dataset.mean, "std": dataset.std}


def _part_loop(pool):
    from comatch_jax import cli

    cli.apply_default_cpu_flags()  # as comatch_jax.main does
    from comatch_jax import config_lib
    from comatch_jax.trainer import train

    dataset = _load()
    if pool > len(dataset.unlabeled_images):
        raise ValueError(f"--pools asks for {pool} images; the folder has {len(dataset.unlabeled_images)}")
    dataset = dataclasses.replace(
        dataset,
        unlabeled_images=dataset.unlabeled_images[:pool],
        unlabeled_paths=dataset.unlabeled_paths[:pool],
    )
    config = config_lib.config_file("comatch", "competition96")
    config.dataset.root = os.path.abspath(FLAGS.root)
    config.dataset.image_size = FLAGS.image_size
    config.model.name = FLAGS.model
    config.num_steps = FLAGS.loop_steps
    config.log_every = 10
    config.eval_every = config.checkpoint_every = 10 * FLAGS.loop_steps
    config.data_on_device = False
    times = []

    class TimingWriter:
        def write_scalars(self, step, scalars):
            if "train/loss" in scalars:
                times.append((step, time.perf_counter()))

        def flush(self):
            pass

    with tempfile.TemporaryDirectory() as workdir:
        train.train_and_evaluate(config, workdir, writer=TimingWriter(), dataset=dataset)
    (first_step, first), (last_step, last) = times[0], times[-1]
    images_per_step = config.batch_size * (1 + config.mu)
    step_s = (last - first) / (last_step - first_step)
    return {"pool": pool, "step_s": step_s, "images_per_s": images_per_step / step_s,
            "timed_steps": last_step - first_step}


def _child(*args):
    """Runs this script with --part=...; returns (its JSON result, peak RSS of children, s)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    command = [sys.executable, os.path.abspath(__file__), f"--root={FLAGS.root}",
               f"--image_size={FLAGS.image_size}", f"--cache_dir={FLAGS.cache_dir}",
               f"--loop_steps={FLAGS.loop_steps}", f"--model={FLAGS.model}",
               f"--json_out={out}", *args]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    with open(out) as f:
        result = json.load(f)
    os.remove(out)
    # ru_maxrss: KiB on Linux; the largest child waited for so far (each part is measured
    # after the earlier, smaller ones, and reported with that caveat).
    rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return result, rss_gib, seconds


def _add_copies(n):
    """Copies the first n unlabeled files to ROOT/unlabeled/_added/ (new paths); returns it."""
    from comatch_jax.data import image_folder

    entries = image_folder.scan_unlabeled(os.path.abspath(FLAGS.root))[:n]
    target = os.path.join(FLAGS.root, "unlabeled", "_added")
    os.makedirs(target)
    for i, (rel_path, _, _) in enumerate(entries):
        shutil.copyfile(os.path.join(FLAGS.root, rel_path), os.path.join(target, f"{i:06d}.jpg"))
    return target


def main(argv):
    del argv
    if not FLAGS.root or not os.path.isdir(FLAGS.root):
        raise app.UsageError(f"--root={FLAGS.root!r} is not a folder; make one with make_synthetic_folder.py")
    if FLAGS.part:
        result = _part_build() if FLAGS.part == "build" else _part_loop(FLAGS.pool)
        with open(FLAGS.json_out, "w") as f:
            json.dump(result, f)
        return
    figures = {"root": os.path.abspath(FLAGS.root), "cpus": os.cpu_count()}
    if FLAGS.fresh and os.path.isdir(_cache_dir()):
        shutil.rmtree(_cache_dir())
    build, rss, _ = _child("--part=build")
    build.update(images_per_s=build["images"] / build["seconds"], peak_rss_gib=rss,
                 cache_bytes=_size_on_disk(_cache_dir()))
    figures["build"] = build
    print("build:", json.dumps(build), flush=True)
    reload, _, _ = _child("--part=build")
    figures["reload_unchanged_s"] = reload["seconds"]
    if FLAGS.add:
        added = _add_copies(FLAGS.add)
        try:
            grown, _, _ = _child("--part=build")
        finally:
            shutil.rmtree(added)
        shrunk, _, _ = _child("--part=build")
        figures["incremental"] = {"added": FLAGS.add, "add_s": grown["seconds"],
                                  "images_after_add": grown["images"],
                                  "remove_s": shrunk["seconds"],
                                  "images_after_remove": shrunk["images"]}
        print("incremental:", json.dumps(figures["incremental"]), flush=True)
    figures["loops"] = []
    for pool in map(int, FLAGS.pools):
        loop, rss, _ = _child("--part=loop", f"--pool={pool}")
        loop["peak_rss_gib_so_far"] = rss
        figures["loops"].append(loop)
        print("loop:", json.dumps(loop), flush=True)
    if len(figures["loops"]) >= 2:
        figures["loop_ratio_first_over_last"] = (
            figures["loops"][-1]["step_s"] / figures["loops"][0]["step_s"]
        )
    print(json.dumps(figures, indent=1))
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    app.run(main)
