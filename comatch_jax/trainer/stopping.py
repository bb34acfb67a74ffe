"""SIGTERM and Ctrl-C during training: the loop saves a checkpoint, then stops.

One process: a Python handler for SIGTERM and SIGINT sets a flag that the loop reads after
every step. A repeat of the signal is the same request (GNU `timeout` and Slurm signal the
process and then its process group, so one stop arrives twice). SIGKILL (`kill -9`) is the
force-quit: Orbax commits a checkpoint atomically, so the workdir keeps only complete ones.

Several processes (after jax.distributed.initialize): JAX's preemption service owns SIGTERM;
a notice to any process makes every process reach Orbax's
`CheckpointManager.reached_preemption(step)` at the same step, where all of them save and
stop (as MaxText does). A Ctrl-C is passed on to that service as a SIGTERM to this process.

During the final step the request is noted and the run finishes. Outside the loop (and the
final checkpoint's commit) the signals keep their usual meaning: Ctrl-C raises
KeyboardInterrupt and SIGTERM ends the process (exit status 143).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(SystemExit):
    """The run stopped after the checkpoint a signal asked for; the same command resumes it.

    A SystemExit whose message is the one line to print. `exit_status` is 128 + the signal's
    number (143 for SIGTERM, 130 for SIGINT), the shell's status of a process ended by that
    signal, so that a scheduler tells "stopped, resumable" from "failed" (1)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + int(signum)


class StopRequest:
    """A context manager around the training loop: `requested(step)` says whether to save
    and stop after `step`. Puts the previous signal handlers back on exit (a notebook that
    calls train_and_evaluate keeps its own). Outside the main thread it installs nothing."""

    def __init__(self, checkpoints: Any, multiprocess: bool):
        self._checkpoints = checkpoints  # an Orbax CheckpointManager
        self._multiprocess = multiprocess
        self._previous: dict[int, Any] = {}
        self.signum = 0  # the signal received (one process), 0 before

    def __enter__(self) -> StopRequest:
        # Several processes: SIGTERM stays with JAX's preemption notifier.
        handlers = (
            {signal.SIGINT: self._forward}
            if self._multiprocess
            else {signum: self._record for signum in SIGNALS}
        )
        try:
            self._previous = {s: signal.signal(s, h) for s, h in handlers.items()}
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, previous in self._previous.items():
            if previous is not None:  # None: a handler installed from C, which Python cannot
                signal.signal(signum, previous)

    def _record(self, signum: int, frame: Any) -> None:
        if self.signum:  # a repeat: the same request
            return
        self.signum = signum
        logging.warning(
            "%s received: saving a checkpoint, then stopping (SIGKILL ends at once).",
            signal.Signals(signum).name,
        )

    def _forward(self, signum: int, frame: Any) -> None:
        if not self.signum:
            self.signum = signum
            logging.warning("SIGINT received: every process saves a checkpoint, then stops.")
        os.kill(os.getpid(), signal.SIGTERM)  # seen by JAX's preemption notifier

    def requested(self, step: int) -> bool:
        """Whether to save and stop after `step`. With several processes every process must
        call it once per step, at the same steps (JAX's preemption sync point)."""
        if self._multiprocess:
            return self._checkpoints.reached_preemption(step)
        return bool(self.signum)

    def finished(self, step: int) -> None:
        """Logs that a signal during the final step did not stop the run: it finished."""
        if self.signum:
            name = signal.Signals(self.signum).name
            logging.warning("%s came during the final step %d: the run finished.", name, step)

    def stopped(self, step: int) -> Stopped:
        """The Stopped to raise once the checkpoint of `step` is complete."""
        if self._multiprocess:  # every process exits alike, whichever got the signal
            cause = "a preemption notice (SIGTERM or Ctrl-C to one of the processes)"
            signum = signal.SIGTERM
        else:
            cause, signum = signal.Signals(self.signum).name, self.signum
        return Stopped(
            f"Stopped by {cause} at step {step} after a checkpoint; rerun the same command "
            "to resume.",
            signum,
        )
