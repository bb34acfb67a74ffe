"""Predictions for a folder of images with a trained run's EMA model.

  python -m comatch_jax.commands.predict --workdir=RUN --images=DIR --out=preds.csv [--top_k=5]
      [--unknown_rate=0.05 | --unknown_threshold=T] [--unknown_score=nearest_labeled]
  (or: comatch-predict ...)

Every image under DIR (recursively; .jpg .jpeg .png .webp) is decoded and resized to the
run's image size with tf.data (into a temporary uint8 cache), then scored in jitted
batches. The CSV has: path (relative to DIR), predicted class name, confidence, unknown
score (ema_model.UnknownScorer) and with --top_k > 1 the top-k classes and probabilities.
The class is __unknown__ above --unknown_threshold, or above the threshold that
--unknown_rate of the run's evaluation images exceed (recorded in the workdir). It is
written whole, paths quoted as the csv module does, so any file name round-trips.
"""

import os
import tempfile

import numpy as np
from absl import flags, logging

from comatch_jax import cli, commands
from comatch_jax.commands import active_learning, ema_model
from comatch_jax.core import unknown_scores
from comatch_jax.data import answers, pipeline
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
    unknown_score: str = ema_model.UNKNOWN_SCORE,
    unknown_threshold: float | None = None,
    unknown_rate: float | None = None,
) -> int:
    """Writes the predictions CSV; returns the number of images classified. Raises
    ValueError / OSError with one line for bad input."""
    from comatch_jax import data  # TensorFlow: file reading only

    run = saved_runs.load_run(workdir)
    if unknown_threshold is not None and unknown_rate is not None:
        raise ValueError("Give --unknown_threshold or --unknown_rate, not both.")
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
    predict = ema_model.predictor(run, batch_size)
    needs_data = unknown_score == "nearest_labeled" or unknown_rate is not None
    run_data = pipeline.prepare_data(run.config) if needs_data else None
    scorer = ema_model.UnknownScorer(run, predict, run_data, unknown_score)
    if unknown_rate is not None:
        unknown_threshold = scorer.threshold(workdir, unknown_rate)
    with tempfile.TemporaryDirectory() as cache:
        try:
            images, skipped = data.decode_images_to_cache(
                paths, images_dir, height, os.path.join(cache, "predict.npy"), corrupt_policy
            )
        except ValueError as error:  # advise predict's flag, not the trainer's config field
            message = str(error).replace("--config.dataset.corrupt_policy", "--corrupt_policy")
            raise ValueError(message) from error
        outputs = predict(np.asarray(images))
    probs, scores = outputs["probs"], scorer(outputs)
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
    header = ["path", "predicted_class", "confidence", "unknown_score"]
    if top_k > 1:
        header += [f"{kind}_{r}" for r in range(1, top_k + 1) for kind in ("class", "prob")]
    rows = []
    for path, p, classes, score in zip(kept, probs, ranked, scores):
        top = [v for c in classes for v in (run.class_names[c], f"{p[c]:.6f}")]
        unknown = unknown_threshold is not None and score > unknown_threshold
        first = [answers.UNKNOWN if unknown else top[0], top[1], f"{score:.6g}"]
        rows.append([path, *first, *(top if top_k > 1 else [])])
    active_learning.write_csv(out, header, rows)
    return len(kept)


def _predict() -> None:
    names = "top_k batch_size corrupt_policy unknown_score unknown_threshold unknown_rate"
    options = {o: FLAGS[o].value for o in names.split()}
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
    flags.DEFINE_enum("unknown_score", ema_model.UNKNOWN_SCORE, unknown_scores.SCORES, "Score.")
    flags.DEFINE_float("unknown_threshold", None, "Predict __unknown__ above this score.")
    flags.DEFINE_float("unknown_rate", None, "Or: pick it for this false-rejection rate on val.")
    flags.mark_flags_as_required(["workdir", "images", "out"])
    commands.help_for_console_script(__name__)
    cli.run(main)


if __name__ == "__main__":
    command()
