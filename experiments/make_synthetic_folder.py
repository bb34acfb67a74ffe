"""Writes an image folder of synthetic, learnable JPEGs in the layout the image-folder source reads.

  DIR/labeled/<class>/l_0000000.jpg     --num_labeled images, classes in turn (balanced)
  DIR/unlabeled/<shard>/u_0000000.jpg   --num_unlabeled images, 10,000 per shard folder
  DIR/val/<class>/v_0000000.jpg         --num_val images, balanced (none: no val/ folder)
  DIR/unlabeled_truth.csv               path,label of every unlabeled image (for monitoring)

Each class has a shape (disc, square, triangle, ring, cross), a foreground and background
colour and a stripe texture (frequency, orientation) drawn from the seed; each image jitters
position, size, colours and stripe phase and adds Gaussian pixel noise, so a model can learn
the classes but not from a single pixel. Image i of a split depends only on (seed, split, i):
the output is the same for any --workers, and the script holds one image per worker in memory.

  python experiments/make_synthetic_folder.py --out=/data/synthetic96 \\
      --num_labeled=25600 --num_unlabeled=512000 --num_val=8000 --num_classes=800 --workers=2

Needs Pillow (pip install pillow).
"""

import csv
import itertools
import multiprocessing
import os
import sys
import time

import numpy as np
from absl import app, flags

flags.DEFINE_string("out", "", "Folder to create (must not exist or be empty).")
flags.DEFINE_integer("num_labeled", 1000, "Labeled images (labeled/<class>/), classes in turn.")
flags.DEFINE_integer("num_unlabeled", 10000, "Unlabeled images (unlabeled/<shard>/).")
flags.DEFINE_integer("num_val", 500, "Validation images (val/<class>/); 0 = no val/ folder.")
flags.DEFINE_integer("num_classes", 10, "Classes.")
flags.DEFINE_integer("image_size", 96, "Image side in pixels.")
flags.DEFINE_integer("quality", 90, "JPEG quality.")
flags.DEFINE_float("noise", 12.0, "Std of the Gaussian pixel noise (0-255 scale).")
flags.DEFINE_integer("seed", 0, "Seed: the same seed writes the same files.")
flags.DEFINE_integer("workers", 1, "Processes encoding images.")
FLAGS = flags.FLAGS

SHAPES = ("disc", "square", "triangle", "ring", "cross")
SPLITS = {"labeled": 0, "unlabeled": 1, "val": 2}
SHARD = 10_000  # unlabeled images per sub-folder
BLOCK = 4_096  # jobs handed to the worker pool at a time (bounded memory)
_CACHE: dict = {}  # per process: the pixel grid and the class parameters, computed once


def class_names(num_classes: int) -> list[str]:
    width = len(str(num_classes - 1))
    return [f"class_{c:0{width}d}" for c in range(num_classes)]


def class_params(seed: int, num_classes: int) -> dict[str, np.ndarray]:
    """Per-class shape index, colours (float [C, 3], 0-255), stripe frequency and angle."""
    rng = np.random.default_rng([seed, 1_000_003])
    return {
        "shape": np.arange(num_classes) % len(SHAPES),
        "foreground": rng.uniform(40, 255, (num_classes, 3)),
        "background": rng.uniform(0, 200, (num_classes, 3)),
        "frequency": rng.uniform(1.5, 8.0, num_classes),  # stripe cycles per image side
        "angle": rng.uniform(0, np.pi, num_classes),
    }


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    key = ("grid", size)
    if key not in _CACHE:
        y, x = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)
        _CACHE[key] = (y, x)
    return _CACHE[key]


def render(params, label: int, rng: np.random.Generator, size: int, noise: float) -> np.ndarray:
    """One uint8 [size, size, 3] image of class `label` (float32 arithmetic)."""
    f32 = np.float32
    y, x = _grid(size)
    cx, cy = rng.uniform(0.3, 0.7, 2).astype(f32)
    radius = f32(rng.uniform(0.18, 0.32))
    dx, dy = x - cx, y - cy
    shape = SHAPES[params["shape"][label]]
    if shape == "disc":
        mask = dx * dx + dy * dy < radius * radius
    elif shape == "square":
        mask = np.maximum(abs(dx), abs(dy)) < radius * f32(0.85)
    elif shape == "triangle":
        mask = (dy < radius * f32(0.8)) & (abs(dx) < (dy + radius) * f32(0.6))
    elif shape == "ring":
        mask = abs(np.sqrt(dx * dx + dy * dy) - radius * f32(0.8)) < radius * f32(0.25)
    else:  # cross
        mask = (np.minimum(abs(dx), abs(dy)) < radius * f32(0.3)) & (
            np.maximum(abs(dx), abs(dy)) < radius
        )
    angle = params["angle"][label] + rng.normal(0, 0.1)
    phase = f32(rng.uniform(0, 2 * np.pi))
    frequency = f32(2 * np.pi * params["frequency"][label])
    stripes = np.sin(frequency * (x * f32(np.cos(angle)) + y * f32(np.sin(angle))) + phase)
    foreground = (params["foreground"][label] + rng.normal(0, 12, 3)).astype(f32)
    background = (params["background"][label] + rng.normal(0, 12, 3)).astype(f32)
    stripes = stripes[..., None]
    image = np.where(
        mask[..., None],
        foreground * (f32(0.7) + f32(0.3) * stripes),
        background * (f32(0.9) + f32(0.1) * stripes),
    )
    image += rng.standard_normal(image.shape, dtype=f32) * f32(noise)
    return np.clip(image, 0, 255).astype(np.uint8)


