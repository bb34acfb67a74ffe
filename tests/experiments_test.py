"""The experiment scripts run (tiny shapes), so they cannot rot between measurements."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_runs_on_cpu_with_small_shapes(tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            "experiments/benchmark.py",
            "--batch_size=2",
            "--mu=1",
            "--image_size=12",
            "--repeats=1",
            "--loop_steps=4",
            "--host_batches",
            f"--json_out={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["images_per_step"] == 2 + 3 * 2  # labeled weak + 3 unlabeled views
    for name in ("augment", "bare_step", "full_step", "loop"):
        assert figures[f"{name}_s"] > 0 and figures[f"{name}_images_per_s"] > 0
    assert figures["step_gflop"] > 0
    assert (
        figures["projected_schedule_hours"] == figures["schedule_steps"] * figures["loop_s"] / 3600
    )


def test_compare_methods_tabulates_finished_runs(tmp_path):
    """compare_methods reports runs whose summaries exist without rerunning them."""
    runs = tmp_path / "runs"
    accuracy = {"supervised": 0.5, "fixmatch": 0.7, "comatch": 0.75, "comatch_bt": 0.74}
    for i, name in enumerate(["autoencoder", "simclr", "simsiam", "barlow_twins"]):
        accuracy[name] = 0.55 + i / 100
        (runs / name).mkdir(parents=True)
        probe = {"linear_probe_accuracy": 0.6, "knn_accuracy": 0.58}
        (runs / name / "probe.json").write_text(json.dumps(probe))
        (runs / f"{name}_finetune").mkdir()
        summary = {"test_accuracy": accuracy[name], "train_seconds": 30.0}
        (runs / f"{name}_finetune" / "summary.json").write_text(json.dumps(summary))
    for name, value in accuracy.items():
        (runs / name).mkdir(exist_ok=True)
        summary = {"test_accuracy": value, "train_seconds": 120.0}
        (runs / name / "summary.json").write_text(json.dumps(summary))
    prefix = tmp_path / "table"
    result = subprocess.run(
        [
            sys.executable,
            "experiments/compare_methods.py",
            f"--workdir={runs}",
            f"--out_prefix={prefix}",
            "--steps=100",
            "--finetune_steps=10",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "table.md").read_text().splitlines()
    assert len(table) == 2 + 8
    simclr = next(line for line in table if line.startswith("| simclr "))
    assert "100 + 10" in simclr and "2.5 min" in simclr and "56.00%" in simclr
    assert "60.00%" in simclr and "58.00%" in simclr  # linear probe, kNN
    assert (tmp_path / "table.png").stat().st_size > 1000
