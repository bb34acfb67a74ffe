"""Predictions for a folder of images with a trained run's EMA model.

  python -m comatch_jax.commands.predict --workdir=RUN --images=DIR --out=preds.csv [--top_k=5]

Every image under DIR (recursively; .jpg .jpeg .png .webp) is decoded and resized to the
run's image size with tf.data (into a temporary uint8 cache), then scored in jitted
batches with a progress bar. The CSV has: path (relative to DIR), predicted class name,
confidence, and with --top_k > 1 the top-k classes and probabilities.
"""

import csv
import os
import tempfile

import numpy as np
from absl import flags, logging

from comatch_jax.commands import active_learning
from comatch_jax import atomic_files, cli
from comatch_jax.core import inference
from comatch_jax.trainer import saved_runs as runs

# What the dataset reader advises for an unreadable image, and predict's own flag for it.
_TRAINING_SKIP_FLAG = "--config.dataset.corrupt_policy=skip"
_PREDICT_SKIP_FLAG = "--corrupt_policy=skip"

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags, defined only when run as a command (modules import cleanly)."""
    flags.DEFINE_string("workdir", None, "The trained run's workdir.")
    flags.DEFINE_string("images", None, "Directory of images to classify.")
    flags.DEFINE_string("out", None, "Output CSV path.")
    flags.DEFINE_integer("top_k", 1, "Also write the k most probable classes.")
    flags.DEFINE_integer("batch_size", 256, "Images per forward pass.")
    flags.DEFINE_enum(
        "corrupt_policy", "fail", ["fail", "skip"], "Unreadable images: fail or skip."
    )
    flags.mark_flags_as_required(["workdir", "images", "out"])


def predict_folder(
    workdir: str,
    images_dir: str,
    out: str,
    *,
    top_k: int = 1,
    batch_size: int = 256,
    corrupt_policy: str = "fail",
) -> int:
    """Writes the predictions CSV (whole: a temporary file renamed when complete; paths
    quoted as the csv module does, so any file name round-trips); returns the number of
    images classified. Raises ValueError / OSError with one line for bad input."""
    from comatch_jax import data as datasets  # TensorFlow: file reading only

    run = runs.load_run(workdir)
    if not os.path.isdir(images_dir):
        raise FileNotFoundError(f"--images={images_dir} is not a directory.")
    paths, ignored = datasets.list_image_files(images_dir)
    if not paths:
        raise ValueError(f"No images (.jpg .jpeg .png .webp) under {images_dir}.")
    if ignored:
        logging.info("Ignored %d non-image files under %s", ignored, images_dir)
    height, width, channels = run.image_shape
    if height != width or channels != 3:
        raise ValueError(
            f"The run was trained on {run.image_shape} images; folder prediction needs a run "
            "trained on square RGB images (an image-folder or colour TFDS dataset)."
        )
    top_k = max(1, min(top_k, run.num_classes))
    with tempfile.TemporaryDirectory() as cache:
        try:
            images, skipped = datasets.decode_images_to_cache(
                paths, images_dir, height, os.path.join(cache, "predict.npy"), corrupt_policy
            )
        except ValueError as error:  # advise predict's flag, not the trainer's config field
            raise ValueError(str(error).replace(_TRAINING_SKIP_FLAG, _PREDICT_SKIP_FLAG)) from error
        left_out = set(skipped)
        kept = [p for i, p in enumerate(paths) if i not in left_out]
        probs = inference.predict(run, np.asarray(images), batch_size)["probs"]
    if skipped:
        logging.warning("Skipped %d unreadable images", len(skipped))
    order = np.argsort(-probs, axis=-1)[:, :top_k]
    with atomic_files.open_atomic(out, "w", **active_learning.CSV_WRITE) as f:
        writer = csv.writer(f)
        header = ["path", "predicted_class", "confidence"]
        if top_k > 1:
            header += [f"{kind}_{r}" for r in range(1, top_k + 1) for kind in ("class", "prob")]
        writer.writerow(header)
        for path, p, ranked in zip(kept, probs, order):
            row = [path, run.class_names[ranked[0]], f"{p[ranked[0]]:.6f}"]
            if top_k > 1:
                row += [v for c in ranked for v in (run.class_names[c], f"{p[c]:.6f}")]
            writer.writerow(row)
    return len(kept)


def _predict() -> None:
    count = predict_folder(
        FLAGS.workdir,
        FLAGS.images,
        FLAGS.out,
        top_k=FLAGS.top_k,
        batch_size=FLAGS.batch_size,
        corrupt_policy=FLAGS.corrupt_policy,
    )
    print(f"Wrote predictions for {count} images to {FLAGS.out}")


main = cli.entry_point(_predict)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
