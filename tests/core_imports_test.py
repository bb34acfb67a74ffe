"""The core must run where only jax/flax/optax are installed (a GPU box without TensorFlow)."""

import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "comatch_jax"
# Every module of core/, and the top-level modules below it.
CORE = ["config_lib", "multihost", "atomic_files"] + [
    f"core.{path.stem}" for path in sorted((PACKAGE / "core").glob("*.py"))
]
BLOCK_TENSORFLOW = (
    "import sys\n"
    "for blocked in ('tensorflow', 'tensorflow_datasets', 'clu.metric_writers'):\n"
    "    sys.modules[blocked] = None  # any import of these now raises ImportError\n"
)


def test_core_imports_without_tensorflow_or_clu_writers():
    code = (
        BLOCK_TENSORFLOW
        + "".join(f"import comatch_jax.{name}\n" for name in CORE)
        + "assert 'tensorflow' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_trainer_and_run_reading_import_without_tensorflow():
    """TensorFlow is imported only when files are read or metrics written, so a machine
    without it can import the trainer and load a run's checkpoint."""
    code = BLOCK_TENSORFLOW + (
        "import comatch_jax.trainer.train, comatch_jax.trainer.saved_runs\n"
        "import comatch_jax.data.pipeline, comatch_jax.commands.ema_model\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_command_module_imports_together():
    """Command flags are defined only when run as a command, so modules never clash."""
    commands = [f"commands.{path.stem}" for path in sorted((PACKAGE / "commands").glob("*.py"))]
    code = "".join(f"import comatch_jax.{name}\n" for name in ["main", "trainer.train", *commands])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_console_entry_points_report_a_missing_run_in_one_line(tmp_path):
    """Run as pip's console scripts run them: `from MODULE import cli; cli()`."""
    for module, args in (
        ("probe", []),
        ("predict", [f"--images={tmp_path}", f"--out={tmp_path}/p.csv"]),
    ):
        code = f"import sys; from comatch_jax.commands.{module} import cli; sys.exit(cli())"
        result = subprocess.run(
            [sys.executable, "-c", code, f"--workdir={tmp_path}/missing", *args],
            capture_output=True,
            text=True,
        )
        assert result.returncode != 0
        assert result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr[-500:]
        assert result.stderr.count("holds no comatch_jax run") == 1, result.stderr  # said once
