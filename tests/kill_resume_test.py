"""Kill a real run (SIGKILL, SIGTERM) at different points; the rerun ends exactly where an
uninterrupted run ends, and its metrics (and, after SIGTERM, its TensorBoard event files) hold
each step once. Uses the real entry point on scikit-learn's real 8x8 digits; the runs that
write no TensorBoard files run without TensorFlow, as on the GPU machine. Ctrl-C (SIGINT)
takes the same path as SIGTERM and is tested in-process in train_test.py, as is the same
signal twice at once (`timeout`, Slurm). A non-finite stop keeps complete checkpoints only,
its advice resumes the run, a foreign checkpoint is refused in one line, and the log holds no
library INFO lines unless --verbosity=1."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from comatch_jax.trainer import saved_runs as runs

from core_imports_test import without_tensorflow
from nonfinite_test import nan_gradient_method  # noqa: F401 (a fixture)
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
    # The weak view in the strong slots compiles in a third of the time (train_test.tiny_config).
    "--config.augment.strong0=weak",
    "--config.augment.strong1=weak",
]


def _command(workdir):
    return [sys.executable, "-m", "comatch_jax.main", f"--workdir={workdir}", *TINY_RUN]


def _env(tensorflow):
    """The environment of a run: with TensorFlow (TensorBoard event files) or without it."""
    return None if tensorflow else without_tensorflow()


def _run(workdir, tensorflow):
    """Runs the command to its end; returns its stderr."""
    result = subprocess.run(
        _command(workdir), cwd=REPO, env=_env(tensorflow), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # No library INFO lines by default (with TensorFlow: none from the TensorBoard writer).
    assert not _library_info_lines(result.stderr), _library_info_lines(result.stderr)[:5]
    return result.stderr


def _finished_checkpoints(workdir):
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _start_and_signal(workdir, sig, when, tensorflow):
    """Starts a run and sends `sig` once `when(workdir)` holds."""
    process = subprocess.Popen(
        _command(workdir),
        cwd=REPO,
        env=_env(tensorflow),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if when(workdir):
            process.send_signal(sig)
            break
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def _jsonl_records(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    return [json.loads(line) for line in lines]


def _jsonl_steps(workdir):
    """(step, 'train' or 'eval') of each record of metrics.jsonl."""
    records = _jsonl_records(workdir)
    return [(r["step"], "eval" if "eval/test_accuracy" in r else "train") for r in records]


def _event_steps(workdir):
    """The (tag, step) pairs of the workdir's TensorBoard event files."""
    from tensorboard.backend.event_processing import event_file_loader

    return [
        (value.tag, event.step)
        for name in sorted(os.listdir(workdir))
        if name.startswith("events.out.tfevents")
        for event in event_file_loader.EventFileLoader(os.path.join(workdir, name)).Load()
        for value in event.summary.value
    ]


