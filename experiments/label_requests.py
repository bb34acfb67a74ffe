"""Label-request strategies on the real Fashion-MNIST: 40 labels, request 40 more, retrain.

One CoMatch run with 40 labels; then, for each strategy, its 40 label requests
(comatch_jax.commands.request_labels), answered from the ground truth
(comatch_jax.commands.answer_from_truth), and a new run from scratch on the 40 + 40 labels (same training seed, same steps). `--random_seeds`
draws the random baseline several times, which shows how much the accuracy moves with the
choice of 40 images alone. Prints a Markdown table of test accuracy (EMA model) per strategy
against the mean of the random draws and writes it to --out. Every step is the real
command-line tool in a subprocess; finished runs and answered requests are reused.

  python experiments/label_requests.py --num_steps=500 --random_seeds=0,1,2 \\
      --out=experiments/out/label_requests.md
"""

import collections
import csv
import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

from comatch_jax.commands import active_learning

flags.DEFINE_integer("num_steps", 2500, "Training steps of every run (--config.num_steps).")
flags.DEFINE_integer("num_labels", 40, "Labels of the base run.")
flags.DEFINE_integer("budget", 40, "Labels each strategy requests.")
flags.DEFINE_integer("seed", 0, "Training seed of every run (it also picks the first labels).")
flags.DEFINE_list("random_seeds", ["0"], "Seeds of the random strategy: one baseline run each.")
flags.DEFINE_list(
    "strategies",
    ["entropy", "margin", "least_confidence", "kcenter", "entropy_balanced"],
    "Strategies besides random; '<name>_balanced' adds --balance_by_predicted_class.",
)
flags.DEFINE_string("workdir", "/tmp/label_requests", "Parent directory of the runs.")
flags.DEFINE_string("out", "experiments/out/label_requests.md", "Where to write the table.")
flags.DEFINE_list(
    "overrides", [], "Extra --config.X=Y overrides for every run, without the dashes."
)
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BALANCED_SUFFIX = "_balanced"


