"""Training metrics: averaged between logs, checked, shown on one line, and written.

The train step returns one dict of scalars per step; the trainer keeps them on the device
until a logging step and averages them with a clu.metrics Collection of one `Average` per
metric name. They go to the log at once (the progress line), and to workdir/metrics.jsonl and
TensorBoard (clu's writer) with a `train/` or `eval/` prefix once the checkpoint of their
step is committed (`HeldUntilCheckpoint`). clu's writers import TensorFlow; where they cannot
be imported (a GPU machine without TensorFlow) the metrics go to metrics.jsonl only.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Callable, Mapping, Sequence

import flax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metrics as clu_metrics

METRICS_JSONL = "metrics.jsonl"
# The metrics on the progress line, in this order, when the method reports them.
PROGRESS_METRICS = ("loss", "loss_x", "loss_u", "loss_ctr", "mask_rate", "pseudo_label_acc")
# Adaptive confidence thresholds on the progress line, after those, under a short label: the
# global threshold tau_t (FreeMatch's self-adaptive threshold; it starts at 1/C, so a mask
# rate of 1 early on is expected) and SoftMatch's mean confidence mu_t.
PROGRESS_THRESHOLDS = {"global_threshold": "tau", "confidence_mean": "mu_t"}


@flax.struct.dataclass
class SkippedSteps(clu_metrics.Metric):
    """How many steps had their update skipped (the step's bool `skipped`;
    nonfinite_policy='skip')."""

    total: jnp.ndarray

    @classmethod
    def empty(cls) -> SkippedSteps:
        return cls(total=jnp.array(0, jnp.int32))

    @classmethod
    def from_model_output(cls, *, skipped: jnp.ndarray, **_) -> SkippedSteps:
        return cls(total=jnp.sum(jnp.asarray(skipped, jnp.int32)))

    def merge(self, other: SkippedSteps) -> SkippedSteps:
        return type(self)(total=self.total + other.total)

    def compute(self) -> jnp.ndarray:
        return self.total


def average_over_steps(step_metrics: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means of the per-step metric dicts (host values) since the last log.

    Skipped steps (their `skipped` flag set) are left out of the means and counted as
    `skipped_steps`; when every step was skipped, the means are over all of them.
    `pseudo_label_acc` (the accuracy of one step's kept pseudo-labels) is weighted by each
    step's `mask_rate` (the kept fraction, or SoftMatch's weight mass), so that it is the
    accuracy of all pseudo-labels kept in the window; absent when none was kept.
    """
    names = list(step_metrics[0])
    stacked = {name: np.stack([np.asarray(m[name]) for m in step_metrics]) for name in names}
    fields = {name: clu_metrics.Average.from_output(name) for name in names if name != "skipped"}
    mask = None
    if "skipped" in stacked:
        fields["skipped_steps"] = SkippedSteps
        kept = ~stacked["skipped"].astype(bool)
        mask = kept if kept.any() else None
    collection = clu_metrics.Collection.create(**fields)
    means = collection.single_from_model_output(**stacked, mask=mask).compute()
    means = {name: float(value) for name, value in means.items()}
    if "pseudo_label_acc" in means and "mask_rate" in stacked:
        weights = stacked["mask_rate"].astype(np.float64) * (1.0 if mask is None else mask)
        if np.sum(weights) > 0:
            means["pseudo_label_acc"] = float(
                np.sum(weights * stacked["pseudo_label_acc"]) / np.sum(weights)
            )
        else:
            del means["pseudo_label_acc"]
    return means


