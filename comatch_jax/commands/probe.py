"""Frozen-feature evaluation of a trained run: weighted kNN and a linear probe.

  python -m comatch_jax.commands.probe --workdir=RUN --mode=all

Features are the EMA encoder's pooled outputs; the labeled images of the run's split are the
kNN memory bank and the probe's training set; accuracy is on the test split. Writes
RUN/probe.json. k, temperature and the probe's optimiser come from the run's config.probe.
"""

import json
import os
from typing import Any

import numpy as np
from absl import flags

from comatch_jax import atomic_files, cli
from comatch_jax.core import frozen_feature_probes, inference
from comatch_jax.trainer import saved_runs as runs
from comatch_jax.data import pipeline as training_data

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags, defined only when run as a command (modules import cleanly)."""
    flags.DEFINE_string("workdir", None, "A run's workdir (its latest checkpoint is used).")
    flags.DEFINE_enum("mode", "all", ["knn", "linear", "all"], "Which evaluation.")
    flags.DEFINE_integer("batch_size", 500, "Images per forward pass.")
    flags.mark_flag_as_required("workdir")


def probe_run(
    workdir: str, mode: str = "all", batch_size: int = 500, dataset: Any = None
) -> dict[str, float]:
    """kNN and/or linear-probe test accuracy of a run's frozen EMA features. `dataset`
    defaults to loading the run's config.dataset (the split is the run's own)."""
    run = runs.load_run(workdir)
    data = training_data.prepare_data(run.config, dataset)
    labeled = inference.predict(run, data.labeled_images, batch_size)["features"]
    test = inference.predict(run, data.test_images, batch_size)["features"]
    options, results = run.config.probe, {}
    if mode in ("knn", "all"):
        predicted = frozen_feature_probes.knn_predict(
            labeled,
            data.labels,
            test,
            num_classes=run.num_classes,
            k=options.knn_k,
            temperature=options.knn_temperature,
        )
        results["knn_accuracy"] = float(np.mean(np.asarray(predicted) == data.test_labels))
    if mode in ("linear", "all"):
        probe = frozen_feature_probes.fit_linear_probe(
            labeled,
            data.labels,
            num_classes=run.num_classes,
            steps=options.linear_steps,
            learning_rate=options.linear_lr,
            weight_decay=options.linear_weight_decay,
        )
        predicted = frozen_feature_probes.linear_probe_predict(probe, test)
        results["linear_probe_accuracy"] = float(np.mean(np.asarray(predicted) == data.test_labels))
    results["num_labeled"] = int(len(data.labels))
    with atomic_files.open_atomic(os.path.join(workdir, "probe.json")) as f:
        json.dump(results, f, indent=2)
    return results


def _probe() -> None:
    results = probe_run(FLAGS.workdir, FLAGS.mode, FLAGS.batch_size)
    for name, value in results.items():
        print(f"{name}: {value}")


main = cli.entry_point(_probe)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