def _final_leaves(workdir):
    run = runs.load_run(workdir)
    assert int(run.state.step) == 30
    return _leaves(run.state)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference run, without TensorFlow. Returns (workdir, stderr)."""
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    return workdir, _run(workdir, tensorflow=False)


def test_the_main_command_trains_on_a_machine_without_tensorflow(uninterrupted):
    """The GPU machine has jax but no TensorFlow: `comatch_jax.main` trains on a source that
    needs none (scikit-learn's digits), metrics going to the log and metrics.jsonl."""
    workdir, stderr = uninterrupted
    assert "no TensorBoard event files" in stderr
    assert os.path.exists(os.path.join(workdir, "summary.json"))
    assert not [name for name in os.listdir(workdir) if name.startswith("events.out")]


# SIGKILL once metrics.jsonl holds step 10: the checkpoint of a step written there may not
# be committed yet, and a resumed run must not write its steps again. SIGTERM once the
# checkpoint of step 15 is complete; its runs write TensorBoard event files as well.
WHEN = {
    signal.SIGKILL: lambda workdir: (10, "train") in _jsonl_steps(workdir),
    signal.SIGTERM: lambda workdir: any(step >= 15 for step in _finished_checkpoints(workdir)),
}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_same_final_state_and_metrics(tmp_path, uninterrupted, sig):
    workdir, (reference, _) = str(tmp_path), uninterrupted
    tensorflow = sig == signal.SIGTERM
    returncode, stderr = _start_and_signal(workdir, sig, WHEN[sig], tensorflow)
    assert returncode != 0, "the run finished before it could be interrupted"
    if sig != signal.SIGKILL:  # SIGTERM and Ctrl-C checkpoint before exiting
        assert f"Stopped by {signal.Signals(sig).name}" in stderr
        assert returncode == 128 + sig, stderr[-3000:]  # resumable, not an error's 1
    assert _finished_checkpoints(workdir), "a checkpoint survived the kill"
    _run(workdir, tensorflow)  # the same command again resumes
    for x, y in zip(_final_leaves(reference), _final_leaves(workdir)):
        np.testing.assert_array_equal(x, y)
    summaries = [json.load(open(os.path.join(d, "summary.json"))) for d in (reference, workdir)]
    assert summaries[0]["test_accuracy"] == summaries[1]["test_accuracy"]
    assert len(_finished_checkpoints(workdir)) <= 2  # pruned to keep_checkpoints
    # Each step once in metrics.jsonl (and after SIGTERM in TensorBoard). After SIGTERM, every step the
    # uninterrupted run logged (and the stop's step); a SIGKILL in the instant between a
    # commit and the next step loses the lines of that checkpoint's steps, never repeats them.
    steps, expected = _jsonl_steps(workdir), set(_jsonl_steps(reference))
    assert len(steps) == len(set(steps))
    assert set(steps) <= expected if sig == signal.SIGKILL else expected <= set(steps)
    if tensorflow:  # the event files of both processes hold metrics.jsonl's lines, each once
        lines = [(tag, r["step"]) for r in _jsonl_records(workdir) for tag in r if tag != "step"]
        assert sorted(_event_steps(workdir)) == sorted(lines)


# The real entry point, with a method whose gradients turn NaN from the 4th step (while its
# loss stays finite until the NaN update), registered before main runs.
NAN_GRADIENT_ENTRY = """
import sys
import jax.numpy as jnp
from absl import app
from comatch_jax import cli, main
from comatch_jax.core import methods
from comatch_jax.core import losses


def nan_gradients_from_fourth_step_loss(outputs, batch, state, config):
    # As nonfinite_test.nan_gradients_from_fourth_step_loss (not imported: its imports
    # define absl flags of their own).
    logits = outputs["labeled_weak"]["logits"]
    offset = jnp.where(state["count"] >= 3, 0.0, 1.0)
    term = jnp.sqrt(logits.sum() - logits.sum() + offset) - jnp.sqrt(offset)
    loss = losses.cross_entropy(logits, batch["labels"]) + term
    return loss, ({"count": state["count"] + 1}, {"loss_x": loss})


methods.METHODS["nan_grad_test"] = methods.Method(
    "nan_grad_test", ("weak",), (), lambda *_: {"count": jnp.zeros((), jnp.int32)},
    nan_gradients_from_fourth_step_loss)
app.run(main.main, flags_parser=cli.parse_flags)
"""
NAN_GRADIENT_RUN = [
    "--config=configs/supervised.py",
    "--config.method=nan_grad_test",
    *[arg for arg in TINY_RUN if arg != "--config=configs/comatch.py"],
]


def _nan_gradient_run(workdir, *extra):
    overrides = {
        "--config.num_steps": "10",
        "--config.checkpoint_every": "3",
        "--config.log_every": "5",
        "--config.eval_every": "10",
        "--config.mu": "0",
    }
    args = [a for a in NAN_GRADIENT_RUN if a.split("=")[0] not in overrides]
    args += [f"{name}={value}" for name, value in overrides.items()]
    args = [a for a in args if not a.startswith("--config.comatch.")]
    command = [sys.executable, "-c", NAN_GRADIENT_ENTRY, f"--workdir={workdir}", *args, *extra]
    # Without TensorFlow, which these checks do not need (the SIGTERM case checks the log with it).
    return subprocess.run(
        command, cwd=REPO, env=without_tensorflow(), capture_output=True, text=True, timeout=600
    )


def _library_info_lines(stderr):
    """absl-formatted INFO lines ('I1130 03:31:12.69 123 file.py:85] ...') from files that
    are not comatch_jax's."""
    own = {name for _, _, files in os.walk(os.path.join(REPO, "comatch_jax")) for name in files}
    lines = [line for line in stderr.splitlines() if re.match(r"I\d{4} ", line)]
    return [line for line in lines if line.split()[3].split(":")[0] not in own]


def _checkpoint_entries(workdir):
    return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def test_nonfinite_stop_keeps_a_complete_checkpoint_and_the_advice_resumes(
    tmp_path, nan_gradient_method
):
    workdir = str(tmp_path / "run")
    # NaN gradients from step 4, after the asynchronous save of step 3 started.
    result = _nan_gradient_run(workdir)
    assert result.returncode != 0
    assert (
        "Non-finite" in result.stderr and "last good checkpoint (step 3) is kept" in result.stderr
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert _checkpoint_entries(workdir) == ["3"]  # complete: no *.orbax-checkpoint-tmp*
    assert int(runs.load_run(workdir).state.step) == 3
    # One line per event: no library INFO lines (Orbax's) by default.
    assert not _library_info_lines(result.stderr), _library_info_lines(result.stderr)[:5]

    # A checkpoint of something else (another model or version) is refused in one line.
    foreign = str(tmp_path / "foreign")
    shutil.copytree(workdir, foreign)
    with ocp.CheckpointManager(os.path.join(foreign, "checkpoints")) as manager:
        manager.save(6, args=ocp.args.StandardSave({"other": np.zeros(3, np.float32)}))
    result = _nan_gradient_run(foreign)
    assert result.returncode != 0 and "does not match this model's state" in result.stderr
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr

    # The advised command resumes; --verbosity=1 shows the libraries' logs.
    result = _nan_gradient_run(workdir, "--config.nonfinite_policy=skip", "--verbosity=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert any("checkpoint" in line for line in _library_info_lines(result.stderr))
    assert _checkpoint_entries(workdir) == ["10", "9"]  # keep_checkpoints=2, all complete
