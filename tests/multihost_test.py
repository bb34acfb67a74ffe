"""Multi-host training, emulated with two CPU processes on this machine (jax.distributed over
localhost, gloo collectives): the real entry point with --coordinator_address etc.

A SIGTERM sent to one of two processes (during start-up, before jax.distributed is up, or
during training) stops both at the same step with one complete checkpoint (JAX's preemption
service); rerunning the command, they end where one process with two devices ends (the same global
batch split the same way), with one metrics line per log step (process 0 writes the run's
files). The two processes use host batches (data not on the device): each reads only its
own rows.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from comatch_jax.trainer import saved_runs as runs, stopping as termination

from kill_resume_test import REPO, TINY_RUN as DIGITS_RUN

# kill_resume_test's tiny digits run, longer and logged every other step.
OVERRIDES = {
    "--config.num_steps": "60",
    "--config.log_every": "2",
    "--config.checkpoint_every": "10",
    "--config.eval_every": "60",
    "--config.eval_batch_size": "200",
    "--config.keep_checkpoints": "10",
}
# Every process's exit status after the stop with a checkpoint a preemption notice asks for:
# 128 + SIGTERM (the shell's "ended by SIGTERM"; resumable), whichever process got the signal.
STOPPED = 128 + signal.SIGTERM
TINY_RUN = [arg for arg in DIGITS_RUN if arg.split("=")[0] not in OVERRIDES] + [
    f"{name}={value}" for name, value in OVERRIDES.items()
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir, *extra, processes=2, devices_per_process=1):
    """Starts the run as `processes` processes; returns the Popen objects."""
    env = dict(
        os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}"
    )
    command = [sys.executable, "-m", "comatch_jax.main", f"--workdir={workdir}", *TINY_RUN, *extra]
    if processes == 1:
        return [subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)]
    port = _free_port()
    return [
        subprocess.Popen(
            command
            + [
                f"--coordinator_address=localhost:{port}",
                f"--num_processes={processes}",
                f"--process_id={index}",
            ],
            cwd=REPO,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(processes)
    ]


def _wait(processes, timeout=300):
    """(return codes, stderr tails) of every process."""
    outputs = [p.communicate(timeout=timeout)[1] for p in processes]
    notes = lambda o: "".join(l for l in o.splitlines(True) if "preempt" in l or "SIGTERM" in l)
    return [p.returncode for p in processes], [notes(o) + o[-2000:] for o in outputs]


def _run(workdir, *extra, **kwargs):
    codes, errors = _wait(_start(workdir, *extra, **kwargs))
    assert codes == [0] * len(codes), "\n".join(errors)


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _final_params(workdir):
    run = runs.load_run(workdir)
    assert int(run.state.step) == 60
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(run.state.params))])


def _checkpoints(workdir):
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process with two (forced) devices."""
    workdir = str(tmp_path_factory.mktemp("one_process"))
    _run(workdir, processes=1, devices_per_process=2)
    return workdir


def _complete_checkpoints_only(workdir):
    entries = os.listdir(os.path.join(workdir, "checkpoints"))
    return all(name.isdigit() for name in entries)


def _logged_steps(workdir):
    """How many training metrics lines the workdir holds."""
    path = os.path.join(workdir, "metrics.jsonl")
    return open(path).read().count("train/loss") if os.path.exists(path) else 0


