"""SIGTERM and Ctrl-C during training: a flag the loop checks, so it checkpoints first.

One process: a plain Python handler turns the first SIGTERM or SIGINT into a flag. Several
processes (after jax.distributed.initialize): JAX's preemption service owns SIGTERM (its
notifier tells every process, and `multihost_utils.reached_preemption_sync_point`, which
Orbax's CheckpointManager.reached_preemption calls, names the step at which all of them
checkpoint). During training a Python handler takes SIGTERM and SIGINT from JAX's C handler
and passes the first one on to it (`_ChainedCHandler`: the notifier's handler only sets a
flag its listener thread polls each second). After training nothing polls that service:
SIGTERM gets the default action and Ctrl-C is a plain interrupt again.

A repeat of the first signal within `REPEAT_WINDOW_S` (2 s) of it is the same request and
is ignored (logged once): GNU `timeout` and batch schedulers (Slurm) signal the process and
then its whole process group, so one stop arrives twice within microseconds. A later signal,
or one of the other kind, ends the program at once (the operating system's default action),
even inside a hung collective or a long evaluation: a watcher thread (`_RepeatWatch`) learns
of every signal through Python's wakeup fd (`signal.set_wakeup_fd`, written as each one is
delivered, whether or not the main thread, blocked in C, has run the Python handler yet;
JAX's blocking calls release the GIL, so the thread runs) and ends the program itself.
Outside training, `install`'s SA_RESETHAND still makes a second signal the end; in
training it is not used, as it turned the duplicate into the end of the program before any
checkpoint. Where libc's sigaction cannot be reached (a
libc other than glibc on x86-64 / AArch64), SIGTERM stays with JAX's notifier during
training, which swallows a second one before the stop step; a second Ctrl-C, or SIGKILL,
ends the process there.

Several processes, before that service is up (imports, jax.distributed.initialize): a
signal would end this process alone and leave the others waiting for it in a collective
until JAX's time-outs (minutes). `HeldForPreemptionService` holds it and hands it to the
service once jax.distributed is initialised, so every process stops at its first step with
a checkpoint.
"""

from __future__ import annotations

import ctypes
import os
import platform
import select
import signal
import sys
import threading
import time

from absl import logging

# A repeat of the same stop signal this soon after the first is the same request (seconds).
REPEAT_WINDOW_S = 2.0


class Stopped(SystemExit):
    """The run stopped after the checkpoint a SIGTERM or Ctrl-C asked for (resumable).

    A SystemExit whose message is the one line to print (so a plain caller, e.g. a script
    calling train.train_and_evaluate, prints it and exits with 1, as Python does for any
    SystemExit with a message); `exit_status` is 128 + the signal's number (143 for SIGTERM,
    130 for SIGINT), the shell's status of a process ended by that signal, which the command
    line's entry point (command_line.entry_point) exits with after printing the line, so
    that a scheduler can tell "stopped, resumable" from "failed" (1)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_status = 128 + self.signum


class TerminationRequest:
    """Turns the first SIGTERM / Ctrl-C into a flag (one process) or a preemption notice
    (several processes: `multiprocess=True`). A repeat of the same signal within
    `repeat_window_s` seconds of the first is ignored; a later one, or one of the other kind,
    ends the program at once (`_RepeatWatch`)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, multiprocess: bool = False, repeat_window_s: float = REPEAT_WINDOW_S):
        self.multiprocess = multiprocess
        self.repeat_window_s = repeat_window_s
        self.requested = False
        self.signal_name = ""
        self.signum = 0  # the first signal's number, once requested
        self._previous = {}
        self._notifier = None  # several processes: JAX's SIGTERM handler, chained
        self._watch = None

    def __enter__(self):
        handled = self.SIGNALS
        if self.multiprocess:  # SIGTERM belongs to JAX's preemption notifier: chain to it
            self._notifier = _ChainedCHandler.take(signal.SIGTERM)
            if self._notifier is None:  # cannot be read here: leave SIGTERM to the notifier
                handled = (signal.SIGINT,)
        try:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in handled}
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        if self._previous:
            self._watch = _RepeatWatch(
                tuple(self._previous), self.repeat_window_s, handled=lambda: self.requested
            )
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a repeat: `_RepeatWatch` ignores it or ends the program
            return
        self.signal_name = signal.Signals(signum).name
        self.signum = signum
        logging.warning(
            "%s received: checkpointing and stopping (another Ctrl-C or SIGTERM ends the "
            "program at once; a repeat of this one within %g s is taken as the same request).",
            self.signal_name,
            self.repeat_window_s,
        )
        self.requested = True
        if self.multiprocess:  # every process learns of it through JAX's preemption service
            if self._notifier is not None:
                self._notifier.call(signal.SIGTERM)
            else:
                os.kill(os.getpid(), signal.SIGTERM)

    def on_preemption(self) -> None:
        """Called once the processes agreed to stop (several processes): from now on a
        SIGTERM or Ctrl-C to this process ends the program at once (unless it repeats, within
        the window, one this process received)."""
        if self._watch is not None:
            self._watch.stopping()

    def __exit__(self, *exc):
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        # Leaving the loop (a stop, the end, an error): the program may go on (a notebook
        # calling train_and_evaluate), so the handlers are put back as they were before it.
        for sig, previous in self._previous.items():
            if not self.multiprocess:
                signal.signal(sig, previous)
            elif sig == signal.SIGTERM:
                # After training nothing polls JAX's preemption service any more (and after
                # an error, e.g. a peer that died, the exit may block in JAX's shutdown): a
                # SIGTERM ends the process, as with one process.
                signal.signal(sig, signal.SIG_DFL)
            else:  # a Ctrl-C is a plain interrupt (one line, exit 130); a second one ends it
                install(sig, signal.default_int_handler)


