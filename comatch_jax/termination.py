"""SIGTERM and Ctrl-C during training: a flag the loop checks, so it checkpoints first.

One process: a plain Python handler turns the first SIGTERM or SIGINT into a flag. Several
processes (after jax.distributed.initialize): JAX's preemption service owns SIGTERM (its
notifier tells every process, and `multihost_utils.reached_preemption_sync_point`, which
Orbax's CheckpointManager.reached_preemption calls, names the step at which all of them
checkpoint); a Ctrl-C is handed to that service as a SIGTERM to this process. In both cases
the first signal restores the operating system's default action, so a second SIGTERM or
Ctrl-C ends the program at once, even inside a hung collective or a long evaluation.
"""

from __future__ import annotations

import os
import signal

from absl import logging


class TerminationRequest:
    """Turns the first SIGTERM / Ctrl-C into a flag (one process) or a preemption notice
    (several processes: `multiprocess=True`); a second one ends the program at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, multiprocess: bool = False):
        self.multiprocess = multiprocess
        self.requested = False
        self.signal_name = ""
        self._previous = {}

    def __enter__(self):
        # Several processes: SIGTERM stays with JAX's preemption notifier.
        handled = (signal.SIGINT,) if self.multiprocess else self.SIGNALS
        try:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in handled}
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        # The operating system's default from now on: a second signal ends the program.
        for sig in self._previous:
            signal.signal(sig, signal.SIG_DFL)
        logging.warning(
            "%s received: checkpointing and stopping (a second Ctrl-C or SIGTERM ends the "
            "program at once).",
            self.signal_name,
        )
        self.requested = True
        if self.multiprocess:  # every process learns of it through JAX's preemption service
            os.kill(os.getpid(), signal.SIGTERM)

    def on_preemption(self) -> None:
        """Called once the processes agreed to stop (several processes): from now on a
        second SIGTERM or Ctrl-C ends the program at once."""
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