def check_finite(
    step: int, metrics: dict[str, float], policy: str, last_checkpoint: Callable[[], int | None]
) -> None:
    """Raises FloatingPointError on non-finite metrics (policy 'skip': on param_norm only, as
    skipped steps keep the params), naming the step, the terms, the checkpoint a rerun starts
    from (`last_checkpoint()`, None before the first) and the overrides a resume accepts."""
    names = ["param_norm"] if policy == "skip" else [n for n in metrics if n != "skipped_steps"]
    bad = [name for name in names if name in metrics and not np.isfinite(metrics[name])]
    if not bad:
        return
    advice = "a lower --config.optim.lr"
    if policy != "skip":
        advice += " or with --config.nonfinite_policy=skip (skips such steps)"
    saved = last_checkpoint()
    if saved is None:
        kept, start = "no checkpoint had been saved yet", "start again from step 0"
    else:
        kept, start = (
            f"the last good checkpoint (step {saved}) is kept",
            f"resume from step {saved}",
        )
    raise FloatingPointError(
        f"Non-finite {', '.join(bad)} in the steps up to {step}; training stopped and {kept}. "
        f"Check the inputs, or rerun the same command with {advice} to {start}."
    )


def prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    """{prefix + name: value}, e.g. 'train/loss'."""
    return {prefix + name: value for name, value in metrics.items()}


def progress_line(
    step: int, num_steps: int, metrics: dict[str, float], images_per_sec: float, eta_s: float
) -> str:
    """The one line per logging step: step, losses, mask rate, pseudo-label accuracy, the
    adaptive threshold (`tau=` or `mu_t=`), skipped steps (when any), images/s and the time
    to the end (h:mm:ss); '?' for a speed not measured yet."""
    shown = [f"{name}={metrics[name]:.4f}" for name in PROGRESS_METRICS if name in metrics]
    shown += [
        f"{label}={metrics[n]:.4f}" for n, label in PROGRESS_THRESHOLDS.items() if n in metrics
    ]
    if metrics.get("skipped_steps"):
        shown.append(f"skipped_steps={int(metrics['skipped_steps'])}")
    eta = datetime.timedelta(seconds=round(max(eta_s, 0.0))) if np.isfinite(eta_s) else "?"
    speed = f"{images_per_sec:.0f}" if np.isfinite(images_per_sec) else "?"
    return f"step {step}/{num_steps} {' '.join(shown)} | {speed} img/s | ETA {eta}"


class JsonlWriter:
    """Appends one JSON line {"step": step, name: value, ...} per write_scalars call."""

    def __init__(self, path: str):
        self._path = path

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        record = {"step": int(step), **{name: float(value) for name, value in scalars.items()}}
        with open(self._path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        pass


class HeldUntilCheckpoint:
    """Scalars reach the writers only once the checkpoint of their step is committed
    (`release`): a run killed and resumed restarts from its last committed checkpoint, so
    metrics.jsonl and TensorBoard never get a step twice."""

    def __init__(self, writers: Sequence[Any]):
        self._writers = list(writers)
        self._held: list[tuple[int, dict[str, float]]] = []

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self._held.append((step, dict(scalars)))

    def release(self, committed_step: int | None) -> None:
        """Writes the held scalars of every step up to `committed_step` (None: none)."""
        ready = [
            (s, v) for s, v in self._held if committed_step is not None and s <= committed_step
        ]
        if not ready:
            return
        self._held = self._held[len(ready) :]
        for step, scalars in ready:
            for writer in self._writers:
                writer.write_scalars(step, scalars)
        for writer in self._writers:
            writer.flush()


def create_writer(workdir: str, *, primary: bool, writer: Any = None) -> HeldUntilCheckpoint:
    """The trainer's writer: on process 0, `writer` (default: clu's TensorBoard writer for
    `workdir`) and workdir/metrics.jsonl; on other processes nothing. Without clu's writers
    (no TensorFlow) only metrics.jsonl, with a warning."""
    if not primary:
        return HeldUntilCheckpoint([])
    if writer is None:
        try:
            from clu import metric_writers  # imports TensorFlow
        except ImportError as error:
            logging.warning(
                "clu.metric_writers cannot be imported (%s): metrics go to the log and %s "
                "only, no TensorBoard event files.",
                error,
                METRICS_JSONL,
            )
        else:
            writer = metric_writers.SummaryWriter(workdir)
    writers = [writer] if writer is not None else []
    return HeldUntilCheckpoint(writers + [JsonlWriter(os.path.join(workdir, METRICS_JSONL))])
