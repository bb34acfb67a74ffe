"""The core must run where only jax/flax/optax are installed (a GPU box without TensorFlow)."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "comatch_jax"
# Every module of core/, and the top-level modules below it.
CORE = ["config_lib", "multihost", "atomic_files"] + [
    f"core.{path.stem}" for path in sorted((PACKAGE / "core").glob("*.py"))
]


def without_tensorflow(env=None) -> dict:
    """`env` (default os.environ) for a process in which `import tensorflow` fails, as on the
    GPU machine: tests/without_tensorflow/sitecustomize.py first on its PYTHONPATH."""
    env = dict(os.environ if env is None else env)
    paths = [str(REPO / "tests" / "without_tensorflow"), str(REPO), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    return env


def test_core_imports_without_tensorflow_or_clu_writers_and_so_do_the_trainer_and_commands():
    """TensorFlow is imported only when files are read or metrics written, so a machine
    without it can import the core, the trainer and the commands' run loading."""
    code = (
        "import importlib.util\n"
        + "assert importlib.util.find_spec('tensorflow') is None  # hidden\n"
        + "".join(f"import comatch_jax.{name}\n" for name in CORE)
        + "import comatch_jax.trainer.train, comatch_jax.trainer.saved_runs\n"
        + "import comatch_jax.data.pipeline, comatch_jax.commands.ema_model\n"
        + "import comatch_jax.commands.active_learning\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=without_tensorflow(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_console_entry_points_report_a_missing_run_in_one_line(tmp_path):
    """Run as pip's console scripts run them: `from MODULE import command; command()`."""
    code = "import sys; from comatch_jax.commands.predict import command; sys.exit(command())"
    args = [f"--workdir={tmp_path}/missing", f"--images={tmp_path}", f"--out={tmp_path}/p.csv"]
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr[-500:]
    assert result.stderr.count("holds no comatch_jax run") == 1, result.stderr  # said once


def test_a_console_script_shows_its_docstring_and_flags_under_help():
    code = (
        "import sys; sys.argv[0] = '/venv/bin/comatch-predict'\n"
        "from comatch_jax.commands.predict import command; command()\n"
    )
    result = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True)
    shown = result.stdout + result.stderr  # (absl's --help exits with status 1)
    assert "Predictions for a folder of images" in shown
    assert "--images: Directory of images to classify." in shown
