"""What every command's entry point shares: one-line errors, quiet libraries, the XLA:CPU flag.

A command defines `main = cli.entry_point(_run)` (`_run()` does the work, reading FLAGS) and
calls `cli.run(main)` under `if __name__ == "__main__"`. A bad flag or config file, and the
library's errors for bad input or a numerical fault (HANDLED_ERRORS), end in one `error:`
line (exit status 1); anything else is a bug and keeps its traceback."""

from __future__ import annotations

import logging as python_logging
import os
import sys
import traceback
from typing import Callable

import jaxlib  # its version only; importing it starts no backend
from absl import app, flags, logging

from comatch_jax.trainer.stopping import Stopped

HANDLED_ERRORS = (ValueError, OSError, FloatingPointError)
# XLA:CPU in jaxlib 0.10 sends convolutions to YNNPACK, 2-3x slower for a CoMatch step than
# XLA's own emitters on a 2-core AMD EPYC (experiments/RESULTS.md, "CPU step"); the entry
# points keep YNNPACK for dots only. No effect on GPU/TPU.
DEFAULT_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot"
MEASURED_JAXLIB = (0, 10)  # an unknown flag aborts XLA: only on the version measured


def measured_jaxlib() -> bool:
    """Whether the installed jaxlib is MEASURED_JAXLIB, whose XLA flags are known."""
    return tuple(int(part) for part in jaxlib.__version__.split(".")[:2]) == MEASURED_JAXLIB


def apply_default_cpu_flags() -> bool:
    """Adds DEFAULT_CPU_FLAG to XLA_FLAGS (before JAX starts its backend); returns whether it
    did. Not when XLA_FLAGS sets a YNNPACK fusion type already, COMATCH_JAX_KEEP_XLA_FLAGS=1,
    or on a jaxlib other than MEASURED_JAXLIB."""
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("COMATCH_JAX_KEEP_XLA_FLAGS") == "1" or "ynn_fusion_type" in xla_flags:
        return False
    if measured_jaxlib():
        os.environ["XLA_FLAGS"] = f"{xla_flags} {DEFAULT_CPU_FLAG}".strip()
        return True
    return False


def own_info_only(record: python_logging.LogRecord) -> bool:
    """The default log's filter: comatch_jax's own records, and the libraries' warnings and
    errors but their repeated "Reached preemption sync point" notes and their tracebacks (of
    an error the entry point reports once, or of a Ctrl-C ending one of their waits)."""
    if os.path.abspath(record.pathname).startswith(os.path.dirname(__file__) + os.sep):
        return True
    return record.levelno >= python_logging.WARNING and not (
        record.exc_info or "Reached preemption sync point" in record.getMessage()
    )


def entry_point(
    run: Callable[[], None], *, interrupted: str = "Interrupted (Ctrl-C)."
) -> Callable[[list[str]], None]:
    """main(argv) for absl's app.run: quiets the libraries (--verbosity=1 shows their INFO
    lines), calls run(), and ends a handled error in one `error:` line (exit status 1), a stop
    after a checkpoint in its line (128 + the signal's number) and a Ctrl-C in `interrupted`
    (130, at once: the interpreter's shutdown can crash in JAX's half-started threads)."""

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
        # Before TensorFlow (file reading only) starts: no C++ notes ("oneDNN ... are on").
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        if logging.get_verbosity() < 1:
            logging.get_absl_handler().addFilter(own_info_only)  # added once
            python_logging.getLogger("jax").setLevel(python_logging.WARNING)
        try:
            run()
        except HANDLED_ERRORS as error:
            sys.exit(f"error: {' '.join(str(error).split())}")
        except Stopped as stop:
            print(stop, file=sys.stderr)
            sys.exit(stop.exit_status)
        except KeyboardInterrupt:
            print(interrupted, file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(130)  # no interpreter shutdown; Orbax's saves are atomic

    return main


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with a missing config file, a bad override, an error in the config
    file's get_config, or num_labels for an image folder (it labels every image under
    labeled/) as one line (SystemExit)."""
    for arg in argv:
        path = arg.partition("=")[2].split(":")[0] if arg.startswith("--config=") else ""
        if path and not os.path.isfile(path):
            sys.exit(f"error: no such config file {path}")
    try:
        remaining = flags.FLAGS(argv)
        config = flags.FLAGS.config if "config" in flags.FLAGS else None  # may be optional
        folder = config is not None and config.dataset.name == "image_folder"
    except Exception as error:  # every error here is one of the input
        sys.exit(f"error: {_one_line(error)}")
    if folder and "--config.num_labels" in " ".join(argv):
        labeled = os.path.join(config.dataset.root or "ROOT", "labeled")
        sys.exit(
            f"error: image folders use every image under {labeled}; num_labels does not apply: "
            f"remove --config.num_labels, and move images out of {labeled} to use fewer"
        )
    return remaining


def _one_line(error: Exception) -> str:
    """The message of a flag-parsing error: absl's, ml_collections' (get_config's own error is
    the innermost of its wrappers), or a bug's in a config file, with where it was raised."""
    if "Error whilst parsing config file" in str(error):
        while error.__cause__ or error.__context__:
            error = error.__cause__ or error.__context__
    text = error
    while isinstance(text, BaseException) and text.args:  # AttributeError(KeyError(message))
        text = text.args[0]
    text = " ".join(str(text).split())
    if isinstance(error, (KeyError, AttributeError)):  # ml_collections: no such field
        return f"no such config field {text}"
    if isinstance(error, (ValueError, flags.Error)):
        return text
    if isinstance(error, SyntaxError):
        return f"SyntaxError: {error.msg} ({error.filename}, line {error.lineno})"
    where = traceback.extract_tb(error.__traceback__)[-1]
    return f"{type(error).__name__}: {text} ({where.filename}, line {where.lineno})"


def run(main: Callable[[list[str]], None]) -> None:
    """app.run(main) with parse_flags."""
    app.run(main, flags_parser=parse_flags)