def _run(command: list[str], log_path: str) -> None:
    """Runs a command from the repo root, logging to `log_path`."""
    print(" ".join(command[1:]), flush=True)
    with open(log_path, "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def train_run(name: str, extra_labels_csv: str | None = None) -> dict:
    """Trains (or reuses) one CoMatch run; returns its summary plus the command."""
    workdir = os.path.join(FLAGS.workdir, name)
    command = [
        sys.executable,
        "-m",
        "comatch_jax.main",
        "--config=configs/comatch.py",
        f"--workdir={workdir}",
        f"--config.seed={FLAGS.seed}",
        f"--config.num_labels={FLAGS.num_labels}",
        f"--config.num_steps={FLAGS.num_steps}",
        *[f"--{override}" for override in FLAGS.overrides],
    ]
    if extra_labels_csv:
        command.append(f"--config.dataset.extra_labels_csv={extra_labels_csv}")
    summary_path = os.path.join(workdir, "summary.json")
    if not _finished(summary_path):
        _run(command, workdir + ".log")
    with open(summary_path) as f:
        summary = json.load(f)
    return {**summary, "command": " ".join(command[1:])}


def _finished(summary_path: str) -> bool:
    if not os.path.exists(summary_path):
        return False
    with open(summary_path) as f:
        return json.load(f)["final_step"] == FLAGS.num_steps


def request_and_answer(name: str, strategy: str, balanced: bool, seed: int) -> tuple[str, dict]:
    """Label requests of the base run, answered by the oracle; files named after `name`.

    Returns the labels CSV and facts about the requests: how many distinct true classes they
    cover, the largest number of one class, and how often the base model was already right.
    """
    requests_csv = os.path.join(FLAGS.workdir, f"requests_{name}.csv")
    labels_csv = os.path.join(FLAGS.workdir, f"labels_{name}.csv")
    base = os.path.join(FLAGS.workdir, "base")
    request = [
        sys.executable,
        "-m",
        "comatch_jax.commands.request_labels",
        f"--workdir={base}",
        f"--budget={FLAGS.budget}",
        f"--strategy={strategy}",
        f"--seed={seed}",
        f"--out={requests_csv}",
        "--nolabelling_page",  # answered by the oracle, not a person
    ]
    if balanced:
        request.append("--balance_by_predicted_class")
    answer = [
        sys.executable,
        "-m",
        "comatch_jax.commands.answer_from_truth",
        f"--requests={requests_csv}",
        f"--workdir={base}",
        f"--out={labels_csv}",
    ]
    if not os.path.exists(labels_csv):
        _run(request, requests_csv + ".log")
        _run(answer, labels_csv + ".log")
    with open(os.path.join(base, "run_info.json")) as f:
        class_index = {name: i for i, name in enumerate(json.load(f)["class_names"])}
    with open(requests_csv, newline="") as f:  # predicted_class holds class names
        predicted = np.asarray([class_index[row["predicted_class"]] for row in csv.DictReader(f)])
    labels = _read_column(labels_csv, "label")
    facts = {
        "classes": len(set(labels.tolist())),
        "largest_class": max(collections.Counter(labels.tolist()).values()),
        "base_right": float(np.mean(predicted == labels)),
        "commands": [" ".join(request[1:]), " ".join(answer[1:])],
    }
    return labels_csv, facts


def _read_column(path: str, column: str) -> np.ndarray:
    with open(path) as f:
        header = f.readline().strip().split(",")
        return np.asarray(
            [int(line.split(",")[header.index(column)]) for line in f if line.strip()]
        )


def _plan() -> list[tuple[str, str, bool, int]]:
    """(name, strategy, balanced, seed) of every request round, random draws first."""
    plan = []
    for seed in map(int, FLAGS.random_seeds):
        name = "random" if seed == FLAGS.seed else f"random_seed{seed}"
        plan.append((name, "random", False, seed))
    for name in FLAGS.strategies:
        strategy = name.removesuffix(BALANCED_SUFFIX)
        if strategy not in active_learning.STRATEGIES or strategy == "random":
            raise app.UsageError(f"Unknown strategy {name!r} (random is set by --random_seeds).")
        plan.append((name, strategy, name.endswith(BALANCED_SUFFIX), FLAGS.seed))
    return plan


def main(argv):
    del argv
    os.makedirs(FLAGS.workdir, exist_ok=True)
    base = train_run("base")
    rows = []
    for name, strategy, balanced, seed in _plan():
        labels_csv, facts = request_and_answer(name, strategy, balanced, seed)
        rows.append(
            {"name": name, "strategy": strategy, **facts, **train_run(f"with_{name}", labels_csv)}
        )
    random_accuracies = [100 * r["test_accuracy"] for r in rows if r["strategy"] == "random"]
    random_mean = float(np.mean(random_accuracies))
    random_std = float(np.std(random_accuracies, ddof=1)) if len(random_accuracies) > 1 else 0.0
    total = FLAGS.num_labels + FLAGS.budget
    lines = [
        "| labels | strategy | test accuracy (EMA) | vs random mean | raw model "
        "| requests: true classes covered / most of one class | base model right on requests |",
        "|---|---|---|---|---|---|---|",
        f"| {FLAGS.num_labels} | (base run) | {100 * base['test_accuracy']:.2f}% | | "
        f"{100 * base['test_accuracy_raw']:.2f}% | | |",
    ]
    for r in rows:
        lines.append(
            f"| {total} | {r['name']} | {100 * r['test_accuracy']:.2f}% "
            f"| {100 * r['test_accuracy'] - random_mean:+.2f} "
            f"| {100 * r['test_accuracy_raw']:.2f}% | {r['classes']} / {r['largest_class']} "
            f"| {100 * r['base_right']:.0f}% |"
        )
    lines.append(
        f"| {total} | **random, mean ± std of {len(random_accuracies)} draws** "
        f"| **{random_mean:.2f} ± {random_std:.2f}%** | | | | |"
    )
    table = "\n".join(lines)
    print(table)
    commands = [base["command"]] + [c for r in rows for c in (*r["commands"], r["command"])]
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "w") as f:
        f.write(table + "\n\nCommands:\n" + "\n".join(f"    python {c}" for c in commands) + "\n")


if __name__ == "__main__":
    app.run(main)
