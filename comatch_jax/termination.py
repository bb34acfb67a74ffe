"""SIGTERM and Ctrl-C during training: a flag the loop checks, so it checkpoints first.

One process: a plain Python handler turns the first SIGTERM or SIGINT into a flag. Several
processes (after jax.distributed.initialize): JAX's preemption service owns SIGTERM (its
notifier tells every process, and `multihost_utils.reached_preemption_sync_point`, which
Orbax's CheckpointManager.reached_preemption calls, names the step at which all of them
checkpoint); a Ctrl-C is handed to that service as a SIGTERM to this process. In both cases
the first signal restores the operating system's default action, so a second SIGTERM or
Ctrl-C ends the program at once, even inside a hung collective or a long evaluation. (With
several processes, a second SIGTERM reaches JAX's notifier, not Python, until the processes
reach their stop step: there a second Ctrl-C, or SIGKILL, ends the process.)

Several processes, before that service is up (imports, jax.distributed.initialize): a
signal would end this process alone and leave the others waiting for it in a collective
until JAX's time-outs (minutes). `HeldForPreemptionService` holds it and hands it to the
service once jax.distributed is initialised, so every process stops at its first step with
a checkpoint.
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


class HeldForPreemptionService:
    """Several processes, start-up: the first SIGTERM or Ctrl-C received inside this context
    is held; on a normal exit (jax.distributed initialised, its preemption notifier owning
    SIGTERM) it is handed to that notifier as a SIGTERM to this process, and from then on a
    Ctrl-C is handed over the same way (until the trainer's TerminationRequest takes over).
    A second signal while one is held ends the program at once (a SIGTERM: as soon as Python
    runs again). On an error inside the context the previous handlers are restored."""

    def __init__(self):
        self.received = ""
        self._previous = {}

    def __enter__(self):
        try:
            self._previous = {
                sig: signal.signal(sig, self._hold) for sig in TerminationRequest.SIGNALS
            }
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        return self

    def _hold(self, signum, frame):
        if self.received:  # a second signal: end now
            os._exit(128 + signum)
        self.received = signal.Signals(signum).name
        # SIGTERM's handler is left alone: jax.distributed.initialize may have replaced this
        # one with its notifier's already (a signal received inside that call is handled
        # here only after it returns).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        logging.warning(
            "%s received during start-up: every process stops at its first step with a "
            "checkpoint (a second Ctrl-C or SIGTERM ends this one at once).",
            self.received,
        )

    def __exit__(self, exc_type, *exc):
        if not self._previous:
            return
        if exc_type is not None:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
            return
        # SIGTERM now belongs to JAX's preemption notifier (installed by initialize); do not
        # touch it. A Ctrl-C becomes a SIGTERM to this process, which the notifier sees.
        if not self.received:
            signal.signal(signal.SIGINT, _interrupt_to_preemption)
        else:
            os.kill(os.getpid(), signal.SIGTERM)


def _interrupt_to_preemption(signum, frame):
    """Several processes, between start-up and the training loop: a Ctrl-C is a preemption
    notice (a SIGTERM to this process, seen by JAX's notifier); a second one ends at once."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    logging.warning(
        "SIGINT received: every process stops at its next step with a checkpoint (a second "
        "Ctrl-C ends this one at once)."
    )
    os.kill(os.getpid(), signal.SIGTERM)
