"""A few real steps of tiny configs: losses finite, queue fills, EMA moves, resume, main."""

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import orbax.checkpoint as ocp

from comatch_jax import config_lib, data as datasets
from comatch_jax.trainer import saved_runs as runs, train


def tiny_config(method: str = "comatch") -> ml_collections.ConfigDict:
    config = config_lib.base_config()
    config.method = method
    config.num_labels = 20
    config.batch_size = 4
    config.mu = 2 if method != "supervised" else 0
    config.num_steps = 6
    config.log_every = 2
    config.eval_every = 3
    config.checkpoint_every = 3
    config.eval_batch_size = 16
    config.model.widths = (8, 16)
    config.model.low_dim = 8
    config.model.bn_momentum = 0.9  # running statistics must settle within a few steps
    config.comatch.queue_size = 20  # 12 entries per step: fills (and wraps) on step 2
    config.comatch.da_length = 4
    config.comatch.threshold = 0.0  # keep every pseudo-label so L_u is exercised
    config.optim.lr = 0.05
    config.ema.decay = 0.9
    # The weak view in the strong slots: RandAugment and the contrastive view are ~60 % of a
    # tiny step's compile time (measured: 166 s -> 64 s for a 2-step CoMatch run on one busy
    # core), and most tests here are about the trainer, not the views. The views have their
    # own tests (augment_test, fidelity_test); methods_test trains every method with its
    # own views, and presets_test runs the official recipe's step.
    config.augment.strong0 = config.augment.strong1 = "weak"
    return config


def synthetic_dataset(
    num_train: int = 120, num_test: int = 50, size: int = 12
) -> datasets.ImageDataset:
    """10 classes whose images differ in mean brightness: learnable in a few steps."""
    rng = np.random.default_rng(0)

    def make(n):
        labels = np.arange(n, dtype=np.int32) % 10
        images = rng.integers(0, 20, size=(n, size, size, 1)) + labels[:, None, None, None] * 25
        return images.astype(np.uint8), labels

    train_images, train_labels = make(num_train)
    test_images, test_labels = make(num_test)
    return datasets.ImageDataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        source="synthetic (test)",
    )


class RecordingWriter:
    def __init__(self):
        self.scalars = []

    def write_scalars(self, step, scalars):
        self.scalars.append((step, dict(scalars)))

    def flush(self):
        pass


