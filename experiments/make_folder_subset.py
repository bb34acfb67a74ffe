"""Make a labeled/unlabeled/val image folder from a class-sorted image collection.

The source is a directory of images sorted by class, with a train and a test part, e.g. CIFAR-10
as JPEG files (`SRC/train/<class>/*.jpg`, `SRC/test/<class>/*.jpg`, the layout of public
CIFAR-10-as-files copies). The result has the layout comatch_jax reads
(`--config.dataset.name=image_folder`):

    OUT/labeled/<class>/...    --labeled_per_class images per class from SRC/train
    OUT/unlabeled/...          --num_unlabeled other images from SRC/train (flat, class hidden)
    OUT/val/<class>/...        --num_val images from SRC/test, stratified

Files are hard-linked where possible (copied otherwise), chosen by a seeded shuffle, so the same
seed gives the same folder. The true classes of the unlabeled images go to OUT/unlabeled_truth.csv
(outside the folders the library reads) for offline checks.

    python experiments/make_folder_subset.py --src=/data/cifar10_jpg --out=/tmp/cifar10_folder \
        --labeled_per_class=25 --num_unlabeled=5000 --num_val=1000 --seed=0
"""

from __future__ import annotations

import csv
import os
import shutil
import sys

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "Source directory with train/<class>/ and test/<class>/.")
flags.DEFINE_string("out", None, "Output folder (must not exist).")
flags.DEFINE_integer("labeled_per_class", 25, "Labeled images per class.")
flags.DEFINE_integer("num_unlabeled", 5000, "Unlabeled images (from the rest of train).")
flags.DEFINE_integer("num_val", 1000, "Validation images (from test, stratified).")
flags.DEFINE_integer("seed", 0, "Seed of the selection.")

_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def _class_files(part_dir: str) -> dict[str, list[str]]:
    classes = sorted(d for d in os.listdir(part_dir) if os.path.isdir(os.path.join(part_dir, d)))
    return {
        c: sorted(
            os.path.join(part_dir, c, f)
            for f in os.listdir(os.path.join(part_dir, c))
            if f.lower().endswith(_EXTENSIONS)
        )
        for c in classes
    }


def _place(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def make_subset(
    src: str, out: str, labeled_per_class: int, num_unlabeled: int, num_val: int, seed: int
) -> dict[str, int]:
    """Writes the folder; returns the number of images per part. Raises ValueError on bad sizes."""
    if os.path.exists(out):
        raise ValueError(f"{out} exists; choose a new --out")
    train, test = _class_files(os.path.join(src, "train")), _class_files(os.path.join(src, "test"))
    if not train or sorted(train) != sorted(test):
        raise ValueError(f"{src} needs train/<class>/ and test/<class>/ with the same classes")
    rng = np.random.default_rng(seed)
    labeled, rest = [], []
    for name, files in train.items():
        order = rng.permutation(len(files))
        if len(files) <= labeled_per_class:
            raise ValueError(f"class {name!r} has {len(files)} train images")
        labeled += [(name, files[i]) for i in order[:labeled_per_class]]
        rest += [(name, files[i]) for i in order[labeled_per_class:]]
    if num_unlabeled > len(rest):
        raise ValueError(f"--num_unlabeled={num_unlabeled} but only {len(rest)} images remain")
    unlabeled = [rest[i] for i in rng.permutation(len(rest))[:num_unlabeled]]
    per_class = num_val // len(test)
    val = []
    for name, files in test.items():
        val += [(name, files[i]) for i in rng.permutation(len(files))[:per_class]]
    for name, path in labeled:
        _place(path, os.path.join(out, "labeled", name, os.path.basename(path)))
    for name, path in val:
        _place(path, os.path.join(out, "val", name, os.path.basename(path)))
    with open(os.path.join(out, "unlabeled_truth.csv.tmp"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for i, (name, path) in enumerate(unlabeled):
            rel = f"{i:06d}{os.path.splitext(path)[1]}"
            _place(path, os.path.join(out, "unlabeled", rel))
            writer.writerow([rel, name])
    os.replace(
        os.path.join(out, "unlabeled_truth.csv.tmp"), os.path.join(out, "unlabeled_truth.csv")
    )
    return {"labeled": len(labeled), "unlabeled": len(unlabeled), "val": len(val)}


def main(argv):
    del argv
    if not FLAGS.src or not FLAGS.out:
        sys.exit("--src and --out are required")
    try:
        counts = make_subset(
            FLAGS.src, FLAGS.out, FLAGS.labeled_per_class, FLAGS.num_unlabeled, FLAGS.num_val,
            FLAGS.seed,
        )
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {FLAGS.out}: {counts}")


if __name__ == "__main__":
    app.run(main)
