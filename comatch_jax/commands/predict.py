"""Predictions for a folder of images with a trained run's EMA model.

  python -m comatch_jax.commands.predict --workdir=RUN --images=DIR --out=preds.csv [--top_k=5]
  (or: comatch-predict ...)

Every image under DIR (recursively; .jpg .jpeg .png .webp) is decoded and resized to the
run's image size with tf.data (into a temporary uint8 cache), then scored in jitted
batches. The CSV has: path (relative to DIR), predicted class name, confidence, and with
--top_k > 1 the top-k classes and probabilities. It is written whole, paths quoted as the
csv module does, so any file name round-trips.
"""

import os
import tempfile

import numpy as np
from absl import flags, logging

from comatch_jax import cli, commands
from comatch_jax.commands import active_learning, ema_model
from comatch_jax.trainer import saved_runs

FLAGS = flags.FLAGS

# Unreadable files named in the warning of --corrupt_policy=skip.
NAMED_SKIPPED = 5


def predict_folder(
    workdir: str,
    images_dir: str,
    out: str,
    *,
    top_k: int = 1,
    batch_size: int = 256,
    corrupt_policy: str = "fail",
) -> int:
    """Writes the predictions CSV; returns the number of images classified. Raises
    ValueError / OSError with one line for bad input."""
    from comatch_jax import data  # TensorFlow: file reading only

    run = saved_runs.load_run(workdir)
    if not os.path.isdir(images_dir):
        raise FileNotFoundError(f"--images={images_dir} is not a directory.")
    paths, ignored = data.list_image_files(images_dir)
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
    with tempfile.TemporaryDirectory() as cache:
        try:
            images, skipped = data.decode_images_to_cache(
                paths, images_dir, height, os.path.join(cache, "predict.npy"), corrupt_policy
            )
        except ValueError as error:  # advise predict's flag, not the trainer's config field
            message = str(error).replace("--config.dataset.corrupt_policy", "--corrupt_policy")
            raise ValueError(message) from error
        probs = ema_model.predictor(run, batch_size)(np.asarray(images))["probs"]
    if skipped:
        names = ", ".join(paths[i] for i in skipped[:NAMED_SKIPPED])
        more = f" and {len(skipped) - NAMED_SKIPPED} more" if len(skipped) > NAMED_SKIPPED else ""
        logging.warning(
            "Skipped %d unreadable images in %s: %s%s.", len(skipped), images_dir, names, more
        )
    left_out = set(skipped)
    kept = [p for i, p in enumerate(paths) if i not in left_out]
    top_k = max(1, min(top_k, run.num_classes))
    ranked = np.argsort(-probs, axis=-1)[:, :top_k]
    header = ["path", "predicted_class", "confidence"]
    if top_k > 1:
        header += [f"{kind}_{r}" for r in range(1, top_k + 1) for kind in ("class", "prob")]
    rows = []
    for path, p, classes in zip(kept, probs, ranked):
        top = [v for c in classes for v in (run.class_names[c], f"{p[c]:.6f}")]
        rows.append([path, *top[:2], *(top if top_k > 1 else [])])
    active_learning.write_csv(out, header, rows)
    return len(kept)


def _predict() -> None:
    options = {o: FLAGS[o].value for o in ("top_k", "batch_size", "corrupt_policy")}
    count = predict_folder(FLAGS.workdir, FLAGS.images, FLAGS.out, **options)
    print(f"Wrote predictions for {count} images to {FLAGS.out}")


main = cli.entry_point(_predict)


def command() -> None:
    """comatch-predict (setup.py): flags are defined here, so that importing defines none."""
    flags.DEFINE_string("workdir", None, "The trained run's workdir.")
    flags.DEFINE_string("images", None, "Directory of images to classify.")
    flags.DEFINE_string("out", None, "Output CSV path.")
    flags.DEFINE_integer("top_k", 1, "Also write the k most probable classes.")
    flags.DEFINE_integer("batch_size", 256, "Images per forward pass.")
    flags.DEFINE_enum(
        "corrupt_policy", "fail", ["fail", "skip"], "Unreadable images: fail or skip."
    )
    flags.mark_flags_as_required(["workdir", "images", "out"])
    commands.help_for_console_script(__name__)
    cli.run(main)


if __name__ == "__main__":
    command()