class _RepeatWatch:
    """A daemon thread that sees every delivery of `signals` (Python's C-level handler writes
    each one's number to the wakeup fd set here, at delivery, even while the main thread is
    blocked in C and cannot run the Python handler) and ends the program at once (the
    signal's default action, as `_end_now`, after one line on stderr naming both signals)
    at the second one, unless it repeats the first within `window_s` seconds (logged once,
    after the main thread's handler has logged the first: `handled`; ignored). Needs the
    main thread (`_WakeupPipe`); `close` puts the previous wakeup fd back and ends the
    thread."""

    def __init__(
        self,
        signals: tuple[int, ...],
        window_s: float,
        handled=lambda: True,
    ):
        self._signals = signals
        self._window_s = window_s
        # handled() is True once the main thread's handler has run (and logged the first
        # signal): the note on an ignored repeat waits for it (at most window_s), so that it
        # follows that line (`timeout -s INT` delivers both at once, before the main thread
        # runs its handler).
        self._handled = handled
        self._first: tuple[int, float] | None = None  # (signal, monotonic time)
        self._ignored_logged = False
        self._note: tuple[str, float] | None = None  # an ignored repeat's note, not yet logged
        self._lock = threading.Lock()
        self._pipe = _WakeupPipe()
        self._read = self._pipe.read
        threading.Thread(target=self._run, name="stop-signal-watch", daemon=True).start()

    def arrived(self, signum: int, now: float) -> bool:
        """Records one delivery of `signum` at `now` (seconds, monotonic); True when it must
        end the program: any signal after the first, except a repeat of the first's kind
        within the window."""
        with self._lock:
            if self._first is None:
                self._first = (signum, now)
                return False
            first, since = self._first
            if signum == first and now - since <= self._window_s:
                if not self._ignored_logged:
                    self._ignored_logged = True
                    note = (
                        f"{signal.Signals(signum).name} received again {now - since:.3f} s "
                        "after the first: the same stop request (e.g. `timeout` or a "
                        "scheduler signalling the process and then its group), ignored; "
                        f"another one after {self._window_s:g} s ends the program at once."
                    )
                    self._note = (note, now)
                return False
            return True

    def ending_line(self, signum: int) -> str:
        """The one line written (straight to stderr) before a signal ends the program."""
        with self._lock:
            first = self._first[0] if self._first else 0
        name = signal.Signals(signum).name
        if first == signum:
            before = "again"
        elif first:
            before = f"after {signal.Signals(first).name}"
        else:
            before = "after the preemption notice"
        return (
            f"{name} {before}: ending now without the stop's checkpoint (the workdir keeps "
            "its complete checkpoints; rerun the same command to resume)."
        )

    def _log_note(self, force: bool) -> None:
        """Logs a pending note on an ignored repeat once the handler has run (or `force`)."""
        with self._lock:
            note = self._note
            if note is None or not (force or self._handled()):
                return
            self._note = None
        logging.warning("%s", note[0])

    def _note_overdue(self) -> bool:
        note = self._note
        return note is not None and time.monotonic() - note[1] > self._window_s

    def stopping(self) -> None:
        """The run stops for a notice this process may not have received itself (several
        processes): from now on any signal ends the program (bar a repeat of its own first)."""
        with self._lock:
            if self._first is None:
                self._first = (0, float("-inf"))

    def _run(self) -> None:
        try:
            while True:
                # While a note waits for the handler, poll (every 10 ms) instead of blocking.
                timeout = 0.01 if self._note is not None else None
                if not select.select([self._read], [], [], timeout)[0]:
                    self._log_note(force=self._note_overdue())
                    continue
                data = os.read(self._read, 64)
                if not data:  # closed
                    break
                now = time.monotonic()
                for signum in data:
                    if signum in self._signals and self.arrived(signum, now):
                        # Direct to stderr: the main thread may hold logging's locks.
                        _write_stderr(self.ending_line(signum))
                        _end_now(signum)
                self._log_note(force=False)
        finally:
            self._log_note(force=True)
            os.close(self._read)

    def close(self) -> None:
        self._pipe.close()  # the thread reads the end of the pipe and returns


