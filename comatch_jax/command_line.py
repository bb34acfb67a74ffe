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
import difflib
import os
import sys
from typing import Callable

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from comatch_jax import library_logs
from comatch_jax.trainer import stopping as termination

HANDLED_ERRORS = (ValueError, OSError, FloatingPointError)
INTERRUPTED = "Interrupted (Ctrl-C)."


def entry_point(
    run: Callable[[], None], *, interrupted: str = INTERRUPTED
) -> Callable[[list[str]], None]:
    """main(argv) for absl's app.run: rejects positional arguments, hides the libraries'
    INFO lines (absl's --verbosity=1 shows them), calls run() and turns a handled error into
    `error: <message>` on stderr with exit status 1 (SystemExit), a stop after a checkpoint
    (termination.Stopped) into its line with exit status 128 + the signal's number
    (SystemExit), and a Ctrl-C into `interrupted` with exit status 130 (`end_at_once`: a
    Ctrl-C during start-up can leave JAX's and TensorFlow's threads half set up, and the
    interpreter's normal shutdown then crashed in them), each printed once."""

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
        library_logs.quiet_library_logs()
        try:
            run()
        except HANDLED_ERRORS as error:
            sys.exit(f"error: {error}")
        except termination.Stopped as stop:  # resumable: not an error's status 1
            print(stop, file=sys.stderr)
            sys.exit(stop.exit_status)
        except KeyboardInterrupt:
            print(interrupted, file=sys.stderr)
            end_at_once(130)

    return main


def end_at_once(status: int) -> None:
    """Flushes the log and stdio, then ends the process with `status` (os._exit): no
    interpreter shutdown, which after a Ctrl-C during start-up ran into JAX's / TensorFlow's
    half-initialised threads ('Fatal Python error: Segmentation fault', status 139). Nothing
    is lost: checkpoints are written atomically by Orbax (one still being written is not
    committed), and the trainer closes its checkpoint manager, finishing a started save,
    before the interrupt reaches here."""
    try:
        absl_logging.flush()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or a broken pipe: nothing more to say
                pass
        os._exit(status)


def _config_file_error(error: BaseException) -> BaseException | None:
    """The exception a config file's get_config raised, if `error` is (or wraps) one.

    ml_collections re-raises a TypeError/ValueError from get_config as 'Error whilst parsing
    config file:' plus the whole traceback, which absl wraps again ('flag --config=...: ');
    the original is at the end of that chain (__context__). Other exception types arrive
    unwrapped. Found by the get_config frame in its traceback."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        frame = error.__traceback__
        while frame is not None:
            if frame.tb_frame.f_code.co_name == "get_config":
                return error
            frame = frame.tb_next
        error = error.__cause__ or error.__context__
    return None


def _config_file_message(error: BaseException) -> str:
    """One line for an exception from a config file's get_config: the message of a handled
    error (bad input, e.g. an unknown preset), else the type, message and where it was raised
    in the config file (a bug in the file)."""
    message = " ".join(str(error).split())
    if isinstance(error, HANDLED_ERRORS + (TypeError,)):
        return message
    frame = error.__traceback__
    where = ""
    while frame is not None:
        if frame.tb_frame.f_code.co_name == "get_config":
            where = f" ({frame.tb_frame.f_code.co_filename}, line {frame.tb_lineno})"
        frame = frame.tb_next
    return f"{type(error).__name__}: {message}{where}"


def _syntax_error(error: BaseException) -> str | None:
    """One line for a SyntaxError (a config file that is not valid Python) in `error`'s
    chain (absl and ml_collections wrap it): its message, file and line; else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, SyntaxError):
            return f"SyntaxError: {error.msg} ({error.filename}, line {error.lineno})"
        error = error.__cause__ or error.__context__
    return None


def _missing_config_file(path: str) -> str | None:
    """'no such config file PATH' (naming the closest file in its directory) when `path`
    does not exist, else None."""
    if os.path.exists(path):
        return None
    directory = os.path.dirname(path) or "."
    files = os.listdir(directory) if os.path.isdir(directory) else []
    closest = difflib.get_close_matches(os.path.basename(path), files, n=1)
    hint = f"; did you mean {os.path.join(os.path.dirname(path), closest[0])}?" if closest else ""
    return f"no such config file {path}{hint}"