def _leaves(tree):
    """The leaves as numpy arrays; a typed PRNG key as its key data."""
    return [
        np.asarray(
            jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        )
        for x in jax.tree.leaves(jax.device_get(tree))
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of tiny_config(): (workdir, final state, summary, writer). The
    tests below compare their runs with it; none of them changes it."""
    workdir = tmp_path_factory.mktemp("reference")
    writer = RecordingWriter()
    state, summary = train.train_and_evaluate(
        tiny_config(), str(workdir), writer=writer, dataset=synthetic_dataset()
    )
    return workdir, state, summary, writer


def test_comatch_steps_are_finite_queue_fills_and_ema_moves(reference):
    tmp_path, state, summary, writer = reference
    assert int(state.step) == 6
    assert jax.dtypes.issubdtype(state.rng.dtype, jax.dtypes.prng_key)  # a typed key
    logged = [s for _, s in writer.scalars if "train/loss" in s]
    assert [step for step, s in writer.scalars if "train/loss" in s] == [2, 3, 4, 6]
    for scalars in logged:
        for name in ("loss", "loss_x", "loss_u", "loss_ctr", "mask_rate", "images_per_sec"):
            assert np.isfinite(scalars[f"train/{name}"]), name
    assert any(s["train/loss_u"] > 0 for s in logged)
    assert any(s["train/loss_ctr"] > 0 for s in logged)
    queue = state.method_state
    assert int(queue["queue_filled"]) == 20
    assert int(queue["queue_pointer"]) == (6 * 12) % 20
    np.testing.assert_allclose(np.linalg.norm(queue["queue_embeddings"], axis=-1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(queue["queue_probs"].sum(-1), 1.0, rtol=1e-4)
    # The EMA moved away from the initial params but is not the trained params.
    ema, params = _leaves(state.ema_params), _leaves(state.params)
    assert any(not np.allclose(e, p) for e, p in zip(ema, params))
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert os.path.exists(tmp_path / "summary.json")
    # metrics.jsonl holds what the writer got, record for record.
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r.pop("step"), r) for r in records] == writer.scalars
    assert [step for step, s in writer.scalars if "eval/test_accuracy" in s] == [3, 6]
    assert writer.scalars[-1][1]["eval/test_accuracy"] == summary["test_accuracy"]


def test_supervised_baseline_learns_the_synthetic_task(tmp_path):
    config = tiny_config("supervised")
    config.num_steps = 200
    config.eval_every = 200
    config.checkpoint_every = 200
    config.log_every = 50
    config.optim.lr = 0.1
    config.ema.decay = 0.5
    config.augment.flip = False
    _, summary = train.train_and_evaluate(
        config, str(tmp_path), writer=RecordingWriter(), dataset=synthetic_dataset()
    )
    assert summary["test_accuracy"] > 0.4  # chance is 0.1; about 0.6 after 200 steps


def test_same_config_and_seed_give_the_same_numbers(reference, tmp_path):
    _, reference_state, reference_summary, _ = reference
    state, summary = train.train_and_evaluate(
        tiny_config(), str(tmp_path), writer=RecordingWriter(), dataset=synthetic_dataset()
    )
    for x, y in zip(_leaves(reference_state.params), _leaves(state.params)):
        np.testing.assert_array_equal(x, y)
    assert summary["test_accuracy"] == reference_summary["test_accuracy"]


def test_resume_from_checkpoint_matches_an_uninterrupted_run(reference, tmp_path):
    config = tiny_config()
    full_workdir, full_state, _, _ = reference
    # A run killed after its step-3 checkpoint: the same workdir without the later one.
    shutil.copytree(full_workdir, tmp_path / "killed")
    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "6")
    resumed_state, _ = train.train_and_evaluate(
        config, str(tmp_path / "killed"), writer=RecordingWriter(), dataset=synthetic_dataset()
    )
    assert int(resumed_state.step) == 6
    for x, y in zip(_leaves(full_state), _leaves(resumed_state)):
        np.testing.assert_array_equal(x, y)


def test_host_batches_match_device_batches(reference, tmp_path):
    config = tiny_config()
    assert config.data_on_device is None  # decided by size: the tiny set goes on the device
    _, device_state, _, _ = reference
    config.data_on_device = False
    host_state, _ = train.train_and_evaluate(
        config, str(tmp_path / "host"), writer=RecordingWriter(), dataset=synthetic_dataset()
    )
    for x, y in zip(_leaves(device_state.params), _leaves(host_state.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_invalid_config_is_one_clear_error(tmp_path):
    config = tiny_config()
    config.mu = 0
    with pytest.raises(ValueError, match="mu must be > 0"):
        train.train_and_evaluate(
            config, str(tmp_path), writer=RecordingWriter(), dataset=synthetic_dataset()
        )


def test_main_end_to_end_under_tfds_mock_data(tmp_path, monkeypatch):
    """The real entry point and the real TFDS path (cifar10), with TFDS's mock data."""
    import tensorflow_datasets as tfds
    from absl import flags

    from comatch_jax import main

    argv = [
        "main",
        "--config=configs/comatch.py",
        f"--workdir={tmp_path}",
        "--config.dataset.name=cifar10",
        "--config.dataset.source=tfds",
        "--config.dataset.mean=(0.5,0.5,0.5)",
        "--config.dataset.std=(0.25,0.25,0.25)",
        "--config.num_labels=10",
        "--config.batch_size=2",
        "--config.mu=2",
        "--config.num_steps=2",
        "--config.log_every=1",
        "--config.eval_every=2",
        "--config.checkpoint_every=2",
        "--config.eval_batch_size=8",
        "--config.model.widths=(4,8)",
        "--config.comatch.queue_size=8",
        "--config.augment.strong0=weak",  # the data path is tested here, not the views
        "--config.augment.strong1=weak",
    ]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads overrides from sys.argv
    flags.FLAGS.unparse_flags()
    # Another test in this process may have parsed --config overrides already: config_flags
    # defines one flag per override at parse time, so drop those before parsing again.
    for name in [n for n in list(flags.FLAGS) if n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    flags.FLAGS(argv)
    try:
        with tfds.testing.mock_data(num_examples=40):
            main.main(["main"])
    finally:
        flags.FLAGS.unparse_flags()
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["final_step"] == 2
    assert summary["data_source"].startswith("tfds:cifar10")
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert os.path.isdir(tmp_path / "checkpoints" / "2")


def test_load_run_restores_the_final_state(reference):
    workdir, state, _, _ = reference
    run = runs.load_run(str(workdir))
    assert run.num_classes == 10 and run.image_shape == (12, 12, 1)
    assert run.config.model.widths == [8, 16] or tuple(run.config.model.widths) == (8, 16)
    for x, y in zip(_leaves(state), _leaves(run.state)):
        np.testing.assert_array_equal(x, y)


def test_a_half_written_checkpoint_is_never_loaded(reference, tmp_path):
    config = tiny_config()
    full_workdir, full_state, _, _ = reference
    # Killed while writing the step-6 checkpoint: Orbax's temporary directory is left behind
    # (with garbage in it) and the finished step-6 checkpoint does not exist.
    shutil.copytree(full_workdir, tmp_path / "killed")
    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "6")
    partial = tmp_path / "killed" / "checkpoints" / "6.orbax-checkpoint-tmp-1795600000000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\x00" * 10)
    resumed_state, _ = train.train_and_evaluate(
        config, str(tmp_path / "killed"), writer=RecordingWriter(), dataset=synthetic_dataset()
    )
    for x, y in zip(_leaves(full_state), _leaves(resumed_state)):
        np.testing.assert_array_equal(x, y)


