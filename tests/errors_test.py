"""Bad input gives one clear error naming the problem, and never touches a good run."""

import os
import subprocess
import sys

import pytest
from absl import flags

from comatch_jax import cli, config_lib, main
from comatch_jax.trainer import saved_runs as runs, train

from train_test import RecordingWriter, synthetic_dataset, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main_in_process(monkeypatch, workdir, *overrides, config="configs/comatch.py") -> str:
    """The entry point's flag parsing and main() in this process (no interpreter start-up);
    returns the one line it exits with."""
    argv = ["main", f"--config={os.path.join(REPO, config)}", f"--workdir={workdir}", *overrides]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads overrides from sys.argv
    flags.FLAGS.unparse_flags()
    # An earlier in-process parse (this module's or another's on this worker) left one flag
    # per --config override defined: drop them, or parsing the same override again fails.
    for name in [n for n in list(flags.FLAGS) if n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main.main(cli.parse_flags(argv))
    finally:
        flags.FLAGS.unparse_flags()
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def _main(tmp_path, *overrides, config="configs/comatch.py"):
    command = [
        sys.executable,
        "-m",
        "comatch_jax.main",
        f"--config={config}",
        f"--workdir={tmp_path}",
        *overrides,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__))
    )


def test_unknown_method_exits_with_one_line(tmp_path, monkeypatch):
    message = _main_in_process(monkeypatch, tmp_path / "run", "--config.method=mixmatch")
    assert "error: Unknown method 'mixmatch'" in message


def test_unknown_config_key_is_rejected_by_name(tmp_path):
    result = _main(tmp_path / "run", "--config.num_lables=250")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: ") and "num_lables" in last and 'Did you mean "num_labels"' in last
    )
    assert "Traceback" not in result.stderr


def test_foreign_nonempty_workdir_is_refused(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not empty and holds no comatch_jax run"):
        train.train_and_evaluate(
            tiny_config(), str(tmp_path), writer=RecordingWriter(), dataset=synthetic_dataset()
        )
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_a_workdir_left_by_a_run_stopped_before_its_record_starts_afresh(tmp_path):
    """Ctrl-C while the first step compiles leaves only an empty checkpoints/ folder; the
    same command then starts the run (it is not 'a foreign workdir')."""
    from comatch_jax.trainer import saved_runs as runs

    (tmp_path / "checkpoints").mkdir()
    runs.check_workdir(tiny_config(), str(tmp_path))  # accepted: nothing to lose
    (tmp_path / "checkpoints" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no comatch_jax run"):
        runs.check_workdir(tiny_config(), str(tmp_path))


def test_workdir_of_a_different_model_is_refused_and_kept(tmp_path):
    # A run's workdir as the trainer leaves it: its config, its record and a checkpoint.
    saved = tiny_config()
    saved.dataset.mean, saved.dataset.std = (0.3,), (0.3,)  # as the trainer saves them: resolved
    runs.save_run(
        saved,
        str(tmp_path),
        num_classes=10,
        class_names=tuple("0123456789"),
        image_shape=(12, 12, 1),
        source="synthetic (test)",
    )
    (tmp_path / "checkpoints" / "6").mkdir(parents=True)
    (tmp_path / "checkpoints" / "6" / "state").write_text("kept")
    config = tiny_config()
    config.dataset.mean, config.dataset.std = (0.3,), (0.3,)
    config.model.widths = (8, 32)
    config.num_steps = 9  # a longer run alone would be allowed
    with pytest.raises(ValueError, match=r"different config \(model.widths\)"):
        train.train_and_evaluate(
            config, str(tmp_path), writer=RecordingWriter(), dataset=synthetic_dataset()
        )
    assert (tmp_path / "checkpoints" / "6" / "state").read_text() == "kept"
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["6"]


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("batch_size", 0, "batch_size must be positive"),
        ("num_steps", -1, "num_steps must be positive"),
        ("num_labels", 0, "num_labels must be positive"),
        ("dataset.image_size", 0, "dataset.image_size must be positive"),
        ("optim.lr", 0.0, "optim.lr must be positive"),  # trained and learnt nothing
        ("optim.lr", -1.0, "optim.lr must be positive"),  # diverged, then advised a lower lr
        ("seed", -3, "seed must be >= 0"),
        ("dataset.val_fraction", 1.0, r"dataset.val_fraction must be in \(0, 1\)"),
        ("dataset.corrupt_policy", "ignore", "dataset.corrupt_policy must be 'fail' or 'skip'"),
        ("dataset.source", "http", "dataset.source must be 'auto' or 'tfds' or 'idx'"),
        ("optim.schedule", "step", "optim.schedule must be 'fixmatch_cosine' or 'cosine' or"),
        ("model.name", "vgg", "model.name must be 'small_cnn' or 'wide_resnet' or 'resnet'"),
        ("model.batch_norm", "per_devce", "model.batch_norm must be 'global' or 'per_device'"),
        ("model.stem", "tiny", "model.stem must be 'imagenet' or 'cifar', got 'tiny'"),
        ("model.dtype", "int8", "model.dtype must be 'float32' or 'bfloat16' or 'float16'"),
    ],
)
def test_invalid_values_are_rejected(field, value, message):
    config = config_lib.base_config()
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate_config(config)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="cifar10_40"):
        config_lib.config_file("comatch", "cifar10_41")


