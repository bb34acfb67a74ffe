"""CoMatch vs the supervised-only baseline on the real Fashion-MNIST with 40 labels.

Same model, same steps, several seeds; each run is the real entry point in a subprocess.
Prints a Markdown table (test accuracy of the EMA model, time of the training loop from
each run's summary.json) and writes it to --out. A run whose summary.json exists is
reported without rerunning it, so the script can be resumed. Runs sequentially: on 2 idle CPU cores the default config takes about 8 minutes
per CoMatch run (2,500 steps).

  python experiments/fashion_mnist_40.py --seeds=0,1,2 --out=experiments/out/fmnist40.md
"""

import json
import os
import subprocess
import sys

from absl import app, flags

flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
flags.DEFINE_string("methods", "supervised,comatch", "Config names in configs/.")
flags.DEFINE_string("workdir", "/tmp/fmnist40", "Parent directory of the runs.")
flags.DEFINE_string("out", "experiments/out/fmnist40.md", "Where to write the table.")
flags.DEFINE_list(
    "overrides", [], "Extra --config.X=Y overrides for every run, without the dashes."
)
FLAGS = flags.FLAGS


def run_one(method: str, seed: int) -> dict:
    workdir = os.path.join(FLAGS.workdir, f"{method}_seed{seed}")
    command = [
        sys.executable,
        "-m",
        "comatch_jax.main",
        f"--config=configs/{method}.py",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        *[f"--{override}" for override in FLAGS.overrides],
    ]
    summary_path = os.path.join(workdir, "summary.json")
    if not os.path.exists(summary_path):  # finished runs are reported, not rerun
        print(" ".join(command), flush=True)
        with open(workdir + ".log", "a") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    with open(summary_path) as f:
        summary = json.load(f)
    summary.update(method=method, seed=seed, command=" ".join(command[1:]))
    return summary


def main(argv):
    del argv
    os.makedirs(FLAGS.workdir, exist_ok=True)
    rows = [run_one(m, int(s)) for m in FLAGS.methods.split(",") for s in FLAGS.seeds.split(",")]
    lines = [
        "| method | seed | steps | test accuracy (EMA) | raw model | training time |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['seed']} | {r['final_step']} | {100 * r['test_accuracy']:.2f}% "
            f"| {100 * r['test_accuracy_raw']:.2f}% | {r['train_seconds'] / 60:.1f} min |"
        )
    for method in FLAGS.methods.split(","):
        accs = [100 * r["test_accuracy"] for r in rows if r["method"] == method]
        mean = sum(accs) / len(accs)
        std = (sum((a - mean) ** 2 for a in accs) / max(len(accs) - 1, 1)) ** 0.5
        lines.append(f"| **{method} mean ± std** | | | **{mean:.2f} ± {std:.2f}%** | | |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "w") as f:
        f.write(
            table + "\n\nCommands:\n" + "\n".join(f"    python {r['command']}" for r in rows) + "\n"
        )


if __name__ == "__main__":
    app.run(main)