def test_a_checkpoint_format_this_version_cannot_read_is_one_line(reference, tmp_path):
    workdir = tmp_path / "other"
    shutil.copytree(reference[0], workdir)
    info = json.loads((workdir / runs.RUN_INFO).read_text())
    (workdir / runs.RUN_INFO).write_text(json.dumps({**info, "checkpoint_format": 3}))
    expected = r"checkpoint format 3; this version reads format 2.*start a fresh --workdir"
    with pytest.raises(ValueError, match=expected) as error:
        runs.load_run(str(workdir))
    assert "\n" not in str(error.value)
    before = sorted(os.listdir(workdir / "checkpoints"))
    with pytest.raises(ValueError, match=expected):
        train.train_and_evaluate(
            tiny_config(), str(workdir), writer=RecordingWriter(), dataset=synthetic_dataset()
        )
    assert sorted(os.listdir(workdir / "checkpoints")) == before


@contextlib.contextmanager
def on_log_message(callback):
    """Calls `callback(message)` for every absl log line (INFO included) while active."""

    class Handler(logging.Handler):
        def emit(self, record):
            callback(record.getMessage())

    logger, handler = logging.getLogger("absl"), Handler()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def signal_at_step(step, sig=signal.SIGINT):
    """Sends `sig` to this process (Ctrl-C: SIGINT) as the progress line of `step` is
    logged, inside the training loop."""
    send = lambda message: message.startswith(f"step {step}/") and os.kill(os.getpid(), sig)
    return on_log_message(send)


def test_ctrl_c_checkpoints_then_the_rerun_ends_identically(reference, tmp_path):
    config = tiny_config()
    config.checkpoint_every = 100  # only the Ctrl-C checkpoint exists before the end
    _, full_state, _, _ = reference  # checkpoint cadence does not change the numbers
    # Seen after the next step, which is then checkpointed.
    with signal_at_step(2), pytest.raises(SystemExit, match="Stopped by SIGINT at step 3") as stop:
        train.train_and_evaluate(
            config, str(tmp_path / "ctrl_c"), writer=RecordingWriter(), dataset=synthetic_dataset()
        )
    # The command line exits with 128 + SIGINT (resumable), not an error's 1.
    assert stop.value.exit_status == 128 + signal.SIGINT
    assert sorted(os.listdir(tmp_path / "ctrl_c" / "checkpoints")) == ["3"]
    resumed_state, _ = train.train_and_evaluate(
        config, str(tmp_path / "ctrl_c"), writer=RecordingWriter(), dataset=synthetic_dataset()
    )
    for x, y in zip(_leaves(full_state), _leaves(resumed_state)):
        np.testing.assert_array_equal(x, y)


def test_the_same_signal_twice_at_once_is_one_stop_with_a_checkpoint(tmp_path, caplog):
    """GNU `timeout` (without --foreground) and Slurm signal the process and then its whole
    process group: the same SIGINT arrives twice, microseconds apart. The second, sent here
    once the handler has run for the first, is the same request: one stop, one checkpoint."""

    def twice(message):
        if message.startswith("step 2/"):
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)  # the Python handler runs in here

    config = tiny_config()
    config.checkpoint_every = 100
    with (
        on_log_message(twice),
        caplog.at_level(logging.WARNING),
        pytest.raises(SystemExit, match="Stopped by SIGINT at step 3") as stop,
    ):
        train.train_and_evaluate(
            config, str(tmp_path), writer=RecordingWriter(), dataset=synthetic_dataset()
        )
    assert stop.value.exit_status == 128 + signal.SIGINT
    assert caplog.text.count("SIGINT received") == 1
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]


