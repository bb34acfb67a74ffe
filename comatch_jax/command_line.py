"""What every command's entry point shares (main, predict, probe, request_labels, oracle,
analyze): flag parsing whose errors are one line, the libraries' INFO lines hidden, and
each handled error or a Ctrl-C printed once, as one line, with a non-zero exit.

  if __name__ == "__main__":
      define_flags()
      command_line.run(main)

where `main = command_line.entry_point(_run)` and `_run()` does the work (reading FLAGS).
The handled errors are the ones the library raises for bad input or a numerical fault
(ValueError, OSError, FloatingPointError); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import ast
import sys
from typing import Callable

from absl import app, flags

from comatch_jax import library_logs

HANDLED_ERRORS = (ValueError, OSError, FloatingPointError)
INTERRUPTED = "Interrupted (Ctrl-C)."


def entry_point(
    run: Callable[[], None], *, interrupted: str = INTERRUPTED
) -> Callable[[list[str]], None]:
    """main(argv) for absl's app.run: rejects positional arguments, hides the libraries'
    INFO lines (absl's --verbosity=1 shows them), calls run() and turns a handled error into
    `error: <message>` on stderr with exit status 1 and a Ctrl-C into `interrupted` with
    exit status 130, each printed once (SystemExit)."""

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
        library_logs.quiet_library_logs()
        try:
            run()
        except HANDLED_ERRORS as error:
            sys.exit(f"error: {error}")
        except KeyboardInterrupt:
            print(interrupted, file=sys.stderr)
            sys.exit(130)

    return main


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a config override naming a missing field (or a bad value) turned
    into one line (SystemExit) instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as error:
        detail = str(error.args[0] if error.args else error)
        if isinstance(error, AttributeError):  # ml_collections: a field that does not exist
            try:
                detail = "no such config field " + ast.literal_eval(detail)
            except (ValueError, SyntaxError):
                pass
        detail = " ".join(detail.split())
        sys.exit(f"error: bad command-line flag or config override: {detail}")


def run(main: Callable[[list[str]], None]) -> None:
    """app.run(main) with parse_flags."""
    app.run(main, flags_parser=parse_flags)