def test_keep_checkpoints_below_one_is_refused_naming_the_field():
    """keep_checkpoints=0 made Orbax delete every checkpoint, the last one included."""
    config = config_lib.base_config()
    for value in (0, -1):
        config.keep_checkpoints = value
        with pytest.raises(ValueError, match=f"keep_checkpoints must be positive, got {value}"):
            config_lib.validate_config(config)
    config.keep_checkpoints = 1
    config_lib.validate_config(config)


def test_unwritable_workdir_exits_with_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    message = _main_in_process(monkeypatch, blocker / "run", "--config.num_steps=1")
    assert "a_file" in message


def test_missing_offline_data_says_how_to_get_it(tmp_path, monkeypatch):
    message = _main_in_process(
        monkeypatch,
        tmp_path / "run",
        f"--config.dataset.idx_dir={tmp_path}/nowhere",
        "--config.dataset.source=idx",
    )
    assert "dataset-fashion-mnist" in message


@pytest.mark.parametrize("field", ["root", "cache_dir"])
def test_an_image_folder_option_on_another_dataset_is_an_error(field):
    """--config.dataset.root=DIR without --config.dataset.name=image_folder would train on
    the default Fashion-MNIST."""
    config = config_lib.base_config()
    config.dataset[field] = "/some/folder"
    with pytest.raises(
        ValueError,
        match=rf"Invalid config: dataset.{field} is set but dataset.name=fashion_mnist; add "
        r"--config.dataset.name=image_folder or use a :folder_cpu preset",
    ):
        config_lib.validate_config(config)
    config.dataset.name = "image_folder"
    config_lib.validate_config(config)


def test_a_misspelt_preset_is_one_line_with_the_config_files_message(tmp_path, monkeypatch):
    message = _main_in_process(
        monkeypatch, tmp_path / "run", config="configs/comatch_adaptive.py:folder_cu"
    )
    assert message.startswith(
        "error: Unknown preset 'folder_cu'; expected '', 'cifar10_40'"
    ), message
    assert "Traceback" not in message and "Error whilst parsing" not in message


def test_a_bug_in_a_config_file_is_one_line_naming_where(tmp_path, monkeypatch):
    config = tmp_path / "broken.py"
    config.write_text("def get_config(preset=''):\n    return undefined_name\n")
    message = _main_in_process(monkeypatch, tmp_path / "run", config=str(config))
    assert message == f"error: NameError: name 'undefined_name' is not defined ({config}, line 2)"


def _write_tiny_folder(root, count=3):
    from PIL import Image

    for name in ("cat", "dog"):
        for i in range(count):
            path = root / "labeled" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(path)


def test_num_labels_on_the_command_line_for_an_image_folder_is_an_error(tmp_path, monkeypatch):
    """An image folder labels every image under labeled/: --config.num_labels=100 was
    silently ignored. The config's default (40) still works (the README's generic command)."""
    _write_tiny_folder(tmp_path / "data")
    folder = ["--config.dataset.name=image_folder", f"--config.dataset.root={tmp_path}/data"]
    message = _main_in_process(monkeypatch, tmp_path / "run", *folder, "--config.num_labels=100")
    assert message == (
        f"error: image folders use every image under {tmp_path}/data/labeled; num_labels does "
        f"not apply: remove --config.num_labels, and move images out of {tmp_path}/data/labeled "
        "to use fewer"
    )
    # Without the override the flags parse, and the run gets as far as the config checks.
    message = _main_in_process(monkeypatch, tmp_path / "run", *folder, "--config.num_steps=0")
    assert message == "error: Invalid config: num_steps must be positive, got 0"


@pytest.mark.parametrize("where", ["config file", "command line"])
def test_a_misspelt_field_is_one_line_naming_it(tmp_path, monkeypatch, where):
    """base_config is locked: a misspelt field, in a config file or on the command line,
    is refused with ml_collections' suggestion (it trained silently with the default of
    the field meant) and leaves no workdir."""
    config = tmp_path / "my_comatch.py"
    config.write_text(
        "from comatch_jax import config_lib\n"
        "def get_config(preset=''):\n"
        "    config = config_lib.config_file('comatch', preset)\n"
        + ("    config.comatch.treshold_rule = 'freematch'\n" if where == "config file" else "")
        + "    return config\n"
    )
    overrides = ["--config.comatch.treshold_rule=freematch"] if where == "command line" else []
    message = _main_in_process(monkeypatch, tmp_path / "run", *overrides, config=str(config))
    assert "treshold_rule" in message and 'Did you mean "threshold_rule"' in message, message
    assert not (tmp_path / "run").exists()


def test_a_syntax_error_in_a_config_file_is_one_line_naming_where(tmp_path, monkeypatch):
    config = tmp_path / "broken.py"
    config.write_text("def get_config(preset=''):\n    return dict(\n")
    message = _main_in_process(monkeypatch, tmp_path / "run", config=str(config))
    assert message == f"error: SyntaxError: '(' was never closed ({config}, line 2)"


def test_a_missing_config_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    message = _main_in_process(
        monkeypatch, tmp_path / "run", config="configs/comatch_adaptiv.py:folder_cpu"
    )
    assert message == f"error: no such config file {REPO}/configs/comatch_adaptiv.py"


def test_a_missing_config_file_with_overrides_is_one_line(tmp_path):
    # The overrides would touch ml_collections' placeholder for the unloadable file.
    result = _main(
        tmp_path / "run",
        "--config.num_steps=3",
        "--config.dataset.root=/nonexistent",
        config="configs/comatch_adaptve.py:folder_cpu",
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == "error: no such config file configs/comatch_adaptve.py"
