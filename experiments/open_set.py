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
  # 3. the scores (inference only; reads the runs, writes REPORT_DIR/open_set.md and .json)
  python experiments/open_set.py --stage=score --out=/work/data/open_set \\
      --workdir=/work/data/open_set_runs --report_dir=/tmp/open_set_report

Every run uses its config file with the `folder_cpu` preset and --steps steps (the same for
every method). Never commit the folders: they are CIFAR-10's images.

Stage score takes every finished run (one with summary.json) under WORKDIR/pool<F>/ and its
EMA model: accuracy on val/, each unknown score of comatch_jax.core.unknown_scores on val/
(known, label 0) and OUT/unknown_test/ (unknown, label 1) with its AUROC (the kNN score's
references: the labeled/ images of the run's folder, embedded by the same model), and what
the model does with its unlabeled pool (unlabeled_truth.csv's `known` column): how many
known and unknown images pass the method's confidence threshold.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNOWN = ("bird", "cat", "deer", "dog", "frog", "horse")
UNKNOWN = ("airplane", "automobile", "ship", "truck")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")

flags.DEFINE_enum("stage", "build", ["build", "train", "score"], "What to do.")
flags.DEFINE_string(
    "src", "/work/data/cifar10_jpg", "CIFAR-10 as files: train/<class>/, test/<class>/."
)
flags.DEFINE_string(
    "out", "/work/data/open_set", "Where the folders are (stage build writes them)."
)
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
flags.DEFINE_string("report_dir", "/tmp/open_set_report", "Where stage score writes its report.")
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


# ----------------------------------------------------------------------------- stage score
# Table columns: score name -> how it is computed from a run's outputs.
SCORE_COLUMNS = {
    "1 - MSP": "max_softmax",
    "energy": "energy",
    "kNN embedding": "embedding",
    "kNN features": "features",
}
RUN_NAME = re.compile(r"(?P<method>.+)_seed(?P<seed>\d+)$")


def finished_runs(workdir: str) -> list[tuple[str, int, int, str]]:
    """(method (with tag), fraction, seed, run directory) of every run with summary.json
    under WORKDIR/pool<F>/, sorted."""
    found = []
    for pool in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []:
        if not re.fullmatch(r"pool\d+", pool):
            continue
        for name in sorted(os.listdir(os.path.join(workdir, pool))):
            match = RUN_NAME.fullmatch(name)
            directory = os.path.join(workdir, pool, name)
            if match and os.path.exists(os.path.join(directory, "summary.json")):
                found.append((match["method"], int(pool[4:]), int(match["seed"]), directory))
    return found


class ImageCache:
    """Decodes a folder's images once (uint8 [N, S, S, 3]) into a temporary directory."""

    def __init__(self, directory: str):
        self.directory, self.images = directory, {}

    def load(self, folder: str, image_size: int) -> tuple[list[str], np.ndarray]:
        """(sorted paths relative to `folder`, their images)."""
        from comatch_jax import data as datasets  # TensorFlow: file reading only

        key = (os.path.abspath(folder), image_size)
        if key not in self.images:
            paths, _ = datasets.list_image_files(folder)
            cache = os.path.join(self.directory, f"{len(self.images)}.npy")
            images, _ = datasets.decode_images_to_cache(paths, folder, image_size, cache, "fail")
            self.images[key] = (paths, np.asarray(images))
        return self.images[key]


def unknown_score_table(outputs: dict, labeled: dict) -> dict[str, np.ndarray]:
    """Each SCORE_COLUMNS score of the images whose model outputs are `outputs`; the kNN
    scores use the labeled images' outputs `labeled` as references."""
    from comatch_jax.core import unknown_scores

    scores = {}
    for column, kind in SCORE_COLUMNS.items():
        if kind in ("embedding", "features"):
            scores[column] = unknown_scores.nearest_labeled(outputs[kind], labeled[kind])
        else:
            scores[column] = unknown_scores.compute(kind, logits=outputs["logits"])
    return scores


def pseudo_label_rates(run, outputs: dict, known: np.ndarray) -> dict[str, float]:
    """What the model's pseudo-labelling does with known (`known` True) and unknown
    unlabeled images: the mean max softmax p, the fraction with max p >= 0.95, and the
    fraction the method itself would train on (FixMatch without DA: max p >= its threshold;
    CoMatch: the memory-smoothed q of the run's final queue, after distribution alignment
    with its final history, against comatch.threshold or the adaptive tau(argmax q)), and
    the share of unknown images among those it would train on (neither for other methods).
    The EMA model stands in for the online model that pseudo-labels during training;
    comatch.unknown_weighting is not applied."""
    from comatch_jax.core import losses

    config, state = run.config, run.state.method_state
    probs = np.exp(outputs["logits"] - outputs["logits"].max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if config.method == "comatch":
        options = config.comatch
        if options.distribution_alignment:
            history, count = np.asarray(state["da_history"]), int(state["da_count"])
            aligned = probs / np.maximum(history[: min(count, len(history))].mean(axis=0), 1e-12)
            probs = aligned / aligned.sum(axis=-1, keepdims=True)
        targets = np.asarray(
            losses.memory_smoothed_pseudo_labels(
                probs.astype(np.float32),
                outputs["embedding"],
                state["queue_embeddings"],
                state["queue_probs"],
                alpha=options.alpha,
                temperature=options.temperature,
            )
        )
        if options.threshold_rule == "freematch":
            class_probs = np.asarray(state["class_probs"])
            thresholds = class_probs / class_probs.max() * float(state["global_threshold"])
            passes = targets.max(axis=-1) >= thresholds[targets.argmax(axis=-1)]
        else:
            passes = targets.max(axis=-1) >= options.threshold
    elif config.method == "fixmatch" and not config.fixmatch.distribution_alignment:
        passes = probs.max(axis=-1) >= config.fixmatch.threshold
    else:
        passes = None
    rates = {}
    for part, rows in (("known", known), ("unknown", ~known)):
        rates[f"mean_max_p_{part}"] = float(probs[rows].max(axis=-1).mean()) if rows.any() else None
        rates[f"max_p_over_0.95_{part}"] = (
            float((probs[rows].max(axis=-1) >= 0.95).mean()) if rows.any() else None
        )
        if passes is not None and rows.any():
            rates[f"trained_on_{part}"] = float(passes[rows].mean())
    if passes is not None and passes.any():
        rates["unknown_share_of_trained_on"] = float((~known)[passes].mean())
    return rates


def score_run(run_dir: str, images: ImageCache) -> dict:
    """One run's record: accuracy on val/ (checked against summary.json), each score's
    AUROC (unknown_test/ against val/), and pseudo_label_rates on its unlabeled pool."""
    from sklearn.metrics import roc_auc_score

    from comatch_jax.commands import ema_model
    from comatch_jax.trainer import saved_runs

    run = saved_runs.load_run(run_dir)
    root, size = run.config.dataset.root, run.image_shape[0]
    predict = ema_model.predictor(run, progress=False)  # logits, embedding, features
    outputs = {}
    for part, folder in (
        ("val", os.path.join(root, "val")),
        ("unknown", os.path.join(FLAGS.out, "unknown_test")),
        ("labeled", os.path.join(root, "labeled")),
        ("unlabeled", os.path.join(root, "unlabeled")),
    ):
        paths, pixels = images.load(folder, size)
        outputs[part] = predict(pixels)
        outputs[part]["paths"] = paths
    classes = np.array([run.class_names.index(p.split(os.sep)[0]) for p in outputs["val"]["paths"]])
    accuracy = float(np.mean(outputs["val"]["logits"].argmax(axis=-1) == classes))
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    known_scores = unknown_score_table(outputs["val"], outputs["labeled"])
    unknown_scores = unknown_score_table(outputs["unknown"], outputs["labeled"])
    truth = os.path.join(root, "unlabeled_truth.csv")
    with open(truth) as f:
        known_of = {row["path"]: row["known"] == "1" for row in csv.DictReader(f)}
    known = np.array([known_of[p] for p in outputs["unlabeled"]["paths"]])
    labels = np.r_[np.zeros(len(classes)), np.ones(len(outputs["unknown"]["logits"]))]
    return {
        "run": run_dir,
        "accuracy": summary["test_accuracy"],
        "accuracy_recomputed": accuracy,
        "auroc": {
            column: float(
                roc_auc_score(labels, np.r_[known_scores[column], unknown_scores[column]])
            )
            for column in SCORE_COLUMNS
        },
        "pseudo_labels": pseudo_label_rates(run, outputs["unlabeled"], known),
    }


def _mean_std(values: list[float], scale: float = 100.0) -> str:
    values = [scale * v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f} ({len(values)})"


def results_table(records: dict[tuple[str, int], list[dict]], fractions: list[int]) -> str:
    """Markdown: per method, accuracy at each fraction, the drop from the first to the last,
    and each score's AUROC at every fraction (last first); mean ± std (sample) over seeds,
    the number of seeds in brackets when more than one."""
    methods = list(dict.fromkeys(method for method, _ in records))
    low, high = fractions[0], fractions[-1]
    header = [f"accuracy {f} %" for f in fractions] + [f"drop {low} -> {high} %"]
    header += [f"AUROC {c} ({high} / {low} %)" for c in SCORE_COLUMNS]
    lines = ["| method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for method in methods:
        runs = {f: records.get((method, f), []) for f in fractions}
        cells = [_mean_std([r["accuracy"] for r in runs[f]]) for f in fractions]
        pairs = _seed_pairs(runs[low], runs[high])
        cells.append(_mean_std([a - b for a, b in pairs]) if pairs else "-")
        for column in SCORE_COLUMNS:
            cells.append(
                " / ".join(_mean_std([r["auroc"][column] for r in runs[f]]) for f in (high, low))
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seed_pairs(low: list[dict], high: list[dict]) -> list[tuple[float, float]]:
    """(accuracy at the low fraction, at the high one) of the seeds run at both."""
    by_seed = {r["seed"]: r["accuracy"] for r in low}
    return [(by_seed[r["seed"]], r["accuracy"]) for r in high if r["seed"] in by_seed]


def pseudo_label_table(records: dict[tuple[str, int], list[dict]]) -> str:
    """Markdown: per run at a pool with unknown images, pseudo_label_rates in percent."""
    columns = [
        ("mean max p known / unknown", "mean_max_p"),
        ("max p >= 0.95 known / unknown", "max_p_over_0.95"),
        ("trained on known / unknown", "trained_on"),
    ]
    lines = [
        "| run | " + " | ".join(c for c, _ in columns) + " | unknown share of trained-on |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for (method, fraction), runs in records.items():
        for r in runs:
            rates = r["pseudo_labels"]
            if rates.get("mean_max_p_unknown") is None:
                continue
            cells = [
                " / ".join(_mean_std([rates.get(f"{key}_{part}")]) for part in ("known", "unknown"))
                for _, key in columns
            ]
            cells.append(_mean_std([rates.get("unknown_share_of_trained_on")]))
            lines.append(
                f"| {method} pool{fraction} seed {r['seed']} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def score_all(workdir: str, report_dir: str) -> str:
    """Scores every finished run; writes REPORT_DIR/open_set.json and open_set.md; returns
    the Markdown."""
    records: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as cache:
        images = ImageCache(cache)
        for method, fraction, seed, directory in finished_runs(workdir):
            print(f"scoring {directory}", flush=True)
            record = {**score_run(directory, images), "seed": seed}
            records.setdefault((method, fraction), []).append(record)
    if not records:
        raise ValueError(f"no finished run (with summary.json) under {workdir}/pool<F>/")
    fractions = sorted({fraction for _, fraction in records})
    markdown = (
        results_table(records, fractions)
        + "\n\nPseudo-labels of the unlabeled pool (EMA model; percent of the pool's known / "
        "unknown images):\n\n" + pseudo_label_table(records) + "\n"
    )
    os.makedirs(report_dir, exist_ok=True)
    with open(os.path.join(report_dir, "open_set.json"), "w") as f:
        json.dump({f"{m}/pool{fr}": runs for (m, fr), runs in records.items()}, f, indent=1)
    with open(os.path.join(report_dir, "open_set.md"), "w") as f:
        f.write(markdown)
    return markdown


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
    if FLAGS.stage == "score":
        print(score_all(FLAGS.workdir, FLAGS.report_dir))
        return
    for seed in [int(s) for s in FLAGS.seeds]:
        for fraction in fractions:
            for method in FLAGS.methods:
                print(f"done: {train(method, fraction, seed)}", flush=True)


if __name__ == "__main__":
    app.run(main)
