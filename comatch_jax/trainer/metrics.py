"""Training metrics: averaged between logs, checked, shown on one line, and written.

The train step returns one dict of scalars per step; the trainer keeps them on the device
until a logging step and averages them on the host (NumPy). They go to the log at once (the
progress line), and to workdir/metrics.jsonl and TensorBoard (clu's writer, which imports
TensorFlow; without it metrics.jsonl only) once the checkpoint of their step is committed.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from absl import logging

# The metrics on the progress line, in this order, under these names, when the method reports
# them: the adaptive thresholds last (FreeMatch's tau_t starts at 1/C, so a mask rate of 1
# early on is expected; SoftMatch's mean confidence mu_t).
PROGRESS_NAMES = {
    **{n: n for n in ("loss", "loss_x", "loss_u", "loss_ctr", "mask_rate", "pseudo_label_acc")},
    "global_threshold": "tau",
    "confidence_mean": "mu_t",
}


def average_over_steps(step_metrics: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means (in float64) of the per-step metric dicts (host values) since the last log.

    Skipped steps (their `skipped` flag set; nonfinite_policy='skip') are left out of the
    means and counted as `skipped_steps`; when every step was skipped, the means are over all
    of them. `pseudo_label_acc` (the accuracy of one step's kept pseudo-labels) is weighted by
    each step's `mask_rate` (the kept fraction, or SoftMatch's weight mass): the accuracy of
    all pseudo-labels kept in the window; absent when none was kept.
    """
    stacked = {
        name: np.stack([np.asarray(m[name]) for m in step_metrics]) for name in step_metrics[0]
    }
    kept = ~stacked.pop("skipped").astype(bool) if "skipped" in stacked else None
    mask = kept if kept is not None and kept.any() else None
    rows = slice(None) if mask is None else mask
    means = {
        name: float(np.mean(values[rows], dtype=np.float64)) for name, values in stacked.items()
    }
    if kept is not None:
        means["skipped_steps"] = float(np.sum(~kept))
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


def progress_line(
    step: int, num_steps: int, metrics: dict[str, float], images_per_sec: float, eta_s: float
) -> str:
    """The one line per logging step: step, losses, mask rate, pseudo-label accuracy, the
    adaptive threshold, skipped steps (when any), images/s and the time to the end (h:mm:ss);
    '?' for a speed not measured yet."""
    shown = [f"{label}={metrics[n]:.4f}" for n, label in PROGRESS_NAMES.items() if n in metrics]
    if metrics.get("skipped_steps"):
        shown.append(f"skipped_steps={int(metrics['skipped_steps'])}")
    eta = datetime.timedelta(seconds=round(max(eta_s, 0.0))) if np.isfinite(eta_s) else "?"
    speed = f"{images_per_sec:.0f}" if np.isfinite(images_per_sec) else "?"
    return f"step {step}/{num_steps} {' '.join(shown)} | {speed} img/s | ETA {eta}"


class HeldUntilCheckpoint:
    """Scalars reach metrics.jsonl and the writers only once the checkpoint of their step is
    committed (`release`): a run killed and resumed restarts from its last committed
    checkpoint, so no step is written twice. `jsonl` None: nothing is written (processes
    other than 0)."""

    def __init__(self, jsonl: str | None, writers: Sequence[Any] = ()):
        self._jsonl, self._writers = jsonl, list(writers)
        self._held: list[tuple[int, dict[str, float]]] = []

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        if self._jsonl:
            self._held.append((step, {name: float(value) for name, value in scalars.items()}))

    def release(self, committed_step: int | None) -> None:
        """Writes the held scalars of the steps up to `committed_step` (None: none yet)."""
        if committed_step is None:
            return
        ready = [held for held in self._held if held[0] <= committed_step]
        if not ready:
            return
        self._held = self._held[len(ready) :]
        with open(self._jsonl, "a") as f:
            f.writelines(json.dumps({"step": step, **scalars}) + "\n" for step, scalars in ready)
        for writer in self._writers:
            for step, scalars in ready:
                writer.write_scalars(step, scalars)
            writer.flush()


def create_writer(workdir: str, *, primary: bool, writer: Any = None) -> HeldUntilCheckpoint:
    """The trainer's writer: on process 0, workdir/metrics.jsonl and `writer` (default: clu's
    TensorBoard writer for `workdir`, or none, with a warning, without TensorFlow); on the
    other processes nothing."""
    if not primary:
        return HeldUntilCheckpoint(None)
    if writer is None:
        try:
            from clu import metric_writers  # imports TensorFlow

            writer = metric_writers.SummaryWriter(workdir)
        except ImportError as error:
            logging.warning(
                "clu.metric_writers cannot be imported (%s): metrics go to the log and "
                "metrics.jsonl only, no TensorBoard event files.",
                error,
            )
    return HeldUntilCheckpoint(os.path.join(workdir, "metrics.jsonl"), [writer] if writer else [])
