"""SIGTERM and Ctrl-C during training: a flag the loop checks, so it checkpoints first."""

from __future__ import annotations

import signal

from absl import logging


class TerminationRequest:
    """Turns SIGTERM and Ctrl-C into a flag the loop checks, so it checkpoints before exiting."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous = {}

    def __enter__(self):
        try:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        logging.warning("%s received: checkpointing and stopping.", self.signal_name)
        self.requested = True

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