def test_a_resumed_run_adds_up_its_training_time_and_a_stop_at_the_final_step_finishes_it(
    reference, tmp_path
):
    """summary.json's train_seconds covers every process that trained the run (here: the
    one up to the step-3 checkpoint and the resumed one), and a SIGTERM during the last step
    does not stop the run: it ends as usual (final evaluation, summary.json)."""
    full_workdir, full_state, full_summary, _ = reference
    workdir = tmp_path / "killed"
    shutil.copytree(full_workdir, workdir)
    shutil.rmtree(workdir / "checkpoints" / "6")
    os.remove(workdir / "summary.json")
    with runs.checkpoint_manager(str(workdir)) as manager:
        before = runs.train_seconds_at(manager, 3)
    assert 0 < before < full_summary["train_seconds"]
    start = time.time()
    with signal_at_step(6, signal.SIGTERM):
        state, summary = train.train_and_evaluate(
            tiny_config(), str(workdir), writer=RecordingWriter(), dataset=synthetic_dataset()
        )
    assert before < summary["train_seconds"] <= before + (time.time() - start)
    assert summary["final_step"] == 6 and summary["test_accuracy"] == full_summary["test_accuracy"]
    assert json.loads((workdir / "summary.json").read_text()) == summary
    for x, y in zip(_leaves(full_state), _leaves(state)):
        np.testing.assert_array_equal(x, y)


def test_a_signal_while_the_final_checkpoint_commits_loses_no_metrics(
    reference, tmp_path, monkeypatch, caplog
):
    """A Ctrl-C after the final step's save has started, while the loop waits for its commit
    (the scalars since the previous checkpoint are held until then): the run finishes, says
    so, and metrics.jsonl holds every line of the uninterrupted run."""
    wait, armed = ocp.CheckpointManager.wait_until_finished, []
    arm = lambda message: armed.append(message == "Saving the checkpoint of step 6")

    def signal_then_wait(manager):
        if any(armed) and threading.current_thread() is threading.main_thread():
            armed.clear()  # once
            os.kill(os.getpid(), signal.SIGINT)
        return wait(manager)

    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", signal_then_wait)
    try:
        with on_log_message(arm), caplog.at_level(logging.WARNING):
            state, _ = train.train_and_evaluate(
                tiny_config(), str(tmp_path), writer=RecordingWriter(), dataset=synthetic_dataset()
            )
    except KeyboardInterrupt:  # not pytest's own: fail this test only
        pytest.fail("the Ctrl-C ended the run before its held scalars were written")
    assert int(state.step) == 6 and (tmp_path / "summary.json").exists()
    assert "SIGINT came during the final step 6: the run finished." in caplog.text
    lines = lambda d: [
        {k: v for k, v in json.loads(line).items() if "per_s" not in k and "seconds" not in k}
        for line in (d / "metrics.jsonl").read_text().splitlines()
    ]
    assert lines(tmp_path) == lines(reference[0])


def test_a_finished_run_is_left_as_it_is_and_a_lower_num_steps_is_refused(
    reference, tmp_path, caplog
):
    workdir = tmp_path / "finished"
    shutil.copytree(reference[0], workdir)
    records = {name: (workdir / name).read_bytes() for name in ("summary.json", "config.json")}
    with caplog.at_level(logging.WARNING):
        state, summary = train.train_and_evaluate(
            tiny_config(), str(workdir), writer=RecordingWriter(), dataset=synthetic_dataset()
        )
    # The line says the run's result, read from summary.json.
    assert (
        f"already finished at step 6 (final test accuracy {summary['test_accuracy']:.4f} EMA, "
        f"{summary['test_accuracy_raw']:.4f} raw model); nothing to do" in caplog.text
    )
    assert int(state.step) == 6 and summary == json.loads(records["summary.json"])
    assert {name: (workdir / name).read_bytes() for name in records} == records
    config = tiny_config()
    config.num_steps = 2
    expected = r"checkpoint in .*finished is at step 6 > num_steps=2; use --config.num_steps=6"
    with pytest.raises(ValueError, match=expected) as error:
        train.train_and_evaluate(
            config, str(workdir), writer=RecordingWriter(), dataset=synthetic_dataset()
        )
    assert "\n" not in str(error.value)
    assert {name: (workdir / name).read_bytes() for name in records} == records


