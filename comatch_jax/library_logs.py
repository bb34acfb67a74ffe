"""One log line per event: the libraries' (Orbax, clu, JAX, TensorFlow...) INFO lines hidden.

Orbax and clu log through absl, JAX through Python's logging; absl's handler on the root
logger prints them all. By default the commands keep comatch_jax's own INFO lines
(progress, evaluation, checkpoints) and everyone's warnings and errors; absl's
--verbosity=1 (or more) shows the libraries' logs too.
"""

from __future__ import annotations

import logging as python_logging
import os

from absl import logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


# Library warnings that are notes about an event the trainer reports itself, repeated
# (Orbax logs each process's and thread's arrival at the preemption sync point).
_REPEATED_NOTES = ("Reached preemption sync point",)


class OwnInfoOnly(python_logging.Filter):
    """Passes warnings and errors (but the libraries' repeated notes above, and their
    tracebacks of a Ctrl-C, e.g. Orbax's "Save Finalize thread failed" when a Ctrl-C ends
    its wait: the entry point says "Interrupted" in one line), and records below WARNING only
    from comatch_jax's own modules (by the calling file's path)."""

    def filter(self, record: python_logging.LogRecord) -> bool:
        own = os.path.abspath(record.pathname).startswith(_PACKAGE_DIR)
        error_type = record.exc_info[0] if record.exc_info else None
        if not own and error_type is not None and issubclass(error_type, KeyboardInterrupt):
            return False
        if record.levelno >= python_logging.WARNING:
            return own or not any(note in record.getMessage() for note in _REPEATED_NOTES)
        return own


def quiet_library_logs() -> None:
    """Hides the libraries' INFO/DEBUG lines unless absl's --verbosity is 1 or more (call
    after flag parsing; idempotent)."""
    handler = logging.get_absl_handler()
    for existing in [f for f in handler.filters if isinstance(f, OwnInfoOnly)]:
        handler.removeFilter(existing)
    if logging.get_verbosity() < 1:
        handler.addFilter(OwnInfoOnly())
        # TensorFlow's C++ logs (file reading only: e.g. "Local rendezvous is aborting" after
        # a corrupt image), if TensorFlow is imported after this call.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # JAX's own loggers (e.g. compilation cache notes) stop at WARNING by default as well.
    python_logging.getLogger("jax").setLevel(
        python_logging.WARNING if logging.get_verbosity() < 1 else python_logging.NOTSET
    )