class _WakeupPipe:
    """Python's wakeup fd (`signal.set_wakeup_fd`; main thread only) pointed at a new pipe:
    the number of each signal with a Python handler arrives on `read` as it is delivered,
    even while the main thread is blocked in C. `close` puts the previous wakeup fd back and
    closes the write end, so a reader of `read` sees the end of the pipe (it closes `read`)."""

    def __init__(self):
        self.read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        os.close(self._write)


def _write_stderr(line: str) -> None:
    """Writes one line to file descriptor 2 directly (no locks: safe while another thread
    holds logging's or sys.stderr's)."""
    try:
        os.write(2, (line + "\n").encode())
    except OSError:
        pass


def _end_now(signum: int) -> None:
    """Ends the process by `signum`'s default action (from any thread: libc's signal(), as
    Python's signal.signal works in the main thread only); exit status 128 + signum where
    libc cannot be reached."""
    try:
        libc_signal = ctypes.CDLL(None).signal
        libc_signal.restype = ctypes.c_void_p
        libc_signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
        libc_signal(signum, None)  # SIG_DFL
        os.kill(os.getpid(), signum)
        time.sleep(5)  # delivered to some thread at once; this one waits for the end
    except (OSError, AttributeError):
        pass
    os._exit(128 + signum)


def install(signum: int, handler) -> object:
    """`signal.signal(signum, handler)` (returns the previous Python handler), plus, where
    libc's sigaction is reachable (`_Sigaction`), SA_RESETHAND: the kernel restores the
    default action as it delivers the signal. Python runs `handler` only when its main thread
    runs bytecode, so without it a second signal to a main thread blocked in C (a collective
    whose peer died, JAX's shutdown barrier) would be swallowed too; with it the second one
    ends the process at once."""
    previous = signal.signal(signum, handler)
    action = _Sigaction.read(signum)
    if action is not None:
        flags = ctypes.c_uint32.from_buffer(action, _Sigaction.FLAGS_OFFSET)
        flags.value |= _Sigaction.SA_RESETHAND
        _Sigaction.write(signum, action)
    return previous


