"""Frozen-feature evaluation of a trained run: weighted kNN and a linear probe.

  python -m comatch_jax.commands.probe --workdir=RUN --mode=all     (or: comatch-probe ...)

Features are the EMA encoder's pooled outputs; the labeled images of the run's split are the
kNN memory bank and the probe's training set; accuracy is on the test split. Writes
RUN/probe.json. k, temperature and the probe's optimiser come from the run's config.probe.
"""

from typing import Any

import numpy as np
from absl import flags

from comatch_jax import commands
from comatch_jax.commands import ema_model
from comatch_jax.core import evaluation
from comatch_jax.data import pipeline
from comatch_jax.trainer import saved_runs


def probe_run(
    workdir: str, mode: str = "all", batch_size: int = 500, dataset: Any = None
) -> dict[str, float]:
    """kNN and/or linear-probe test accuracy of a run's frozen EMA features, also written
    to WORKDIR/probe.json. `dataset` defaults to loading the run's config.dataset (the split
    is the run's own)."""
    run = saved_runs.load_run(workdir)
    data = pipeline.prepare_data(run.config, dataset)
    predict = ema_model.predictor(run, batch_size)
    labeled = predict(data.labeled_images)["features"]
    test = predict(data.test_images)["features"]
    options, predicted = run.config.probe, {}
    if mode in ("knn", "all"):
        predicted["knn_accuracy"] = evaluation.knn_predict(
            labeled,
            data.labels,
            test,
            num_classes=run.num_classes,
            k=options.knn_k,
            temperature=options.knn_temperature,
        )
    if mode in ("linear", "all"):
        probe = evaluation.fit_linear_probe(
            labeled,
            data.labels,
            num_classes=run.num_classes,
            steps=options.linear_steps,
            learning_rate=options.linear_lr,
            weight_decay=options.linear_weight_decay,
        )
        predicted["linear_probe_accuracy"] = evaluation.linear_probe_predict(probe, test)
    results = {
        name: float(np.mean(np.asarray(p) == data.test_labels)) for name, p in predicted.items()
    }
    results["num_labeled"] = int(len(data.labels))
    saved_runs.save_json(workdir, "probe.json", results)
    return results


def _probe(**options: Any) -> None:
    for name, value in probe_run(**options).items():
        print(f"{name}: {value}")


def command() -> None:
    """comatch-probe (setup.py): flags are defined here, so that importing defines none."""
    flags.DEFINE_string("workdir", None, "A run's workdir (its latest checkpoint is used).")
    flags.DEFINE_enum("mode", "all", ["knn", "linear", "all"], "Which evaluation.")
    flags.DEFINE_integer("batch_size", 500, "Images per forward pass.")
    commands.run(__name__, _probe, ["workdir"])


if __name__ == "__main__":
    command()