def test_concat_and_split_per_device_round_trip():
    from comatch_jax.core.train_step import concat_per_device, split_per_device

    a = jnp.arange(4)[:, None] * jnp.ones((4, 2))
    b = 100 + jnp.arange(8)[:, None] * jnp.ones((8, 2))
    joined = concat_per_device([a, b], groups=2)
    # Device 0 holds a[:2] and b[:4], device 1 a[2:] and b[4:].
    np.testing.assert_array_equal(
        joined[:, 0], [0, 1, 100, 101, 102, 103, 2, 3, 104, 105, 106, 107]
    )
    back = split_per_device(joined, [4, 8], groups=2)
    np.testing.assert_array_equal(back[0], a)
    np.testing.assert_array_equal(back[1], b)
    np.testing.assert_array_equal(concat_per_device([a, b], groups=1), jnp.concatenate([a, b]))


@pytest.mark.parametrize("full_at, then", [(6, "resume from step 3"), (3, "start again")])
def test_a_full_disk_while_checkpointing_is_one_line_and_the_rerun_writes_each_step_once(
    reference, tmp_path, monkeypatch, full_at, then
):
    """The disk fills while Orbax commits a checkpoint (the final one, step 6, or one in the
    run, step 3; a write in its background thread fails with ENOSPC): one line says what to
    do, earlier checkpoints are kept, and the same command resumes to the uninterrupted run's
    state and metrics, with no step written twice (the metrics of the steps up to a checkpoint
    wait for it to commit)."""
    from etils import epath

    path_type = type(epath.Path(tmp_path))
    write_text = path_type.write_text

    def full_disk_at_that_step(self, *args, **kwargs):
        if self.name == "commit_success.txt" and self.parent.name.startswith(f"{full_at}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return write_text(self, *args, **kwargs)

    # A slow step: the loop looks again only once the background save has ended (failed).
    in_progress = ocp.CheckpointManager.is_saving_in_progress

    def settled(self):
        while in_progress(self):
            time.sleep(0.01)
        return False

    workdir = str(tmp_path / "run")
    monkeypatch.setattr(path_type, "write_text", full_disk_at_that_step)
    monkeypatch.setattr(ocp.CheckpointManager, "is_saving_in_progress", settled)
    with pytest.raises(OSError) as error:
        train.train_and_evaluate(
            tiny_config(), workdir, writer=RecordingWriter(), dataset=synthetic_dataset()
        )
    assert str(error.value) == (
        f"the disk is full at {workdir}; free space and rerun the same command to {then}"
    )
    monkeypatch.undo()
    state, _ = train.train_and_evaluate(
        tiny_config(), workdir, writer=RecordingWriter(), dataset=synthetic_dataset()
    )
    for x, y in zip(_leaves(reference[1]), _leaves(state)):
        np.testing.assert_array_equal(x, y)
    # Each step once, with the uninterrupted run's numbers (the speed aside).
    records = lambda d: [
        (r["step"], r.get("train/loss"), r.get("eval/test_accuracy"))
        for r in map(json.loads, open(os.path.join(d, "metrics.jsonl")))
    ]
    assert records(workdir) == records(reference[0])


def test_a_second_training_on_a_workdir_in_use_is_refused(tmp_path):
    """Two trainings on one workdir would both write checkpoints and metrics there; while one
    holds the workdir (training.lock), the other is refused in one line, and once it ends the
    workdir trains again."""
    workdir = str(tmp_path / "run")
    with runs.claim_workdir(workdir, keep_checkpoints=1):
        with pytest.raises(ValueError, match=r"is in use by another training process; wait"):
            train.train_and_evaluate(
                tiny_config(), workdir, writer=RecordingWriter(), dataset=synthetic_dataset()
            )
    state, _ = train.train_and_evaluate(
        tiny_config(), workdir, writer=RecordingWriter(), dataset=synthetic_dataset()
    )
    assert int(state.step) == tiny_config().num_steps


def test_a_workdir_path_with_brackets_is_refused_before_training(tmp_path):
    """Orbax assembles a checkpoint with a glob, in which '[' and ']' are a pattern: such a
    run could never be resumed or read."""
    workdir = tmp_path / "runs[1]"
    with pytest.raises(ValueError, match=r"holds '\[' or '\]'.*choose a path without them"):
        train.train_and_evaluate(
            tiny_config(), str(workdir), writer=RecordingWriter(), dataset=synthetic_dataset()
        )
    assert not workdir.exists()
