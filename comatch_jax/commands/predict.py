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
from typing import Any

import numpy as np
from absl import flags, logging

from comatch_jax import commands, data
from comatch_jax.commands import active_learning, ema_model
from comatch_jax.core import unknown_scores
from comatch_jax.data import answers, pipeline
from comatch_jax.trainer import saved_runs


def predict_folder(
    workdir: str,
    images: str,
    out: str,
    *,
    top_k: int = 1,
    batch_size: int = 256,
    corrupt_policy: str = "fail",
    unknown_score: str = ema_model.UNKNOWN_SCORE,
    unknown_threshold: float | None = None,
    unknown_rate: float | None = None,
) -> int:
    """Writes the predictions CSV `out` (the module's docstring) for the images under the
    directory `images`; returns how many were classified. Raises ValueError / OSError with
    one line for bad input."""
    if unknown_threshold is not None and unknown_rate is not None:
        raise ValueError("Give --unknown_threshold or --unknown_rate, not both.")
    run = saved_runs.load_run(workdir)
    paths, _ = data.list_image_files(images)  # logs the files it ignores
    if not paths:
        raise ValueError(f"No images ({' '.join(data.IMAGE_EXTENSIONS)}) under {images}.")
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
            pixels, skipped = data.decode_images_to_cache(
                paths, images, height, os.path.join(cache, "predict.npy"), corrupt_policy
            )
        except ValueError as error:  # advise predict's flag, not the trainer's config field
            message = str(error).replace("--config.dataset.corrupt_policy", "--corrupt_policy")
            raise ValueError(message) from error
        outputs = predict(np.asarray(pixels))
    if skipped:
        names = ", ".join(paths[i] for i in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        logging.warning(
            "Skipped %d unreadable images in %s: %s%s.", len(skipped), images, names, more
        )
    left_out = set(skipped)
    kept = [path for i, path in enumerate(paths) if i not in left_out]
    probs, scores = outputs["probs"], scorer(outputs)
    top_k = max(1, min(top_k, run.num_classes))
    header = ["path", "predicted_class", "confidence", "unknown_score"]
    if top_k > 1:
        header += [f"{kind}_{r}" for r in range(1, top_k + 1) for kind in ("class", "prob")]
    rows = []
    for path, p, classes, score in zip(kept, probs, np.argsort(-probs, -1)[:, :top_k], scores):
        top = [v for c in classes for v in (run.class_names[c], f"{p[c]:.6f}")]
        unknown = unknown_threshold is not None and score > unknown_threshold
        first = [answers.UNKNOWN if unknown else top[0], top[1], f"{score:.6g}"]
        rows.append([path, *first, *(top if top_k > 1 else [])])
    active_learning.write_csv(out, header, rows)
    return len(kept)


def _predict(**options: Any) -> None:
    count = predict_folder(**options)
    print(f"Wrote predictions for {count} images to {options['out']}")


def command() -> None:
    """comatch-predict (setup.py): flags are defined here, so that importing defines none."""
    flags.DEFINE_string("workdir", None, "The trained run's workdir.")
    flags.DEFINE_string("images", None, "Directory of images to classify.")
    flags.DEFINE_string("out", None, "Output CSV path.")
    flags.DEFINE_integer("top_k", 1, "Also write the k most probable classes.")
    flags.DEFINE_integer("batch_size", 256, "Images per forward pass.")
    flags.DEFINE_enum("corrupt_policy", "fail", ["fail", "skip"], "Unreadable images.")
    flags.DEFINE_enum("unknown_score", ema_model.UNKNOWN_SCORE, unknown_scores.SCORES, "Score.")
    flags.DEFINE_float("unknown_threshold", None, "Predict __unknown__ above this score.")
    flags.DEFINE_float("unknown_rate", None, "Or: pick it for this false-rejection rate on val.")
    commands.run(__name__, _predict, ["workdir", "images", "out"])


if __name__ == "__main__":
    command()
