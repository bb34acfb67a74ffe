"""Where training metrics go: clu's writer (TensorBoard + log) and metrics.jsonl through one
MultiWriter, and clu's ReportProgress for steps/s and ETA.

clu.metric_writers and clu.periodic_actions import TensorFlow, so the trainer imports this
module only when it trains. Where they cannot be imported (a GPU machine without TensorFlow
or clu), the trainer still runs: metrics go to the log and metrics.jsonl only (no TensorBoard
files), steps/s is computed here, and a warning says so once per writer.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from absl import logging

try:
    from clu import metric_writers, periodic_actions
except ImportError as error:  # no TensorFlow (or no clu): the log + JSONL writers below
    metric_writers = periodic_actions = None
    CLU_IMPORT_ERROR: ImportError | None = error
else:
    CLU_IMPORT_ERROR = None

METRICS_JSONL = "metrics.jsonl"


class _MultiWriter:
    """clu's MultiWriter where clu cannot be imported: forwards write_scalars / flush / close."""

    def __init__(self, writers):
        self._writers = list(writers)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for writer in self._writers:
            writer.write_scalars(step, scalars)

    def flush(self) -> None:
        for writer in self._writers:
            writer.flush()

    def close(self) -> None:
        for writer in self._writers:
            if hasattr(writer, "close"):
                writer.close()


class LoggingWriter:
    """Scalars to the absl log, one line per write_scalars call ("step: name = value, ...");
    the writer where clu's default writer cannot be imported."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        text = ", ".join(f"{name} = {float(value):.6g}" for name, value in sorted(scalars.items()))
        logging.info("[%d] %s", step, text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlWriter(metric_writers.MetricWriter if metric_writers else object):
    """A clu MetricWriter that appends one JSON line {"step": step, name: value, ...} per
    write_scalars call to a file; every other kind of summary is ignored."""

    def __init__(self, path: str):
        self._path = path

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        record = {"step": int(step), **{name: float(value) for name, value in scalars.items()}}
        with open(self._path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_summaries(self, step, values, metadata=None) -> None:
        pass

    def write_images(self, step, images) -> None:
        pass

    def write_videos(self, step, videos) -> None:
        pass

    def write_audios(self, step, audios, *, sample_rate) -> None:
        pass

    def write_texts(self, step, texts) -> None:
        pass

    def write_histograms(self, step, arrays, num_buckets=None) -> None:
        pass

    def write_hparams(self, hparams) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def create_writer(workdir: str, *, primary: bool, writer: Any = None) -> Any:
    """One writer for the trainer: `writer` (default: clu's default writer, TensorBoard event
    files in `workdir` plus the log; only the log on processes other than 0) and, on
    process 0, workdir/metrics.jsonl; one write_scalars call feeds both. Without clu's
    writers (CLU_IMPORT_ERROR set, e.g. no TensorFlow) the default is `LoggingWriter`,
    with a warning naming the import error."""
    if writer is None:
        if metric_writers is None:
            logging.warning(
                "clu.metric_writers cannot be imported (%s): metrics go to the log and %s "
                "only, no TensorBoard event files.",
                CLU_IMPORT_ERROR,
                METRICS_JSONL,
            )
            writer = LoggingWriter()
        else:
            writer = metric_writers.create_default_writer(workdir, just_logging=not primary)
    writers = [writer]
    if primary:
        writers.append(JsonlWriter(os.path.join(workdir, METRICS_JSONL)))
    return (metric_writers.MultiWriter if metric_writers else _MultiWriter)(writers)


class _LatestScalars(metric_writers.MultiWriter if metric_writers else _MultiWriter):
    """Keeps the last value of every scalar written to it (and writes nowhere)."""

    def __init__(self):
        super().__init__([])
        self.latest: dict[str, float] = {}

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self.latest.update({name: float(value) for name, value in scalars.items()})


if periodic_actions is not None:

    class _ReportAtEveryCall(periodic_actions.ReportProgress):
        """ReportProgress that reports at every call after the first (PeriodicAction's
        documented extension point), so that the trainer decides when."""

        def _should_trigger(self, step: int, t: float) -> bool:
            return step != self._previous_step

else:

    class _ReportAtEveryCall:
        """Without clu: steps/s since the previous call (ReportProgress's steps_per_sec),
        written to `writer` at every call after the first; returns whether it reported."""

        def __init__(self, *, num_train_steps, writer, every_steps=None, every_secs=None):
            del num_train_steps, every_steps, every_secs
            self._writer = writer
            self._previous = None

        def __call__(self, step: int, t: float) -> bool:
            previous, self._previous = self._previous, (step, t)
            if previous is None or step == previous[0]:
                return False
            rate = (step - previous[0]) / max(t - previous[1], 1e-12)
            self._writer.write_scalars(step, {"steps_per_sec": rate})
            return True


class Progress:
    """clu's ReportProgress, called by the trainer at its logging steps only (not on a
    timer): `report(step, t)` returns steps/s since the previous report and the ETA in
    seconds. `t` is a training-only clock (the trainer leaves evaluation time out)."""

    def __init__(self, *, start_step: int, num_steps: int, t: float):
        self._num_steps = num_steps
        self._rates = _LatestScalars()
        self.restart(start_step, t)

    def restart(self, step: int, t: float) -> None:
        """Starts the clock afresh at (step, t): the trainer calls it after the first step,
        which includes compiling, so that the first speed and ETA are those of training."""
        self._report = _ReportAtEveryCall(
            num_train_steps=self._num_steps, writer=self._rates, every_steps=None, every_secs=None
        )
        self._report(step, t)  # the first call only starts the clock

    def report(self, step: int, t: float) -> tuple[float, float]:
        """(steps per second, seconds to the end); NaN when no step passed since the last."""
        if not self._report(step, t):
            return float("nan"), float("nan")
        steps_per_sec = self._rates.latest["steps_per_sec"]
        return steps_per_sec, (self._num_steps - step) / steps_per_sec
