"""Training metrics between two logs: averages (clu.metrics), the finiteness check and the
progress line. No TensorFlow and no clu writers here (those are in metric_writing.py).

The train step returns one dict of scalars per step; the trainer keeps them on the device
until a logging step and averages them with a clu.metrics Collection of one `Average` per
metric name. Names are written with a `train/` or `eval/` prefix.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Sequence

import flax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

TRAIN = "train/"
EVAL = "eval/"
# The metrics on the progress line, in this order, when the method reports them.
PROGRESS_METRICS = ("loss", "loss_x", "loss_u", "loss_ctr", "mask_rate", "pseudo_label_acc")
# Adaptive confidence thresholds on the progress line, after those, under a short label, when
# the method reports them: the global threshold tau_t (FreeMatch's self-adaptive threshold,
# CoMatch with threshold_rule='freematch'; it starts at 1/C, so a mask rate of 1 early on is
# expected) and SoftMatch's mean confidence mu_t (the centre of its Gaussian weight).
PROGRESS_THRESHOLDS = {"global_threshold": "tau", "confidence_mean": "mu_t"}


@flax.struct.dataclass
class SkippedSteps(clu_metrics.Metric):
    """How many steps had their update skipped (model output `skipped`, bool per step;
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


def metrics_collection(names: Sequence[str]) -> type[clu_metrics.Collection]:
    """A clu Collection of one Average per metric name the train step returns; the step's
    `skipped` flag (nonfinite_policy='skip') becomes the count `skipped_steps`."""
    fields = {name: clu_metrics.Average.from_output(name) for name in names if name != "skipped"}
    if "skipped" in names:
        fields["skipped_steps"] = SkippedSteps
    return clu_metrics.Collection.create(**fields)


def average_over_steps(step_metrics: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means of the per-step metric dicts (host values) since the last log.

    When some steps were skipped (their `skipped` flag is set), their metrics are left out
    of the means and their number is reported as `skipped_steps`; when every step was
    skipped, the means are over all of them (as the losses were computed).

    `pseudo_label_acc` (the accuracy of the kept pseudo-labels of one step) is averaged
    weighted by each step's `mask_rate` (the kept fraction, or SoftMatch's weight mass), so
    that it is the accuracy of all pseudo-labels kept in the window; a window in which none
    was kept has no such accuracy, and the name is left out rather than reported as 0.
    """
    names = list(step_metrics[0])
    stacked = {name: np.stack([np.asarray(m[name]) for m in step_metrics]) for name in names}
    mask = None
    if "skipped" in stacked:
        kept = ~stacked["skipped"].astype(bool)
        mask = kept if kept.any() else None
    collection = metrics_collection(names).single_from_model_output(**stacked, mask=mask)
    means = {name: float(value) for name, value in collection.compute().items()}
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
    step: int,
    metrics: dict[str, float],
    policy: str,
    last_checkpoint: Callable[[], int | None],
) -> None:
    """Raises FloatingPointError, naming the step, the terms, the checkpoint a rerun starts
    from and a command that does it, on non-finite metrics (policy 'skip': on param_norm
    only, the norm of the kept params, as skipped steps leave the params as they were).

    `last_checkpoint()` (called only when raising) gives the step of the last complete
    checkpoint, or None when none was saved yet (the rerun then starts at step 0).
    """
    names = ["param_norm"] if policy == "skip" else [n for n in metrics if n != "skipped_steps"]
    bad = [name for name in names if name in metrics and not np.isfinite(metrics[name])]
    if bad:
        # Both overrides are accepted on resume (runs.RESUMABLE_CHANGES).
        advice = "a lower --config.optim.lr" + (
            "" if policy == "skip" else " or with --config.nonfinite_policy=skip (skips such steps)"
        )
        saved = last_checkpoint()
        if saved is None:
            kept, start = "no checkpoint had been saved yet", "start again from step 0"
        else:
            kept = f"the last good checkpoint (step {saved}) is kept"
            start = f"resume from step {saved}"
        raise FloatingPointError(
            f"Non-finite {', '.join(bad)} in the steps up to {step}; training stopped and "
            f"{kept}. Check the inputs, or rerun the same command with {advice} to {start}."
        )


def prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    """{prefix + name: value}, e.g. 'train/loss'."""
    return {prefix + name: value for name, value in metrics.items()}


def progress_line(
    step: int, num_steps: int, metrics: dict[str, float], images_per_sec: float, eta_s: float
) -> str:
    """The one human line per logging step: step, losses, mask rate, pseudo-label accuracy,
    the adaptive threshold (PROGRESS_THRESHOLDS: `tau=` or `mu_t=`, when reported), the
    number of skipped steps (when any), images/s and the estimated time to the end (h:mm:ss);
    '?' for a speed or time not known yet (no timed step since the last log)."""
    shown = " ".join(
        [f"{name}={metrics[name]:.4f}" for name in PROGRESS_METRICS if name in metrics]
        + [
            f"{label}={metrics[name]:.4f}"
            for name, label in PROGRESS_THRESHOLDS.items()
            if name in metrics
        ]
    )
    if metrics.get("skipped_steps"):
        shown += f" skipped_steps={int(metrics['skipped_steps'])}"
    eta = datetime.timedelta(seconds=round(max(eta_s, 0.0))) if np.isfinite(eta_s) else "?"
    speed = f"{images_per_sec:.0f}" if np.isfinite(images_per_sec) else "?"
    return f"step {step}/{num_steps} {shown} | {speed} img/s | ETA {eta}"