def _job(args):
    """Renders and writes one image; returns its relative path and label."""
    out, split, index, seed, num_classes, size, noise, quality = args
    from PIL import Image

    rng = np.random.default_rng([seed, SPLITS[split], index])
    if split == "unlabeled":
        label = int(rng.integers(num_classes))
        relative = os.path.join(split, f"{index // SHARD:03d}", f"u_{index:07d}.jpg")
    else:
        label = index % num_classes
        name = _names(num_classes)[label]
        relative = os.path.join(split, name, f"{split[0]}_{index:07d}.jpg")
    image = render(_params(seed, num_classes), label, rng, size, noise)
    Image.fromarray(image).save(os.path.join(out, relative), quality=quality)
    return relative, label


def _names(num_classes):
    if ("names", num_classes) not in _CACHE:
        _CACHE[("names", num_classes)] = class_names(num_classes)
    return _CACHE[("names", num_classes)]


def _params(seed, num_classes):
    key = ("params", seed, num_classes)
    if key not in _CACHE:
        _CACHE[key] = class_params(seed, num_classes)
    return _CACHE[key]


def make_folder(
    out: str,
    *,
    num_labeled: int,
    num_unlabeled: int,
    num_val: int,
    num_classes: int,
    image_size: int = 96,
    quality: int = 90,
    noise: float = 12.0,
    seed: int = 0,
    workers: int = 1,
) -> dict[str, float]:
    """Writes the folder (layout in the module docstring); returns counts, seconds, bytes.

    Raises ValueError for an existing non-empty `out`, fewer labeled images than classes, or
    non-positive sizes.
    """
    if num_classes < 1 or image_size < 8 or num_labeled < num_classes:
        raise ValueError(
            f"need num_classes >= 1, image_size >= 8 and num_labeled >= num_classes; got "
            f"{num_classes}, {image_size}, {num_labeled}"
        )
    if num_unlabeled < 0 or num_val < 0:
        raise ValueError("num_unlabeled and num_val must be >= 0")
    if os.path.isdir(out) and os.listdir(out):
        raise ValueError(f"{out} exists and is not empty; choose a new folder")
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ValueError("make_synthetic_folder needs Pillow: pip install pillow") from None
    names = class_names(num_classes)
    counts = {"labeled": num_labeled, "unlabeled": num_unlabeled, "val": num_val}
    for split in ("labeled", "val"):
        if counts[split]:
            for name in names:
                os.makedirs(os.path.join(out, split, name), exist_ok=True)
    for shard in range((num_unlabeled + SHARD - 1) // SHARD):
        os.makedirs(os.path.join(out, "unlabeled", f"{shard:03d}"), exist_ok=True)

    def jobs():
        for split, count in counts.items():
            for index in range(count):
                yield out, split, index, seed, num_classes, image_size, noise, quality

    start = time.perf_counter()
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        if pool:  # Pool.imap queues its whole input at once: feed it in blocks instead
            blocks = iter(lambda it=jobs(): list(itertools.islice(it, BLOCK)), [])
            results = itertools.chain.from_iterable(
                pool.imap(_job, block, chunksize=64) for block in blocks
            )
        else:
            results = map(_job, jobs())
        with open(os.path.join(out, "unlabeled_truth.csv"), "w", newline="") as f:
            truth = csv.writer(f)
            truth.writerow(["path", "label"])
            for relative, label in results:
                if relative.startswith("unlabeled"):
                    truth.writerow([os.path.relpath(relative, "unlabeled"), names[label]])
    finally:
        if pool:
            pool.close()
            pool.join()
    seconds = time.perf_counter() - start
    total = sum(counts.values())
    size_bytes = sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, files in os.walk(out)
        for name in files
    )
    return {
        **{f"num_{split}": count for split, count in counts.items()},
        "seconds": seconds,
        "images_per_s": total / seconds if seconds else 0.0,
        "bytes": size_bytes,
    }


def main(argv):
    del argv
    if not FLAGS.out:
        raise app.UsageError("--out=DIR is required")
    try:
        figures = make_folder(
            FLAGS.out,
            num_labeled=FLAGS.num_labeled,
            num_unlabeled=FLAGS.num_unlabeled,
            num_val=FLAGS.num_val,
            num_classes=FLAGS.num_classes,
            image_size=FLAGS.image_size,
            quality=FLAGS.quality,
            noise=FLAGS.noise,
            seed=FLAGS.seed,
            workers=FLAGS.workers,
        )
    except ValueError as error:
        sys.exit(f"make_synthetic_folder: {error}")
    for key, value in figures.items():
        print(f"{key:16s} {value:.4g}" if isinstance(value, float) else f"{key:16s} {value}")


if __name__ == "__main__":
    app.run(main)
