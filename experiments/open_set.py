"""Open-set semi-supervised benchmark: unlabeled pools holding images of no known class.

The protocol of OpenMatch (NeurIPS'21), SSB and IOMatch (ICCV'23) at CPU scale, on CIFAR-10
photos as an image folder: the 6 animal classes are known (25 labels each), the 4 vehicle
classes unknown. Each pool has the same size and holds 0 % or 50 % unknown-class images.
Accuracy is measured on known-class test images (the folder's val/); the AUROC of each
unknown score tells unknown-class test images (OUT/unknown_test/, as many as val/) from
known ones.

  # 1. the folders (hard links into SRC; SRC = CIFAR-10 as files: train/<class>/, test/<class>/)
  python experiments/open_set.py --stage=build --src=/work/data/cifar10_jpg --out=/work/data/open_set
  # 2. the runs (python -m comatch_jax.main in subprocesses; a finished run is not rerun)
  nice -n 10 python experiments/open_set.py --stage=train --out=/work/data/open_set \\
      --workdir=/work/data/open_set_runs --methods=supervised,fixmatch,comatch,comatch_adaptive \\
      --fractions=0,50 --seeds=0

Every run uses its config file with the `folder_cpu` preset and --steps steps (the same for
every method). Never commit the folders: they are CIFAR-10's images.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNOWN = ("bird", "cat", "deer", "dog", "frog", "horse")
UNKNOWN = ("airplane", "automobile", "ship", "truck")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")

flags.DEFINE_enum("stage", "build", ["build", "train"], "What to do.")
flags.DEFINE_string("src", "/work/data/cifar10_jpg", "CIFAR-10 as files: train/<class>/, test/<class>/.")
flags.DEFINE_string("out", "/work/data/open_set", "Where the folders are (stage build writes them).")
flags.DEFINE_integer("labeled_per_class", 25, "Labels per known class.")
flags.DEFINE_integer("pool_size", 5000, "Unlabeled images in every pool.")
flags.DEFINE_list("fractions", ["0", "50"], "Percent of unknown-class images in the pools.")
flags.DEFINE_integer("test_per_class", 300, "Known-class test images per class (val/).")
flags.DEFINE_integer("seed", 0, "Seed of the folders' selection.")
flags.DEFINE_string("workdir", "/work/data/open_set_runs", "Parent directory of the runs.")
flags.DEFINE_list("methods", ["supervised", "fixmatch", "comatch", "comatch_adaptive"], "Configs.")
flags.DEFINE_list("seeds", ["0"], "Training seeds.")
flags.DEFINE_integer("steps", 3500, "Training steps of every run.")
flags.DEFINE_multi_string("override", [], "Extra --config.* overrides for every run.")
flags.DEFINE_string("tag", "", "Suffix of the run directories (runs with --override).")
FLAGS = flags.FLAGS


def _class_files(directory: str, classes: tuple[str, ...]) -> dict[str, list[str]]:
    files = {}
    for name in classes:
        folder = os.path.join(directory, name)
        if not os.path.isdir(folder):
            raise ValueError(f"{folder} is missing: --src needs train/<class>/ and test/<class>/")
        files[name] = sorted(
            os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(EXTENSIONS)
        )
    return files


def _place(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def build_folders(
    src: str,
    out: str,
    *,
    labeled_per_class: int,
    pool_size: int,
    fractions: list[int],
    test_per_class: int,
    seed: int,
    known: tuple[str, ...] = KNOWN,
    unknown: tuple[str, ...] = UNKNOWN,
) -> dict[str, dict[str, int]]:
    """Writes OUT/pool<F>/ (labeled/<known class>/, unlabeled/ with F % unknown-class images,
    val/<known class>/, unlabeled_truth.csv) for each F of `fractions`, and OUT/unknown_test/
    (as many unknown-class test images as val/ holds, spread over the unknown classes). Every
    pool shares the labeled and val images; its known-class unlabeled images are the first
    (100 - F) % of one seeded order, so the pools differ only by what F replaces. Returns the
    counts per folder. Raises ValueError when OUT exists or SRC has too few images."""
    if os.path.exists(out):
        raise ValueError(f"{out} exists; choose a new --out")
    rng = np.random.default_rng(seed)
    train_known = _class_files(os.path.join(src, "train"), known)
    train_unknown = _class_files(os.path.join(src, "train"), unknown)
    test_known = _class_files(os.path.join(src, "test"), known)
    test_unknown = _class_files(os.path.join(src, "test"), unknown)
    labeled, known_rest = [], []
    for name, files in train_known.items():
        order = rng.permutation(len(files))
        labeled += [(name, files[i]) for i in order[:labeled_per_class]]
        known_rest += [(name, files[i]) for i in order[labeled_per_class:]]
    known_rest = [known_rest[i] for i in rng.permutation(len(known_rest))]
    unknown_pool = [(n, f) for n, files in train_unknown.items() for f in files]
    unknown_pool = [unknown_pool[i] for i in rng.permutation(len(unknown_pool))]
    val = []
    for name, files in test_known.items():
        if len(files) < test_per_class:
            raise ValueError(f"test/{name} has {len(files)} images < --test_per_class")
        val += [(name, files[i]) for i in rng.permutation(len(files))[:test_per_class]]
    per_unknown = -(-len(val) // len(unknown))
    unknown_test = []
    for name, files in test_unknown.items():
        unknown_test += [(name, files[i]) for i in rng.permutation(len(files))[:per_unknown]]
    unknown_test = unknown_test[: len(val)]
    counts = {}
    for fraction in fractions:
        num_unknown = pool_size * fraction // 100
        num_known = pool_size - num_unknown
        if num_known > len(known_rest) or num_unknown > len(unknown_pool):
            raise ValueError(f"too few train images for a pool of {pool_size} at {fraction} %")
        pool = known_rest[:num_known] + unknown_pool[:num_unknown]
        pool = [pool[i] for i in rng.permutation(len(pool))]
        root = os.path.join(out, f"pool{fraction}")
        for name, path in labeled:
            _place(path, os.path.join(root, "labeled", name, os.path.basename(path)))
        for name, path in val:
            _place(path, os.path.join(root, "val", name, os.path.basename(path)))
        with open(os.path.join(root, "unlabeled_truth.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "known"])
            for i, (name, path) in enumerate(pool):
                rel = f"{i:06d}{os.path.splitext(path)[1]}"
                _place(path, os.path.join(root, "unlabeled", rel))
                writer.writerow([rel, name, int(name in known)])
        counts[f"pool{fraction}"] = {
            "labeled": len(labeled),
            "unlabeled": len(pool),
            "unknown_in_pool": num_unknown,
            "val": len(val),
        }
    for name, path in unknown_test:
        _place(path, os.path.join(out, "unknown_test", name, os.path.basename(path)))
    counts["unknown_test"] = {"images": len(unknown_test)}
    return counts


def run_directory(method: str, fraction: int, seed: int) -> str:
    tag = f"_{FLAGS.tag}" if FLAGS.tag else ""
    return os.path.join(FLAGS.workdir, f"pool{fraction}", f"{method}{tag}_seed{seed}")


def train(method: str, fraction: int, seed: int) -> str:
    """Runs (or resumes) one run; returns its workdir. A finished run is left as it is."""
    workdir = run_directory(method, fraction, seed)
    if os.path.exists(os.path.join(workdir, "summary.json")):
        return workdir
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "comatch_jax.main",
        f"--config=configs/{method}.py:folder_cpu",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        f"--config.num_steps={FLAGS.steps}",
        f"--config.dataset.root={os.path.join(FLAGS.out, f'pool{fraction}')}",
        f"--config.dataset.cache_dir={os.path.join(FLAGS.workdir, 'cache', f'pool{fraction}')}",
    ] + [f"--{o}" if not o.startswith("--") else o for o in FLAGS.override]
    print(" ".join(command), flush=True)
    with open(workdir + ".log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return workdir


def main(argv):
    del argv
    fractions = [int(f) for f in FLAGS.fractions]
    if FLAGS.stage == "build":
        try:
            counts = build_folders(
                FLAGS.src,
                FLAGS.out,
                labeled_per_class=FLAGS.labeled_per_class,
                pool_size=FLAGS.pool_size,
                fractions=fractions,
                test_per_class=FLAGS.test_per_class,
                seed=FLAGS.seed,
            )
        except ValueError as error:
            sys.exit(f"error: {error}")
        print(f"wrote {FLAGS.out}: {counts}")
        return
    for seed in [int(s) for s in FLAGS.seeds]:
        for fraction in fractions:
            for method in FLAGS.methods:
                print(f"done: {train(method, fraction, seed)}", flush=True)


if __name__ == "__main__":
    app.run(main)
