"""Fixed vs adaptive thresholds at a user's budget (issue 21): supervised-only, FixMatch,
CoMatch, FreeMatch, SoftMatch and CoMatch with FreeMatch's threshold rule
(configs/comatch_adaptive.py), on a colour image folder and on Fashion-MNIST with 40 labels.

Every run is the real entry point (`python -m comatch_jax.main`) in a subprocess, with the
same step budget, model and seed per row; a run whose summary.json exists is reported without
rerunning it, so the script resumes after an interruption (an interrupted run resumes from its
checkpoint). Runs go one after another; run the script under `nice` on a shared machine
(the subprocesses inherit it).

The Markdown table (--out) gives, per dataset and method: the final test accuracy of the EMA
model (mean +- std over seeds, and per seed), the training time, and the mask rate over time,
read from each run's metrics.jsonl (`train/mask_rate`, averaged over the steps since the
previous log) at the first logged step at or after each of --points of training, averaged
over seeds. For SoftMatch `mask_rate` is the mean sample weight (the weight mass); for the
other methods the fraction of unlabeled images whose pseudo-label is kept. The last
threshold column is the global threshold tau_t (FreeMatch, adaptive CoMatch) or SoftMatch's
mean confidence mu_t at the end of training. Pseudo-label accuracy is shown only where the
unlabeled images' truth is known (not for an image folder).

  nice -n 10 python experiments/adaptive_thresholds.py --steps=1500 --seeds=0,1,2 \\
      --workdir=/tmp/adaptive --out=experiments/out/adaptive_thresholds.md

Datasets: `folder` (--folder, an image folder as in the README: labeled/<class>/,
unlabeled/, val/<class>/; the default is CIFAR-10 JPEGs, 25 labeled per class, 5,000
unlabeled, 1,000 val, 32 px) and `fmnist40` (the default config: Fashion-MNIST, 40 labels).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from comatch_jax.commands import analyze  # noqa: E402  (after the repository is on the path)

METHODS = ("supervised", "fixmatch", "comatch", "freematch", "softmatch", "comatch_adaptive")
DISPLAY = {
    "supervised": "Supervised only",
    "fixmatch": "FixMatch",
    "comatch": "CoMatch",
    "freematch": "FreeMatch",
    "softmatch": "SoftMatch (mask rate = mean weight)",
    "comatch_adaptive": "CoMatch + FreeMatch threshold",
}
DATASETS = ("folder", "fmnist40")

flags.DEFINE_list("methods", list(METHODS), "Config names in configs/ (rows, in this order).")
flags.DEFINE_list("datasets", list(DATASETS), f"Some of {DATASETS}.")
flags.DEFINE_list("seeds", ["0"], "Seeds (the labeled split of fmnist40 too).")
flags.DEFINE_integer("steps", 1500, "Training steps of every run (the same budget per row).")
flags.DEFINE_integer("log_every", 0, "config.log_every; 0 = steps // 30 (at least 1).")
flags.DEFINE_string("folder", "/work/data/cifar10_folder", "Root of the image folder.")
flags.DEFINE_integer("image_size", 32, "config.dataset.image_size of the folder runs.")
flags.DEFINE_string(
    "cache_dir", "", "config.dataset.cache_dir of the folder runs; '' = <workdir>/folder_cache."
)
flags.DEFINE_string("workdir", "/tmp/adaptive_thresholds", "Parent directory of the runs.")
flags.DEFINE_string("out", "experiments/out/adaptive_thresholds.md", "Where to write the table.")
flags.DEFINE_list("points", ["0.1", "0.5", "1.0"], "Fractions of training for the mask rate.")
flags.DEFINE_multi_string(
    "override", [], "An extra config override for every run, e.g. config.model.widths=(8,16)."
)
FLAGS = flags.FLAGS


def dataset_flags(dataset: str) -> list[str]:
    if dataset == "fmnist40":
        return []  # the default config
    cache_dir = FLAGS.cache_dir or os.path.join(FLAGS.workdir, "folder_cache")
    return [
        "--config.dataset.name=image_folder",
        f"--config.dataset.root={FLAGS.folder}",
        f"--config.dataset.image_size={FLAGS.image_size}",
        f"--config.dataset.cache_dir={cache_dir}",
    ]


def run_one(dataset: str, method: str, seed: int) -> dict:
    """Trains one run unless its summary.json exists; returns the summary plus the curves."""
    workdir = os.path.join(FLAGS.workdir, dataset, f"{method}_seed{seed}")
    log_every = FLAGS.log_every or max(1, FLAGS.steps // 30)
    command = [
        sys.executable,
        "-m",
        "comatch_jax.main",
        f"--config=configs/{method}.py",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        f"--config.num_steps={FLAGS.steps}",
        f"--config.log_every={log_every}",
        *dataset_flags(dataset),
        *[f"--{override}" for override in FLAGS.override],
    ]
    summary_path = os.path.join(workdir, "summary.json")
    if not os.path.exists(summary_path):  # finished runs are reported, not rerun
        print(" ".join(command[1:]), flush=True)
        os.makedirs(os.path.dirname(workdir), exist_ok=True)
        with open(workdir + ".log", "a") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    with open(summary_path) as f:
        summary = json.load(f)
    training, _ = analyze.read_metrics(workdir)
    summary.update(
        dataset=dataset, method=method, seed=seed, command=" ".join(command[1:]), training=training
    )
    return summary


def value_at(training: list[dict], name: str, step: float) -> float | None:
    """`name` of the first training record at or after `step` (the last one if none is)."""
    records = [r for r in training if name in r]
    if not records:
        return None
    later = [r for r in records if r["step"] >= step]
    return (later[0] if later else records[-1])[name]


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def threshold_at_end(training: list[dict]) -> float | None:
    for name in ("global_threshold", "confidence_mean"):
        if any(name in r for r in training):
            return value_at(training, name, math.inf)
    return None


def table(dataset: str, rows: list[dict], points: list[float]) -> list[str]:
    has_truth = dataset != "folder"  # an image folder has no unlabeled ground truth
    header = ["method", "test accuracy (EMA), mean ± std", "per seed", "training time"]
    header += [f"mask rate @{round(100 * p)}%" for p in points] + ["τ_t / μ_t at end"]
    if has_truth:
        header.append("pseudo-label acc @100%")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in FLAGS.methods:
        runs = [r for r in rows if r["method"] == method]
        accuracies = [100 * r["test_accuracy"] for r in runs]
        mean = sum(accuracies) / len(accuracies)
        std = (sum((a - mean) ** 2 for a in accuracies) / max(len(accuracies) - 1, 1)) ** 0.5
        minutes = _mean([r["train_seconds"] / 60 for r in runs])
        cells = [
            DISPLAY.get(method, method),
            f"{mean:.2f} ± {std:.2f}%" if len(runs) > 1 else f"{mean:.2f}%",
            " / ".join(f"{a:.1f}" for a in accuracies),
            f"{minutes:.1f} min",
        ]
        for point in points:
            step = point * FLAGS.steps
            cells.append(
                _percent(_mean([value_at(r["training"], "mask_rate", step) for r in runs]))
            )
        end = _mean([threshold_at_end(r["training"]) for r in runs])
        cells.append("—" if end is None else f"{end:.3f}")
        if has_truth:
            acc = _mean([value_at(r["training"], "pseudo_label_acc", math.inf) for r in runs])
            cells.append(_percent(acc))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv):
    del argv
    unknown = [d for d in FLAGS.datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"--datasets: unknown {unknown}; expected some of {DATASETS}")
    missing = [
        m for m in FLAGS.methods if not os.path.exists(os.path.join(REPO, "configs", m + ".py"))
    ]
    if missing:
        raise ValueError(f"--methods: no configs/<name>.py for {missing}")
    points = [float(p) for p in FLAGS.points]
    if not all(0 < p <= 1 for p in points):
        raise ValueError(f"--points must be fractions in (0, 1], got {FLAGS.points}")
    os.makedirs(FLAGS.workdir, exist_ok=True)
    sections, commands = [], []
    for dataset in FLAGS.datasets:
        rows = [run_one(dataset, m, int(s)) for m in FLAGS.methods for s in FLAGS.seeds]
        title = (
            f"Image folder {FLAGS.folder} ({FLAGS.image_size} px)"
            if dataset == "folder"
            else "Fashion-MNIST, 40 labels"
        )
        sections.append(
            f"### {title}: {FLAGS.steps} steps, seeds {','.join(FLAGS.seeds)}\n\n"
            + "\n".join(table(dataset, rows, points))
        )
        commands += [r["command"] for r in rows]
    text = "\n\n".join(sections)
    print(text)
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "w") as f:
        f.write(text + "\n\nCommands:\n" + "\n".join(f"    python {c}" for c in commands) + "\n")


if __name__ == "__main__":
    app.run(main)
