"""experiments/open_set.py: its folders from a tiny CIFAR-like tree, and stage score on a
tiny trained run (the benchmark itself is not run here)."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from comatch_jax.trainer import train

from train_test import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNOWN = ("bird", "cat", "deer", "dog", "frog", "horse")
UNKNOWN = ("airplane", "automobile", "ship", "truck")


def _open_set(*args):
    return subprocess.run(
        [sys.executable, "experiments/open_set.py", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
    )


def _fake_cifar(src, train_per_class=12, test_per_class=6):
    """src/{train,test}/<class>/<class><i>.png: 8x8 images, one grey level per class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(KNOWN + UNKNOWN):
            os.makedirs(src / split / name)
            for i in range(count):
                pixels = rng.integers(0, 20, (8, 8, 3)) + 20 * c
                Image.fromarray(pixels.astype(np.uint8)).save(src / split / name / f"{name}{i}.png")


def _inodes(folder):
    return {
        os.stat(os.path.join(d, f)).st_ino: (os.path.basename(d), f)
        for d, _, files in os.walk(folder)
        for f in files
    }


def _build(tmp_path):
    _fake_cifar(tmp_path / "src")
    out = tmp_path / "open_set"
    result = _open_set(
        "--stage=build",
        f"--src={tmp_path / 'src'}",
        f"--out={out}",
        "--labeled_per_class=2",
        "--pool_size=20",
        "--fractions=0,50",
        "--test_per_class=3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_build_writes_pools_that_differ_only_by_their_unknown_images(tmp_path):
    out = _build(tmp_path)
    truth = {}
    for fraction in (0, 50):
        root = out / f"pool{fraction}"
        assert sorted(os.listdir(root / "labeled")) == sorted(KNOWN)
        assert all(len(os.listdir(root / "labeled" / c)) == 2 for c in KNOWN)
        assert sorted(os.listdir(root / "val")) == sorted(KNOWN)
        assert all(len(os.listdir(root / "val" / c)) == 3 for c in KNOWN)
        with open(root / "unlabeled_truth.csv") as f:
            rows = list(csv.DictReader(f))
        assert sorted(r["path"] for r in rows) == sorted(os.listdir(root / "unlabeled"))
        assert len(rows) == 20
        assert all(r["known"] == str(int(r["label"] in KNOWN)) for r in rows)
        assert sum(r["known"] == "0" for r in rows) == 20 * fraction // 100
        truth[fraction] = rows
        # labeled, unlabeled and val images are different photos (hard links: same inode)
        labeled, val = _inodes(root / "labeled"), _inodes(root / "val")
        unlabeled = _inodes(root / "unlabeled")
        assert not set(labeled) & set(unlabeled) and not set(labeled) & set(val)
        assert all(name.startswith(KNOWN) for _, name in val.values())
    # the pools share labeled/ and val/; pool50's known unlabeled images are pool0's first ten
    assert _inodes(out / "pool0" / "labeled") == _inodes(out / "pool50" / "labeled")
    assert _inodes(out / "pool0" / "val") == _inodes(out / "pool50" / "val")
    known0 = set(_inodes(out / "pool0" / "unlabeled"))
    pool50 = _inodes(out / "pool50" / "unlabeled")
    known50 = {
        i
        for i, (_, f) in pool50.items()
        if f in {r["path"] for r in truth[50] if r["known"] == "1"}
    }
    assert len(known50) == 10 and known50 <= known0
    unknown_test = _inodes(out / "unknown_test")
    assert sorted(os.listdir(out / "unknown_test")) == sorted(UNKNOWN)
    assert len(unknown_test) == 18  # as many as val/
    assert all(name.startswith(UNKNOWN) for _, name in unknown_test.values())
    # a second build into the same folder is refused with one line
    again = _open_set("--stage=build", f"--src={tmp_path / 'src'}", f"--out={out}")
    assert again.returncode == 1 and again.stderr.strip().splitlines() == [
        f"error: {out} exists; choose a new --out"
    ]


def test_score_reports_accuracy_aurocs_and_pseudo_labels_of_finished_runs(tmp_path):
    out = _build(tmp_path)
    runs = tmp_path / "runs"
    config = tiny_config("comatch")
    config.dataset.name = "image_folder"
    config.dataset.root = str(out / "pool50")
    config.dataset.image_size = 8
    config.dataset.mean, config.dataset.std = (0.3, 0.3, 0.3), (0.2, 0.2, 0.2)
    config.num_steps = config.checkpoint_every = config.eval_every = 2
    train.train_and_evaluate(config, str(runs / "pool50" / "comatch_seed0"))
    (runs / "pool50" / "unfinished_seed0").mkdir()  # no summary.json: not scored

    result = _open_set(
        "--stage=score", f"--out={out}", f"--workdir={runs}", f"--report_dir={tmp_path / 'report'}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((tmp_path / "report" / "open_set.json").read_text())
    assert list(records) == ["comatch/pool50"]
    (record,) = records["comatch/pool50"]
    assert record["accuracy_recomputed"] == pytest.approx(record["accuracy"], abs=1e-9)
    assert set(record["auroc"]) == {"1 - MSP", "energy", "kNN embedding", "kNN features"}
    assert all(0.0 <= v <= 1.0 for v in record["auroc"].values())
    rates = record["pseudo_labels"]
    assert rates["trained_on_known"] == rates["trained_on_unknown"] == 1.0  # threshold 0
    assert rates["unknown_share_of_trained_on"] == pytest.approx(0.5)
    table = (tmp_path / "report" / "open_set.md").read_text()
    assert "| comatch | " in table and "| comatch pool50 seed 0 | " in table
