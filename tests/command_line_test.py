"""The entry point every command shares: exit statuses and one-line endings."""

import os
import signal
import subprocess
import sys
import time

import pytest

from comatch_jax import command_line
from comatch_jax.trainer import stopping as termination

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_stop_after_a_checkpoint_exits_with_128_plus_the_signal(capsys):
    """A scheduler tells "stopped, resumable" (the shell's status of a process ended by
    that signal) from "failed" (1); the one line is still printed."""
    for signum in (signal.SIGTERM, signal.SIGINT):

        def run():
            raise termination.Stopped(
                f"Stopped by {signum.name} at step 4 after a checkpoint", signum
            )

        with pytest.raises(SystemExit) as exit_info:
            command_line.entry_point(run)(["main"])
        assert exit_info.value.code == 128 + signum
        assert capsys.readouterr().err == f"Stopped by {signum.name} at step 4 after a checkpoint\n"


def test_stopped_is_a_system_exit_with_its_line_for_other_callers():
    stop = termination.Stopped("Stopped by SIGTERM at step 2", signal.SIGTERM)
    assert isinstance(stop, SystemExit) and stop.code == "Stopped by SIGTERM at step 2"
    assert stop.exit_status == 143


# A Ctrl-C while a thread is still running (as JAX's and TensorFlow's are during start-up):
# the interpreter's normal shutdown would wait for it (or, with JAX's, crash in it).
_INTERRUPTED_WITH_A_THREAD_RUNNING = """
import threading, time
from comatch_jax import command_line

def run():
    threading.Thread(target=time.sleep, args=(60,)).start()  # not a daemon
    raise KeyboardInterrupt

command_line.entry_point(run, interrupted="Interrupted at start-up.")(["main"])
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
