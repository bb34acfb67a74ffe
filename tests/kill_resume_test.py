"""Kill a real run (SIGKILL, SIGTERM) at different points; the rerun ends exactly where an
uninterrupted run ends. Uses the real entry point on scikit-learn's real 8x8 digits.
Ctrl-C (SIGINT) takes the same path as SIGTERM and is tested in-process in train_test.py."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from comatch_jax import runs

from train_test import _leaves

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_RUN = [
    "--config=configs/comatch.py",
    "--config.dataset.name=digits",
    "--config.dataset.mean=(0.3,)",
    "--config.dataset.std=(0.4,)",
    "--config.num_labels=20",
    "--config.batch_size=4",
    "--config.mu=2",
    "--config.num_steps=30",
    "--config.log_every=5",
    "--config.checkpoint_every=5",
    "--config.eval_every=30",
    "--config.keep_checkpoints=2",
    "--config.model.widths=(8,16)",
    "--config.comatch.queue_size=24",
    "--config.comatch.threshold=0.5",
]


def _command(workdir):
    return [sys.executable, "-m", "comatch_jax.main", f"--workdir={workdir}", *TINY_RUN]


def _run(workdir):
    result = subprocess.run(_command(workdir), cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def _finished_checkpoints(workdir):
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _start_and_signal(workdir, sig, after_checkpoint):
    """Starts a run and sends `sig` once checkpoint `after_checkpoint` is complete."""
    process = subprocess.Popen(
        _command(workdir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if any(step >= after_checkpoint for step in _finished_checkpoints(workdir)):
            process.send_signal(sig)
            break
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def _final_leaves(workdir):
    run = runs.load_run(workdir)
    assert int(run.state.step) == 30
    return _leaves(run.state)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    _run(workdir)
    return workdir


@pytest.mark.parametrize("sig,after_checkpoint", [(signal.SIGKILL, 5), (signal.SIGTERM, 15)])
def test_killed_run_resumes_to_the_same_final_state(tmp_path, uninterrupted, sig, after_checkpoint):
    workdir = str(tmp_path)
    returncode, stderr = _start_and_signal(workdir, sig, after_checkpoint)
    assert returncode != 0, "the run finished before it could be interrupted"
    if sig != signal.SIGKILL:  # SIGTERM and Ctrl-C checkpoint before exiting
        assert f"Stopped by {signal.Signals(sig).name}" in stderr
    assert _finished_checkpoints(workdir), "a checkpoint survived the kill"
    _run(workdir)  # the same command again resumes
    for x, y in zip(_final_leaves(uninterrupted), _final_leaves(workdir)):
        np.testing.assert_array_equal(x, y)
    summaries = [json.load(open(os.path.join(d, "summary.json"))) for d in (uninterrupted, workdir)]
    assert summaries[0]["test_accuracy"] == summaries[1]["test_accuracy"]
    assert len(_finished_checkpoints(workdir)) <= 2  # pruned to keep_checkpoints
