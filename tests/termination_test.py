"""termination's signal watcher: the line before a second signal ends the program, and the
order of the note on an ignored repeat (fast: no training)."""

import logging
import os
import signal
import time

from comatch_jax.trainer import stopping as termination


def test_the_line_before_a_second_signal_ends_the_program_names_both():
    watch = termination._RepeatWatch((signal.SIGUSR1,), 2.0)
    try:
        assert not watch.arrived(signal.SIGTERM, 0.0)
        assert watch.arrived(signal.SIGINT, 4.0)
        assert watch.ending_line(signal.SIGINT).startswith(
            "SIGINT after SIGTERM: ending now without the stop's checkpoint"
        )
        assert watch.ending_line(signal.SIGTERM).startswith("SIGTERM again: ending now")
    finally:
        watch.close()


def test_the_note_on_an_ignored_repeat_waits_for_the_handlers_line(caplog):
    """`timeout -s INT` delivers the signal twice at once: the watcher sees both before the
    main thread runs its handler; its note must come after the handler's line."""
    handled = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    watch = termination._RepeatWatch((signal.SIGUSR1,), 2.0, handled=lambda: bool(handled))
    try:
        with caplog.at_level(logging.WARNING, logger="absl"):
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.3)
            assert "received again" not in caplog.text
            handled.append(True)
            deadline = time.monotonic() + 5
            while "received again" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
        assert "SIGUSR1 received again" in caplog.text and "ignored" in caplog.text
    finally:
        watch.close()
        signal.signal(signal.SIGUSR1, previous)


_BLOCKED_AT_START_UP = """
import threading
from comatch_jax.trainer import stopping as termination

with termination.OneLineOnSigterm("Terminated (SIGTERM) at start-up."):
    print("ready", flush=True)
    threading.Event().wait(60)  # as a main thread busy in JAX's set-up
"""


def test_a_sigterm_outside_the_loop_is_one_line_then_the_default_action():
    """It used to end the program silently (status 143): now it says so first."""
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-c", _BLOCKED_AT_START_UP],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert process.stdout.readline() == "ready\n"
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM  # the shell's 143
    assert stderr == "Terminated (SIGTERM) at start-up.\n"
    assert time.monotonic() - start < 10
