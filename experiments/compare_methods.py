"""The paper's Table 2 at CPU scale: every method on Fashion-MNIST with 40 labels.

Rows: every entry of comatch_jax.core.methods.METHODS, in its order (configs/<method>.py each).
A self-supervised method is pretrained on the unlabeled images for --steps, then evaluated by
kNN and a linear probe on frozen features and fine-tuned on the labeled images for
--finetune_steps; the others train for --steps. Same model, data and seed everywhere; every run is
the real entry point in a subprocess and a finished run is reported, not rerun.

  python experiments/compare_methods.py --steps=2500 --finetune_steps=1000 --workdir=/tmp/compare

Writes a Markdown table and a PNG bar chart to --out_prefix.{md,png}.
"""

import json
import os
import subprocess
import sys

from absl import app, flags

from comatch_jax.core import methods

flags.DEFINE_integer("steps", 2500, "Training (or pretraining) steps per method.")
flags.DEFINE_integer("finetune_steps", 1000, "Fine-tuning steps after self-supervised pretraining.")
flags.DEFINE_integer("seed", 0, "Seed of every run (the labeled split too).")
flags.DEFINE_string("workdir", "/tmp/compare", "Parent directory of the runs.")
flags.DEFINE_string("out_prefix", "experiments/out/compare_methods", "Output .md / .png prefix.")
flags.DEFINE_list("methods", [], "Subset of rows to run (default: all).")
FLAGS = flags.FLAGS

# Rows in the order of the method table; each method's declaration says how it is evaluated.
ROW_ORDER = list(methods.METHODS)


def _run(args: list[str], workdir: str) -> dict:
    """Runs one training command unless its summary exists; returns the summary."""
    summary_path = os.path.join(workdir, "summary.json")
    if not os.path.exists(summary_path):
        command = [sys.executable, "-m", "comatch_jax.main", f"--workdir={workdir}", *args]
        print(" ".join(command[1:]), flush=True)
        with open(workdir + ".log", "a") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    with open(summary_path) as f:
        return json.load(f)


def _probe(workdir: str) -> dict:
    path = os.path.join(workdir, "probe.json")
    if not os.path.exists(path):
        command = [sys.executable, "-m", "comatch_jax.commands.probe", f"--workdir={workdir}", "--mode=all"]
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, capture_output=True)
    with open(path) as f:
        return json.load(f)


def run_row(method: str) -> dict:
    common = [f"--config.seed={FLAGS.seed}"]
    workdir = os.path.join(FLAGS.workdir, method)
    steps = [f"--config.num_steps={FLAGS.steps}"]
    summary = _run([f"--config=configs/{method}.py", *common, *steps], workdir)
    row = {"method": method, "steps": FLAGS.steps, "minutes": summary["train_seconds"] / 60}
    if methods.get_method(method).evaluation == "classifier":
        row["accuracy"] = summary["test_accuracy"]
        return row
    row.update(_probe(workdir))
    finetune = _run(
        [
            "--config=configs/finetune.py",
            *common,
            f"--config.init_from={workdir}",
            f"--config.num_steps={FLAGS.finetune_steps}",
        ],
        workdir + "_finetune",
    )
    row["steps"] = f"{FLAGS.steps} + {FLAGS.finetune_steps}"
    row["minutes"] += finetune["train_seconds"] / 60
    row["accuracy"] = finetune["test_accuracy"]
    return row


def _percent(value) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


def main(argv):
    del argv
    for name in FLAGS.methods:
        methods.get_method(name)  # ValueError naming the known methods
    os.makedirs(FLAGS.workdir, exist_ok=True)
    rows = [run_row(m) for m in ROW_ORDER if not FLAGS.methods or m in FLAGS.methods]
    lines = [
        "| method | steps | training time | test accuracy (fine-tune / own classifier) | linear probe | kNN |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['steps']} | {r['minutes']:.1f} min | {_percent(r['accuracy'])} "
            f"| {_percent(r.get('linear_probe_accuracy'))} | {_percent(r.get('knn_accuracy'))} |"
        )
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.dirname(FLAGS.out_prefix) or ".", exist_ok=True)
    with open(FLAGS.out_prefix + ".md", "w") as f:
        f.write(table + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4))
    names = [methods.get_method(r["method"]).display_name for r in rows]
    axis.bar(names, [100 * r["accuracy"] for r in rows], color="tab:blue", label="test accuracy")
    for i, r in enumerate(rows):
        axis.text(i, 100 * r["accuracy"] + 0.5, f"{100 * r['accuracy']:.1f}", ha="center")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"Fashion-MNIST, 40 labels, seed {FLAGS.seed} ({FLAGS.steps} steps per method)")
    axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    figure.savefig(FLAGS.out_prefix + ".png", dpi=100)


if __name__ == "__main__":
    app.run(main)