def _unreadable_config_file(config_flag: flags.Flag) -> str | None:
    """One line when a --config file could not be read (ml_collections keeps the IOError in a
    placeholder, `_ErrorConfig`, that raises it only when the config is first used): a
    missing file (naming the closest file in its directory) or the error; else None."""
    value = config_flag.value
    if value is None or type(value).__name__ != "_ErrorConfig":
        return None
    path = str(config_flag.serialize()).partition("=")[2].split(":", 1)[0] or "?"
    missing = _missing_config_file(path)
    if missing:
        return missing
    detail = " ".join(str(object.__getattribute__(value, "_error")).split())
    return f"cannot load config file {path}: {detail}"


def _unloadable_config_in(error: BaseException, argv: list[str]) -> str | None:
    """One line when parsing failed because the --config file could not be loaded and an
    override touched ml_collections' placeholder for it (its IOError, 'Configuration is not
    available ...' / 'Failed loading config file ...', is raised during parsing then)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if isinstance(error, OSError) and (
            "Configuration is not available" in text or "Failed loading config file" in text
        ):
            break
        error = error.__cause__ or error.__context__
    else:
        return None
    paths = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    if not paths:
        return None
    path = paths[-1].split(":", 1)[0]
    return _missing_config_file(path) or f"cannot load config file {path}: {' '.join(text.split())}"


def check_config_overrides(config_flag: flags.Flag) -> None:
    """Raises ValueError (one line) for a `--config.*` override the config ignores: so far
    num_labels for an image folder, where every image under labeled/ is labeled (decided in
    issue 21; the config's default must keep working, so only an explicit override is an
    error)."""
    try:
        overrides = config_flags.get_override_values(config_flag)
    except (TypeError, flags.Error):  # not a config flag, or not given (oracle's --workdir)
        return
    config = config_flag.value
    if "num_labels" not in overrides or config.dataset.get("name") != "image_folder":
        return
    root = config.dataset.get("root")
    labeled = os.path.join(root, "labeled") if root else "labeled/"
    count = "every image"
    if root and os.path.isdir(labeled):
        from comatch_jax.data import image_folder  # no JAX, no TensorFlow

        count = f"all {len(image_folder.list_image_files(labeled)[0])} images"
    raise ValueError(
        f"image folders use {count} under {labeled}; num_labels does not apply: remove "
        f"--config.num_labels, and move images out of {labeled} to use fewer"
    )


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a config override naming a missing field (or a bad value), or an
    error in a config file's get_config (e.g. an unknown preset), turned into one line
    (SystemExit) instead of a traceback; then check_config_overrides for a --config flag."""
    try:
        remaining = flags.FLAGS(argv)
    except Exception as error:  # pylint: disable=broad-except
        syntax_error = _syntax_error(error)
        if syntax_error is not None:
            sys.exit(f"error: {syntax_error}")
        from_config_file = _config_file_error(error)
        if from_config_file is not None:
            sys.exit(f"error: {_config_file_message(from_config_file)}")
        # A missing config file with overrides: the overrides touch ml_collections'
        # placeholder for the unreadable file, which raises its IOError during parsing.
        unreadable = _unloadable_config_in(error, argv)
        if unreadable:
            sys.exit(f"error: {unreadable}")
        if not isinstance(error, (AttributeError, KeyError, TypeError, ValueError, flags.Error)):
            raise
        detail = str(error.args[0] if error.args else error)
        if isinstance(error, AttributeError):  # ml_collections: a field that does not exist
            try:
                detail = "no such config field " + ast.literal_eval(detail)
            except (ValueError, SyntaxError):
                pass
        detail = " ".join(detail.split())
        sys.exit(f"error: bad command-line flag or config override: {detail}")
    if "config" in flags.FLAGS:
        unreadable = _unreadable_config_file(flags.FLAGS["config"])
        if unreadable:
            sys.exit(f"error: {unreadable}")
        try:
            check_config_overrides(flags.FLAGS["config"])
        except ValueError as error:
            sys.exit(f"error: {error}")
    return remaining


def run(main: Callable[[list[str]], None]) -> None:
    """app.run(main) with parse_flags."""
    app.run(main, flags_parser=parse_flags)
