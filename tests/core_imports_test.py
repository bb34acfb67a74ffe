"""The core must run where only jax/flax/optax are installed (a GPU box without TensorFlow)."""

import subprocess
import sys

CORE = [
    "core.augment",
    "core.losses",
    "core.memory_queue",
    "core.models",
    "core.methods",
    "data.sampling",
    "core.train_state",
    "core.train_step",
    "config_lib",
]


def test_core_imports_without_tensorflow_or_clu_writers():
    code = (
        "import sys\n"
        "for blocked in ('tensorflow', 'tensorflow_datasets', 'clu.metric_writers'):\n"
        "    sys.modules[blocked] = None  # any import of these now raises ImportError\n"
        + "".join(f"import comatch_jax.{name}\n" for name in CORE)
        + "assert 'tensorflow' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_trainer_and_run_reading_import_without_tensorflow():
    """TensorFlow is imported only when files are read or metrics written, so a machine
    without it can import the trainer and load a run's checkpoint."""
    code = (
        "import sys\n"
        "for blocked in ('tensorflow', 'tensorflow_datasets', 'clu.metric_writers'):\n"
        "    sys.modules[blocked] = None\n"
        "import comatch_jax.trainer.train, comatch_jax.trainer.saved_runs, comatch_jax.data.pipeline\n"
        "import comatch_jax.core.evaluation, comatch_jax.trainer.metrics, comatch_jax.core.inference\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_command_module_imports_together():
    """Command flags are defined only when run as a command, so modules never clash."""
    code = "".join(
        f"import comatch_jax.{name}\n"
        for name in (
            "main",
            "trainer.train",
            "commands.probe",
            "commands.predict",
            "commands.request_labels",
            "commands.answer_from_truth",
            "commands.analyze",
        )
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_commands_report_a_missing_run_in_one_line(tmp_path):
    for command in (
        ["comatch_jax.commands.probe"],
        ["comatch_jax.commands.predict", f"--images={tmp_path}", f"--out={tmp_path}/p.csv"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", *command, f"--workdir={tmp_path}/missing"],
            capture_output=True,
            text=True,
        )
        assert result.returncode != 0
        assert result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr[-500:]
        assert result.stderr.count("holds no comatch_jax run") == 1, result.stderr  # said once
