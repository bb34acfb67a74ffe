"""The entry point every command shares: exit statuses, one-line endings, a quiet log."""

import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from comatch_jax import cli
from comatch_jax.trainer import stopping

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_stop_after_a_checkpoint_exits_with_128_plus_the_signal(capsys):
    """A scheduler tells "stopped, resumable" (the shell's status of a process ended by
    that signal) from "failed" (1); the one line is still printed."""
    for signum in (signal.SIGTERM, signal.SIGINT):

        def run():
            raise stopping.Stopped(f"Stopped by {signum.name} at step 4 after a checkpoint", signum)

        with pytest.raises(SystemExit) as exit_info:
            cli.entry_point(run)(["main"])
        assert exit_info.value.code == 128 + signum
        assert capsys.readouterr().err == f"Stopped by {signum.name} at step 4 after a checkpoint\n"


def test_stopped_is_a_system_exit_with_its_line_for_other_callers():
    stop = stopping.Stopped("Stopped by SIGTERM at step 2", signal.SIGTERM)
    assert isinstance(stop, SystemExit) and stop.code == "Stopped by SIGTERM at step 2"
    assert stop.exit_status == 143


def test_a_handled_error_is_one_line_and_a_bug_keeps_its_traceback():
    def bad_input():
        raise FloatingPointError("Non-finite loss\nin the steps up to 7")

    with pytest.raises(SystemExit) as exit_info:
        cli.entry_point(bad_input)(["main"])
    assert exit_info.value.code == "error: Non-finite loss in the steps up to 7"
    with pytest.raises(KeyError):
        cli.entry_point(lambda: {}["bug"])(["main"])


# A Ctrl-C while a thread is still running (as JAX's and TensorFlow's are during start-up):
# the interpreter's normal shutdown would wait for it (or, with JAX's, crash in it).
_INTERRUPTED_WITH_A_THREAD_RUNNING = """
import threading, time
from comatch_jax import cli

def run():
    threading.Thread(target=time.sleep, args=(60,)).start()  # not a daemon
    raise KeyboardInterrupt

cli.entry_point(run, interrupted="Interrupted at start-up.")(["main"])
"""


def test_a_ctrl_c_ends_at_once_with_its_line_and_130():
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_WITH_A_THREAD_RUNNING],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=50,
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr == "Interrupted at start-up.\n"
    assert time.monotonic() - start < 30


def _record(pathname, level, message="m", exc_info=None):
    return logging.LogRecord("x", level, pathname, 1, message, (), exc_info)


def test_the_log_keeps_own_info_and_library_warnings_without_their_tracebacks():
    keep = cli.own_info_only
    own = os.path.join(os.path.dirname(cli.__file__), "trainer", "train.py")
    library = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
    assert keep(_record(own, logging.INFO)) and not keep(_record(library, logging.INFO))
    assert keep(_record(library, logging.WARNING)) and keep(_record(library, logging.ERROR))
    assert not keep(_record(library, logging.WARNING, "Reached preemption sync point, 3"))
    # A library's traceback (Orbax's threads after a full disk, a Ctrl-C ending a wait) is
    # the error the entry point reports once; ours are kept.
    try:
        raise ValueError("No space left on device")
    except ValueError:
        failure = sys.exc_info()
    assert not keep(_record(library, logging.ERROR, "Save Finalize thread failed.", failure))
    assert keep(_record(own, logging.ERROR, "ours", failure))


_IMPORTS_TENSORFLOW = """
from comatch_jax import cli
cli.entry_point(lambda: __import__("tensorflow"))(["main"])
"""


def test_tensorflow_prints_nothing_when_an_entry_point_imports_it():
    """TensorFlow's C++ start-up notes ("oneDNN custom operations are on", on CPUs where it
    turns oneDNN on) are not printed whatever the CPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTS_TENSORFLOW], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
