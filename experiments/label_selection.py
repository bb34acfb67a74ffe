"""Which model should choose the images people label? The paper's closing question, measured.

The paper behind this library trained CoMatch on 5 % labels, asked people to label the
unlabeled images a *supervised* model was least sure about (entropy), retrained on 7.5 %, and
wrote: "If our labeling request was based on CoMatch, the improvement would be much more
significant." Here, on a colour image folder (CIFAR-10 photos, 25 labels per class, 5,000
unlabeled, 1,000 val; experiments/make_folder_subset.py):

1. adaptive CoMatch (configs/comatch_adaptive.py:folder_cpu) and supervised-only
   (configs/supervised.py:folder_cpu) train on the folder, seed 0, --steps steps;
2. each picks --budget unlabeled images by entropy (request_labels), and a third set is
   drawn at random; the oracle answers every request from the folder's unlabeled_truth.csv;
3. adaptive CoMatch retrains from scratch on labeled/ plus each set of answers, for every
   seed of --seeds, next to adaptive CoMatch without extra labels ("before") on the same seeds.

  nice -n 10 python experiments/label_selection.py --folder=/work/data/cifar10_folder \\
      --workdir=/work/data/selection --steps=3500 --budget=250 --seeds=0,1,2

Every step is the real command in a subprocess; a finished run or an answered request is
reused, so the script resumes. Prints a Markdown table (accuracy of the EMA model on val/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("folder", "/work/data/cifar10_folder", "The image folder (labeled/, unlabeled/, val/).")
flags.DEFINE_string(
    "truth", "", "path,label of the unlabeled images, beside unlabeled/; '' = FOLDER/unlabeled_truth.csv."
)
flags.DEFINE_string("workdir", "/work/data/selection", "Parent directory of runs and CSV files.")
flags.DEFINE_integer("steps", 3500, "Training steps of every run.")
flags.DEFINE_integer("budget", 250, "Images each selector asks to have labeled.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the retraining (and of 'before').")
flags.DEFINE_list("selectors", ["comatch_adaptive", "supervised", "random"], "Who picks.")
FLAGS = flags.FLAGS


def _run(command: list[str], log_path: str) -> None:
    print(" ".join(command[1:]), flush=True)
    with open(log_path, "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def train(name: str, config: str, seed: int, extra_labels_csv: str = "") -> dict:
    """Trains (or reuses) one run; returns its summary.json."""
    workdir = os.path.join(FLAGS.workdir, name)
    summary = os.path.join(workdir, "summary.json")
    if not os.path.exists(summary):
        command = [
            sys.executable,
            "-m",
            "comatch_jax.main",
            f"--config=configs/{config}.py:folder_cpu",
            f"--workdir={workdir}",
            f"--config.seed={seed}",
            f"--config.num_steps={FLAGS.steps}",
            f"--config.dataset.root={FLAGS.folder}",
            f"--config.dataset.cache_dir={os.path.join(FLAGS.workdir, 'cache')}",
        ]
        if extra_labels_csv:
            command.append(f"--config.dataset.extra_labels_csv={extra_labels_csv}")
        _run(command, workdir + ".log")
    with open(summary) as f:
        return json.load(f)


def answer(requests_csv: str, out: str) -> None:
    """The oracle: path,label for every requested path, from the truth CSV."""
    truth_csv = FLAGS.truth or os.path.join(FLAGS.folder, "unlabeled_truth.csv")
    command = [
        sys.executable,
        "-m",
        "comatch_jax.commands.answer_from_truth",
        f"--requests={requests_csv}",
        f"--truth={truth_csv}",
        f"--out={out}",
    ]
    _run(command, out + ".log")


def request(selector: str) -> str:
    """The answered requests of one selector (its CSV of path,label)."""
    answers = os.path.join(FLAGS.workdir, f"answers_{selector}.csv")
    if os.path.exists(answers):
        return answers
    requests = os.path.join(FLAGS.workdir, f"requests_{selector}.csv")
    if selector == "random":
        model, strategy = "comatch_adaptive", "random"
    else:
        model, strategy = selector, "entropy"
    train(f"{model}_seed0", model, 0)
    _run(
        [
            sys.executable,
            "-m",
            "comatch_jax.commands.request_labels",
            f"--workdir={os.path.join(FLAGS.workdir, f'{model}_seed0')}",
            f"--budget={FLAGS.budget}",
            f"--strategy={strategy}",
            f"--out={requests}",
            "--nolabelling_page",  # answered by the oracle, not a person
        ],
        requests + ".log",
    )
    answer(requests, answers)
    return answers


def _row(name: str, accuracies: list[float]) -> str:
    values = np.asarray(accuracies) * 100
    per_seed = " / ".join(f"{v:.1f}" for v in values)
    return f"| {name} | {values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0:.2f}% | {per_seed} |"


def main(argv):
    del argv
    os.makedirs(FLAGS.workdir, exist_ok=True)
    seeds = [int(s) for s in FLAGS.seeds]
    before = [train(f"comatch_adaptive_seed{s}", "comatch_adaptive", s)["test_accuracy"] for s in seeds]
    supervised = train("supervised_seed0", "supervised", 0)["test_accuracy"]
    rows = [
        "| labels | accuracy (EMA, val/), mean ± std | per seed |",
        "|---|---|---|",
        _row("labeled/ only (before)", before),
    ]
    answers = {selector: request(selector) for selector in FLAGS.selectors}
    after = {selector: [] for selector in FLAGS.selectors}
    for s in seeds:  # seed-major: every selector's seed 0 finishes before any seed 1
        for selector in FLAGS.selectors:
            run = train(f"after_{selector}_seed{s}", "comatch_adaptive", s, answers[selector])
            after[selector].append(run["test_accuracy"])
    for selector in FLAGS.selectors:
        rows.append(_row(f"+ {FLAGS.budget} picked by {selector}", after[selector]))
    rows.append(f"\nsupervised-only selector's own accuracy (seed 0): {supervised * 100:.1f}%")
    print("\n".join(rows))
    with open(os.path.join(FLAGS.workdir, "table.md"), "w") as f:
        f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    app.run(main)
