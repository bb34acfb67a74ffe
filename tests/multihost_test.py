"""Multi-host training, emulated with two CPU processes on this machine (jax.distributed over
localhost, gloo collectives): the real entry point with --coordinator_address etc.

A SIGTERM sent to one of two processes during training stops both at the same step with one
complete checkpoint (JAX's preemption service); rerunning the command, they end where one
process with two devices ends (the same global batch split the same way), with one metrics
line per log step (process 0 writes the run's files). The two processes use host batches
(data not on the device): each reads only its own rows. The processes run without TensorFlow,
as on the GPU machine (metrics go to metrics.jsonl only): process 0 would otherwise import it
for TensorBoard while process 1 waits for it.
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

from comatch_jax.trainer import saved_runs as runs

from core_imports_test import without_tensorflow
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
    device_count = f"--xla_force_host_platform_device_count={devices_per_process}"
    env = without_tensorflow()
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {device_count}"
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


def _interrupt(workdir, *extra):
    """Starts two processes, sends SIGTERM to the second one once training metrics are
    written, waits for both. Returns (return codes, stderr tails, checkpoint steps)."""
    processes = _start(workdir, *extra)
    deadline = time.time() + 900  # start-up is slow on a loaded machine
    while time.time() < deadline and all(p.poll() is None for p in processes):
        if _logged_steps(workdir):  # training
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
    rows); the second one alone gets a SIGTERM once training has started; the same command
    then runs to the end. Returns the workdir and (return codes, stderr tails, step stopped
    at, only complete checkpoints)."""
    workdir = str(tmp_path_factory.mktemp("interrupted"))
    host_batches = "--config.data_on_device=false"
    codes, errors, checkpoints = _interrupt(workdir, host_batches)
    stopped = checkpoints[-1] if checkpoints else None
    stop = codes, errors, stopped, bool(checkpoints) and _complete_checkpoints_only(workdir)
    if codes == [STOPPED, STOPPED]:
        _run(workdir, host_batches)  # the same command resumes both processes and finishes
    return workdir, stop


def test_sigterm_to_one_process_in_training_stops_both_at_the_same_step(interrupted):
    _, (codes, errors, stopped, complete) = interrupted
    assert codes == [STOPPED, STOPPED], "\n".join(errors)
    assert stopped is not None and 0 < stopped < 60 and complete
    # JAX's preemption service: both processes stop at the same step.
    expected = f"Stopped by a preemption notice (SIGTERM or Ctrl-C to one of the processes) at step {stopped}"
    assert all(expected in error for error in errors), "\n".join(errors)


def test_two_processes_resumed_end_where_one_process_with_two_devices_ends(
    interrupted, one_process
):
    workdir, (codes, _, stopped, _) = interrupted
    assert codes == [STOPPED, STOPPED]
    by_step = lambda d: {r["step"]: r["train/loss"] for r in _metrics(d) if "train/loss" in r}
    multi, single = by_step(workdir), by_step(one_process)
    # One metrics line per log step, not one per process (plus one at the stop step if it is
    # not a log step); the window that the stop split differs, the others agree.
    assert len(single) == 30 and len(multi) == 30 + stopped % 2
    common = [s for s in single if s in multi and not stopped < s <= stopped + 2]
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


# One process under jax.distributed (JAX's preemption notifier owns SIGTERM) inside the
# trainer's StopRequest: a Ctrl-C becomes a preemption notice.
_CTRL_C_UNDER_JAX_DISTRIBUTED = """
import os, signal, socket, time
import jax
from jax.experimental import multihost_utils
from comatch_jax.trainer import stopping

class Checkpoints:  # as Orbax's CheckpointManager.reached_preemption
    reached_preemption = staticmethod(multihost_utils.reached_preemption_sync_point)

with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
jax.distributed.initialize(f"localhost:{port}", num_processes=1, process_id=0)
with stopping.StopRequest(Checkpoints(), multiprocess=True) as stop:
    os.kill(os.getpid(), signal.SIGINT)
    for step in range(1, 100):  # JAX's listener polls once a second
        time.sleep(0.1)
        if stop.requested(step):
            print("stopped at", step, flush=True)
            break
"""


def test_a_ctrl_c_in_training_is_a_preemption_notice_for_every_process():
    result = subprocess.run(
        [sys.executable, "-c", _CTRL_C_UNDER_JAX_DISTRIBUTED],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("stopped at"), result.stderr[-2000:]