class _Sigaction:
    """libc's `struct sigaction` of a signal as a ctypes buffer. Only on glibc for x86-64 and
    AArch64, whose struct starts with the handler (8 bytes), then a 128-byte mask and the
    int flags (152 bytes in all on x86-64); `read` returns None elsewhere."""

    SIZE = 256  # at least sizeof(struct sigaction)
    FLAGS_OFFSET = 8 + 128
    SA_SIGINFO = 0x4
    SA_RESETHAND = 0x80000000

    @classmethod
    def read(cls, signum: int):
        if not (sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")):
            return None
        try:
            action = ctypes.create_string_buffer(cls.SIZE)
            return action if ctypes.CDLL(None).sigaction(signum, None, action) == 0 else None
        except (OSError, AttributeError):
            return None

    @staticmethod
    def write(signum: int, action) -> None:
        ctypes.CDLL(None).sigaction(signum, action, None)


class _ChainedCHandler:
    """A signal handler installed from C (JAX's preemption notifier: `std::signal(SIGTERM,
    f)` with an `f` that sets an atomic flag; xla/tsl/.../preemption_notifier.cc), read with
    libc's sigaction (`_Sigaction`) so that a Python handler can replace it and still call it
    once. `take` returns None where sigaction cannot be read and where the current handler is
    the default or ignore, takes three arguments (SA_SIGINFO), or is Python's own (the one
    SIGINT has while Python handles it; `signal.getsignal` cannot tell, as it does not see
    handlers installed from C)."""

    def __init__(self, address: int):
        self._address = address

    @classmethod
    def take(cls, signum: int) -> "_ChainedCHandler | None":
        saved = _Sigaction.read(signum)
        if saved is None:
            return None
        address = ctypes.c_void_p.from_buffer(saved).value or 0
        flags = ctypes.c_uint32.from_buffer(saved, _Sigaction.FLAGS_OFFSET).value
        if address in (0, 1) or flags & _Sigaction.SA_SIGINFO:  # SIG_DFL, SIG_IGN, 3 args
            return None
        if callable(signal.getsignal(signal.SIGINT)):  # SIGINT holds Python's C handler
            python = _Sigaction.read(signal.SIGINT)
            if python is None or ctypes.c_void_p.from_buffer(python).value == address:
                return None
        return cls(address)

    def call(self, signum: int) -> None:
        """Runs the C handler as the signal would have (outside a signal context, which a
        handler that only sets a flag does not mind)."""
        ctypes.CFUNCTYPE(None, ctypes.c_int)(self._address)(signum)


class HeldForPreemptionService:
    """Several processes, start-up: the first SIGTERM or Ctrl-C received inside this context
    is held; on a normal exit (jax.distributed initialised, its preemption notifier owning
    SIGTERM) it is handed to that notifier as a SIGTERM to this process, and from then on a
    Ctrl-C is handed over the same way (until the trainer's TerminationRequest takes over).
    A second signal while one is held ends the program at once (`install`: the kernel
    restores the default as it delivers the first; unless jax.distributed.initialize has
    installed its SIGTERM handler since, when a second Ctrl-C does). On an error inside the
    context the previous handlers are restored."""

    def __init__(self):
        self.received = ""
        self._previous = {}

    def __enter__(self):
        try:
            self._previous = {sig: install(sig, self._hold) for sig in TerminationRequest.SIGNALS}
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        return self

    def _hold(self, signum, frame):
        if self.received:  # a second signal: end now
            os._exit(128 + signum)
        self.received = signal.Signals(signum).name
        # SIGTERM's handler is left alone: jax.distributed.initialize may have replaced this
        # one with its notifier's already. (The kernel reset the received signal's.)
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
            install(signal.SIGINT, _interrupt_to_preemption)
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


class OneLineOnSigterm:
    """One process, outside the training loop (start-up: JAX, the model, Orbax, the writers;
    the final evaluation): a SIGTERM writes `line` to stderr and ends the program at once by
    SIGTERM's default action (exit status 143 in a shell), as it did silently before.

    As `_RepeatWatch`: a daemon thread reads Python's wakeup fd (written as the signal is
    delivered, even while the main thread is blocked in C) and ends the program itself; the
    Python handler does nothing (installed with SA_RESETHAND, `install`: a second SIGTERM is
    the default action even if this thread could not run). The training loop's
    TerminationRequest takes SIGTERM over inside it and gives it back after. Nothing is
    lost: Orbax commits a checkpoint atomically, so the workdir keeps only complete ones.
    Needs the main thread (else does nothing)."""

    def __init__(self, line: str):
        self._line = line
        self._previous = None
        self._pipe: _WakeupPipe | None = None

    def __enter__(self):
        try:
            self._previous = install(signal.SIGTERM, _do_nothing)
        except ValueError:  # not the main thread: leave signals alone
            return self
        self._pipe = _WakeupPipe()
        threading.Thread(
            target=self._run, args=(self._pipe.read,), name="sigterm-watch", daemon=True
        ).start()
        return self

    def _run(self, read: int) -> None:
        try:
            while data := os.read(read, 64):  # b"": closed
                if signal.SIGTERM in data:
                    _write_stderr(self._line)
                    _end_now(signal.SIGTERM)
        finally:
            os.close(read)

    def __exit__(self, *exc):
        if self._pipe is None:
            return
        self._pipe.close()  # the thread reads the end of the pipe and returns
        self._pipe = None
        signal.signal(signal.SIGTERM, self._previous)


def _do_nothing(signum, frame):
    """A Python handler, so that Python's C handler writes the signal to the wakeup fd; the
    watcher thread acts on it."""
