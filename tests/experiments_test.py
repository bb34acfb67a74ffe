"""The experiment scripts run (tiny shapes), so they cannot rot between measurements."""

import json
import os
import subprocess
import sys

from core_imports_test import without_tensorflow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_runs_on_cpu_with_small_shapes(tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            "experiments/benchmark.py",
            # gpu_evidence.py --smoke's speed configuration: the GPU-evidence smoke test
            # below then reads these programs from the compilation cache.
            "--preset=competition96",
            "--dtype=bfloat16",
            "--smoke",
            "--batch_size=2",
            "--mu=1",
            "--image_size=24",
            "--repeats=1",
            "--loop_steps=4",
            "--pool_size=200",
            "--host_path",
            f"--json_out={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["images_per_step"] == 2 + 3 * 2  # labeled weak + 3 unlabeled views
    timed = ("augment", "bare_step", "full_step", "loop", "serial_host_loop", "prefetch_host_loop")
    for name in timed:
        assert figures[f"{name}_s"] > 0 and figures[f"{name}_images_per_s"] > 0
    assert figures["pool_size"] == 200 and figures["host_path"] is True
    assert figures["loop_over_full_step"] == figures["full_step_s"] / figures["loop_s"]
    assert figures["host_batch_s"] > 0
    assert figures["step_gflop"] > 0
    assert (
        figures["projected_schedule_hours"] == figures["schedule_steps"] * figures["loop_s"] / 3600
    )


def test_compare_methods_tabulates_finished_runs(tmp_path):
    """compare_methods reports runs whose summaries exist without rerunning them."""
    runs = tmp_path / "runs"
    from comatch_jax.core import methods

    accuracy = {"supervised": 0.5, "fixmatch": 0.7, "comatch": 0.75, "comatch_bt": 0.74}
    accuracy.update(freematch=0.72, softmatch=0.73)
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
    assert len(table) == 2 + len(methods.METHODS)
    assert [line.split("|")[1].strip() for line in table[2:]] == list(methods.METHODS)
    simclr = next(line for line in table if line.startswith("| simclr "))
    assert "100 + 10" in simclr and "2.5 min" in simclr and "56.00%" in simclr
    assert "60.00%" in simclr and "58.00%" in simclr  # linear probe, kNN
    assert (tmp_path / "table.png").stat().st_size > 1000


def test_make_synthetic_folder_writes_the_image_folder_layout(tmp_path):
    from PIL import Image

    def make(out, seed=0, workers=1):
        result = subprocess.run(
            [
                sys.executable,
                "experiments/make_synthetic_folder.py",
                f"--out={out}",
                "--num_labeled=6",
                "--num_unlabeled=7",
                "--num_val=3",
                "--num_classes=3",
                "--image_size=16",
                f"--seed={seed}",
                f"--workers={workers}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr[-3000:]

    def files(root):
        return sorted(
            os.path.relpath(os.path.join(d, f), root)
            for d, _, names in os.walk(root)
            for f in names
        )

    make(tmp_path / "a")
    names = files(tmp_path / "a")
    labeled = [n for n in names if n.startswith("labeled/")]
    assert sorted({n.split("/")[1] for n in labeled}) == ["class_0", "class_1", "class_2"]
    assert len(labeled) == 6 and sum("class_1/" in n for n in labeled) == 2  # balanced
    assert len([n for n in names if n.startswith("val/")]) == 3
    unlabeled = [n for n in names if n.startswith("unlabeled/")]
    assert len(unlabeled) == 7 and all(n.startswith("unlabeled/000/") for n in unlabeled)
    with Image.open(tmp_path / "a" / labeled[0]) as image:
        assert image.format == "JPEG" and image.size == (16, 16) and image.mode == "RGB"
    truth = (tmp_path / "a" / "unlabeled_truth.csv").read_text().splitlines()
    assert truth[0] == "path,label" and len(truth) == 8
    assert sorted("unlabeled/" + line.split(",")[0] for line in truth[1:]) == unlabeled
    # Deterministic by seed, whatever the number of workers; another seed, other pixels.
    make(tmp_path / "b", workers=2)
    make(tmp_path / "c", seed=1)
    read = lambda root, name: (root / name).read_bytes()
    assert files(tmp_path / "b") == names
    assert all(read(tmp_path / "a", n) == read(tmp_path / "b", n) for n in names)
    assert read(tmp_path / "a", labeled[0]) != read(tmp_path / "c", labeled[0])
    # A non-empty target is refused with one line.
    result = subprocess.run(
        [sys.executable, "experiments/make_synthetic_folder.py", f"--out={tmp_path / 'a'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "is not empty" in result.stderr.strip().splitlines()[-1]


def test_adaptive_thresholds_tabulates_accuracy_and_mask_rate_over_time(tmp_path):
    """4 steps of CoMatch with FreeMatch's threshold on a tiny image folder through the real
    entry point, tabulated beside a finished supervised run, which is reported from its
    files (as the script reports every finished run), not rerun; a second call reports both
    from their files."""
    folder = tmp_path / "folder"
    result = subprocess.run(
        [
            sys.executable,
            "experiments/make_synthetic_folder.py",
            f"--out={folder}",
            "--num_labeled=6",
            "--num_unlabeled=12",
            "--num_val=6",
            "--num_classes=3",
            "--image_size=16",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # A finished supervised run: what the trainer writes (metrics.jsonl, summary.json).
    runs = tmp_path / "runs" / "folder"
    supervised = runs / "supervised_seed0"
    supervised.mkdir(parents=True)
    records = [{"step": s, "train/loss": 1.0, "train/loss_x": 1.0} for s in (2, 4)]
    records.append({"step": 4, "eval/test_accuracy": 0.5})
    (supervised / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"test_accuracy": 0.5, "train_seconds": 6.0, "final_step": 4}
    (supervised / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "table.md"
    command = [
        sys.executable,
        "experiments/adaptive_thresholds.py",
        "--datasets=folder",
        "--methods=supervised,comatch_adaptive",
        "--steps=4",
        "--log_every=2",
        "--points=0.5,1.0",
        f"--folder={folder}",
        "--image_size=16",
        f"--workdir={tmp_path / 'runs'}",
        f"--out={out}",
        "--override=config.batch_size=2",
        "--override=config.model.widths=(8,16)",
        "--override=config.model.low_dim=8",
        "--override=config.comatch.queue_size=16",
        "--override=config.eval_batch_size=16",
        "--override=config.augment.strong0=weak",  # compiles fast; views are tested elsewhere
        "--override=config.augment.strong1=weak",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "configs/comatch_adaptive.py" in result.stdout  # the one run it trained
    assert (
        "configs/supervised.py" not in result.stdout
        and not (runs / "supervised_seed0.log").exists()
    )
    lines = out.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    assert "mask rate @50%" in header and "mask rate @100%" in header
    assert "pseudo-label" not in header  # an image folder has no unlabeled truth
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines if line.startswith("| ")}
    supervised, adaptive = rows["Supervised only"], rows["CoMatch + FreeMatch threshold"]
    assert supervised[1:4] == ["50.00%", "50.0", "0.1 min"]
    assert supervised[4:7] == ["—", "—", "— |"]  # no unlabeled loss, no mask rate
    for cell in adaptive[4:6]:  # thresholds start at 1/C: most pseudo-labels are kept
        assert cell.endswith("%") and 0.0 <= float(cell[:-1]) <= 100.0
    tau = float(adaptive[6].rstrip(" |"))  # 4 steps at momentum 0.999: still near 1/C
    assert 0.333 <= tau < 0.5
    summary = json.loads((runs / "comatch_adaptive_seed0" / "summary.json").read_text())
    assert summary["final_step"] == 4
    # Called again, the trained run is reported from its files too: the same table.
    before = (runs / "comatch_adaptive_seed0.log").read_text()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "comatch_jax.main" not in result.stdout
    assert (runs / "comatch_adaptive_seed0.log").read_text() == before
    assert out.read_text().splitlines()[: len(lines)] == lines


def test_gpu_evidence_smoke_runs_every_part_without_tensorflow(tmp_path):
    """gpu_evidence.py --smoke on the CPU, in processes where `import tensorflow` fails (the
    GPU machine has none): every part runs or says why not, and the table is written."""
    env = without_tensorflow()
    check = subprocess.run(
        [sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True
    )
    assert "No module named 'tensorflow'" in check.stderr
    out = tmp_path / "evidence"
    result = subprocess.run(
        [sys.executable, "experiments/gpu_evidence.py", f"--out={out}", "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evidence = json.loads((out / "evidence.json").read_text())
    assert evidence["smoke"] is True and evidence["environment"]["tensorflow"] is None
    parts = evidence["parts"]
    assert parts["speed"]["status"] == "ok", parts["speed"]
    assert parts["accuracy"]["status"] == "ok", parts["accuracy"]
    speed = parts["speed"]
    assert [(m["preset"], m["dtype"]) for m in speed["measurements"]] == [
        ("competition96", "bfloat16")
    ]
    for m in speed["measurements"]:
        assert m["full_step_s"] > 0 and m["bare_step_s"] > 0 and m["step_gflop"] > 0
        assert "fraction_of_bf16_peak" not in m  # a CPU has no entry in the peak table
    assert [(loop["preset"], loop["pool_size"], loop["host_path"]) for loop in speed["loops"]] == [
        ("competition96", 200, True)
    ]
    for loop in speed["loops"]:
        assert loop["loop_s"] > 0 and loop["projected_schedule_hours"] > 0
    runs = parts["accuracy"]["runs"]
    assert [(r["method"], r["dtype"]) for r in runs] == [
        ("comatch", "bfloat16"),
        ("supervised", "float32"),
    ]
    for run in runs:
        assert 0.0 <= run["summary"]["test_accuracy"] <= 1.0
        assert any("train/loss" in row for row in run["curves"])
    official = parts["official"]
    if os.path.isfile(os.path.join(REPO, "third_party", "CoMatch", "Train_CoMatch.py")):
        assert official["status"] == "ok", official
        assert official["step"]["f32"]["iteration_s_mean"] > 0
        assert official["step"]["bf16"]["iteration_s_mean"] > 0
        assert "iteration_s_mean" in official["end_to_end"] or "skipped" in official["end_to_end"]
    else:
        assert official["status"].startswith("skipped: "), official
    table = (out / "evidence.md").read_text()
    assert table.startswith("## CPU smoke (not GPU figures)")
    assert "| accuracy | supervised float32" in table and table in result.stdout


def test_trainer_writes_metrics_without_tensorflow(tmp_path):
    """Without TensorFlow (so without clu's writers) the trainer logs a warning and writes
    metrics.jsonl only."""
    env = dict(without_tensorflow(), JAX_PLATFORMS="cpu")
    script = f"""
import sys
from comatch_jax.trainer import metrics
writer = metrics.create_writer({str(tmp_path)!r}, primary=True)
writer.write_scalars(3, {{"train/loss": 1.5}})
writer.release(3)
assert "tensorflow" not in sys.modules
"""
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "clu.metric_writers cannot be imported" in result.stderr
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 3, "train/loss": 1.5}]