def _interrupt(workdir, when, *extra):
    """Starts two processes, sends SIGTERM to the second one `when` ('start-up': before
    jax.distributed is initialised; 'training': once training metrics are written),
    waits for both. Returns (return codes, stderr tails, checkpoint steps)."""
    logged_before = _logged_steps(workdir)  # a resumed run's workdir has some already
    processes = _start(workdir, *extra)
    if when == "start-up":  # before jax.distributed (and its preemption service) is up
        for line in processes[1].stderr:
            if "Starting process 1 of a multi-process run" in line:
                processes[1].send_signal(signal.SIGTERM)
                break
    else:
        deadline = time.time() + 900  # start-up is slow on a loaded machine
        while time.time() < deadline and all(p.poll() is None for p in processes):
            if _logged_steps(workdir) > logged_before:  # this run is training
                processes[1].send_signal(signal.SIGTERM)
                break
            time.sleep(0.02)
        else:
            pytest.fail("training did not start in time, or ended before the signal")
    codes, errors = _wait(processes)
    return codes, errors, _checkpoints(workdir)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Two processes of one device each, with host batches (each process reads only its own
    rows). The second one alone gets a SIGTERM during start-up (before jax.distributed is
    up); the same command is run again and its second process gets a SIGTERM once training
    has started; the same command then runs to the end. Returns {when: (return codes,
    stderr tails, step stopped at, only complete checkpoints)} and the workdir."""
    workdir = str(tmp_path_factory.mktemp("interrupted"))
    host_batches = "--config.data_on_device=false"
    stops = {}
    for when in ("start-up", "training"):
        codes, errors, checkpoints = _interrupt(workdir, when, host_batches)
        stopped = checkpoints[-1] if checkpoints else None
        complete = _complete_checkpoints_only(workdir) if checkpoints else False
        stops[when] = codes, errors, stopped, complete, len(checkpoints)
        if codes != [STOPPED, STOPPED]:
            return workdir, stops
    _run(workdir, host_batches)  # the same command resumes both processes and finishes
    return workdir, stops


def _stopped_by_preemption(errors, step):
    # JAX's preemption service: both processes stop at the same step.
    return all(
        "Stopped by a preemption notice (SIGTERM or Ctrl-C to one of the processes) at step "
        f"{step}" in error
        for error in errors
    )


def test_sigterm_during_start_up_stops_both_with_a_checkpoint(interrupted):
    _, stops = interrupted
    codes, errors, stopped, complete, count = stops["start-up"]
    assert codes == [STOPPED, STOPPED], "\n".join(errors)
    assert count == 1 and stopped is not None and stopped < 10 and complete
    assert _stopped_by_preemption(errors, stopped), "\n".join(errors)


def test_sigterm_to_one_process_in_training_stops_both_at_the_same_step(interrupted):
    _, stops = interrupted
    codes, errors, stopped, complete, _ = stops["training"]
    assert codes == [STOPPED, STOPPED], "\n".join(errors)
    assert stopped is not None and stops["start-up"][2] < stopped < 60 and complete
    assert _stopped_by_preemption(errors, stopped), "\n".join(errors)


def test_two_processes_resumed_end_where_one_process_with_two_devices_ends(
    interrupted, one_process
):
    workdir, stops = interrupted
    assert [stops[when][0] for when in ("start-up", "training")] == [[STOPPED, STOPPED]] * 2
    stop_steps = [stops[when][2] for when in ("start-up", "training")]
    by_step = lambda d: {r["step"]: r["train/loss"] for r in _metrics(d) if "train/loss" in r}
    multi, single = by_step(workdir), by_step(one_process)
    # One metrics line per log step, not one per process (plus one at each stop step that is
    # not a log step); windows that a stop split differ, the others agree.
    extra = sum(1 for s in stop_steps if s % 2)
    assert len(single) == 30 and len(multi) == 30 + extra
    split = lambda s: any(stop < s <= stop + 2 for stop in stop_steps)
    common = [s for s in single if s in multi and not split(s)]
    np.testing.assert_allclose(
        [multi[s] for s in common], [single[s] for s in common], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        _final_params(workdir), _final_params(one_process), rtol=1e-3, atol=1e-5
    )
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(one_process, "summary.json")) as f:
        assert abs(summary["test_accuracy"] - json.load(f)["test_accuracy"]) <= 0.01


def test_a_second_signal_ends_a_process_waiting_for_a_missing_peer(tmp_path):
    """One of two processes started alone waits in jax.distributed.initialize: the first
    SIGTERM is held (for the preemption service), the second ends it at once."""
    command = [sys.executable, "-m", "comatch_jax.main", f"--workdir={tmp_path}", *TINY_RUN]
    command += [f"--coordinator_address=localhost:{_free_port()}", "--num_processes=2"]
    process = subprocess.Popen(
        command + ["--process_id=0"], cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    for line in process.stderr:
        if "Connecting to the other processes" in line:
            break
    time.sleep(1)  # inside initialize, waiting
    process.send_signal(signal.SIGTERM)
    time.sleep(1)
    assert process.poll() is None  # held, still waiting
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)
    # Killed by the default action (SA_RESETHAND), or os._exit(143) where that is unavailable.
    assert process.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM)
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


# One process under jax.distributed (JAX's preemption notifier owns SIGTERM), the trainer's
# TerminationRequest(multiprocess=True) entered; argv[1] says which signals it gets.
_CHAINED = """
import os, signal, socket, sys, time
import jax
from jax.experimental import multihost_utils
from comatch_jax.trainer import stopping as termination

def notice_given(first_step):
    for step in range(first_step, first_step + 50):  # JAX's listener polls once a second
        time.sleep(0.1)
        if multihost_utils.reached_preemption_sync_point(step):
            return True
    return False

with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
jax.distributed.initialize(f"localhost:{port}", num_processes=1, process_id=0)
mode = sys.argv[1]
with termination.TerminationRequest(multiprocess=True) as request:
    if mode == "none":
        pass
    else:
        os.kill(os.getpid(), signal.SIGINT if mode == "ctrl-c" else signal.SIGTERM)
        if mode == "twice":  # a second SIGTERM after the repeat window: the end
            time.sleep(termination.REPEAT_WINDOW_S + 0.5)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            sys.exit("the second SIGTERM did not end the process")
        if mode == "duplicate":  # the same SIGTERM again at once (timeout, Slurm): one notice
            time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGTERM)
        assert request.requested
        assert notice_given(1), "JAX's preemption service got no notice"
        request.on_preemption()
print("ok", flush=True)
if mode == "none":  # after training: Ctrl-C a plain interrupt, SIGTERM the end (nothing polls)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    sys.exit("a SIGTERM after training did not end the process")
"""


@pytest.mark.parametrize("mode", ["sigterm", "ctrl-c", "twice", "duplicate", "none"])
def test_signals_in_training_reach_jax_preemption_service_and_a_second_ends_at_once(mode):
    """A first SIGTERM or Ctrl-C in training is passed on to JAX's preemption notifier (its
    sync point is reached); the same SIGTERM repeated 0.1 s later (as `timeout` and Slurm
    send it to the process and then its group) is the same notice; a second SIGTERM after
    the repeat window ends the process at once instead of being swallowed by the notifier;
    after training (where nothing polls the service) a Ctrl-C is a plain interrupt and a
    SIGTERM ends the process."""
    result = subprocess.run(
        [sys.executable, "-c", _CHAINED, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if mode in ("twice", "none"):
        assert result.returncode == -signal.SIGTERM, result.stderr[-2000:]
        assert result.stdout.strip() == ("ok" if mode == "none" else "")
    else:
        assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


# The main thread blocked in C (a long XLA computation, as in a collective whose peer died):
# Python cannot run a signal handler until it returns (~10-20 s here).
_BLOCKED = """
import socket, sys
import jax, jax.numpy as jnp
from comatch_jax.trainer import stopping as termination

multiprocess = sys.argv[1] == "several"
if multiprocess:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    jax.distributed.initialize(f"localhost:{port}", num_processes=1, process_id=0)
inner = lambda i, v: v * 1.0000001 + 1e-9
spin = jax.jit(lambda x: jax.lax.fori_loop(
    0, 2, lambda j, v: jax.lax.fori_loop(0, 2_000_000_000, inner, v), x))
spin.lower(jnp.float32(1)).compile()
if sys.argv[2] == "in-training":
    with termination.TerminationRequest(multiprocess=multiprocess):
        print("blocked", flush=True)
        spin(jnp.float32(1)).block_until_ready()
else:  # training ended by an error (a peer died), then the exit blocks (JAX's shutdown)
    try:
        with termination.TerminationRequest(multiprocess=multiprocess):
            raise RuntimeError("Gloo all-reduce failed")
    except RuntimeError:
        print("blocked", flush=True)
        spin(jnp.float32(1)).block_until_ready()
print("finished", flush=True)
"""


@pytest.mark.parametrize(
    "processes,when",
    [("one", "in-training"), ("several", "in-training"), ("several", "after-error")],
)
@pytest.mark.parametrize(
    "signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGTERM)]
)
def test_a_second_signal_ends_a_main_thread_blocked_in_c(processes, when, signals):
    """While the main thread waits in C the first signal's Python handler cannot run; a
    second signal of the same kind after the repeat window still ends the process at once
    (termination._RepeatWatch; after training, SA_RESETHAND), not when the call returns;
    also after training ended by an error (a SIGTERM then at once)."""
    process = subprocess.Popen(
        [sys.executable, "-c", _BLOCKED, processes, when],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "blocked"
    time.sleep(0.5)
    start = time.monotonic()
    for sig in signals:
        process.send_signal(sig)
        time.sleep(termination.REPEAT_WINDOW_S + 0.5)
    process.wait(timeout=60)
    assert process.returncode == -signals[1], process.stdout.read()
    # At once, not after the computation (~10-20 s).
    assert time.monotonic() - start < 2 * termination.REPEAT_WINDOW_S + 3


def test_a_stopped_run_puts_the_callers_handlers_back():
    """A notebook that calls train_and_evaluate keeps its own Ctrl-C handler after a stop."""
    code = """
import os, signal
from comatch_jax.trainer import stopping as termination

mine = lambda signum, frame: None
signal.signal(signal.SIGINT, mine)
with termination.TerminationRequest() as request:
    os.kill(os.getpid(), signal.SIGINT)
    assert request.requested
assert signal.getsignal(signal.SIGINT) is mine
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
