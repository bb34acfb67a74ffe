"""Plots a person looks at to understand a trained run (PNG files, headless matplotlib).

  python -m comatch_jax.commands.analyze --workdir=RUN --out=DIR       (or: comatch-analyze ...)

writes to DIR one PNG per figure function below, which says what it draws: training_curves,
predicted_distribution (the CoMatch-at-scale paper's Fig. 3), prediction_bias,
under_predicted_samples and over_predicted_samples (Fig. 5), confusion_matrix,
per_class_accuracy, feature_maps (Fig. 4), embedding_pca (or _tsne) and unknown_images. The
model is the run's EMA model, the one evaluation reports. At most --max_images images of each
set are scored (a seeded random subset), which keeps a CPU run to a minute or so. Files are
written whole.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from absl import flags, logging

from comatch_jax import atomic_files, cli, commands
from comatch_jax.commands import ema_model
from comatch_jax.core import unknown_scores
from comatch_jax.data import pipeline
from comatch_jax.trainer import saved_runs

FLAGS = flags.FLAGS

# Classes drawn in the sample grids, images per class, confusions per class shown in a row,
# feature-map layers and channels.
NUM_SAMPLE_CLASSES = 3
SAMPLES_PER_CLASS = 8
CONFUSIONS_PER_CLASS = 3
MAX_LAYERS = 6
CHANNELS_PER_LAYER = 8
# Points in the embedding plot (t-SNE is quadratic) and classes that still get tick labels.
MAX_EMBEDDING_POINTS = 3000
EXACT_TSNE_POINTS = 1000
MAX_NAMED_CLASSES = 30
MOST_UNKNOWN, UNKNOWN_RATE = 40, 0.05  # unlabeled images shown; the marked threshold's rate


def read_metrics(workdir: str) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """(training records, evaluation records) of the trainer's metrics.jsonl, sorted by
    step, without their `train/` and `eval/` prefixes ({'step', 'loss', ...}, {'step',
    'test_accuracy', ...}). Records of one step and kind are merged; where a step was logged
    twice (a resumed run) the later value wins. No file: ([], [])."""
    path = os.path.join(workdir, "metrics.jsonl")
    kinds: dict[str, dict[int, dict[str, float]]] = {"train": {}, "eval": {}}
    if os.path.exists(path):
        with open(path) as f:
            for record in (json.loads(line) for line in f if line.strip()):
                step = record.pop("step")
                for name, value in record.items():
                    kind, _, short = name.partition("/")
                    if kind in kinds:
                        kinds[kind].setdefault(step, {"step": step})[short] = value
    return tuple([records[s] for s in sorted(records)] for records in kinds.values())


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted] [num_classes, num_classes]."""
    flat = np.asarray(labels) * num_classes + np.asarray(predicted)
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Diagonal over row sums; NaN for a class with no images (not measured)."""
    totals = matrix.sum(axis=1)
    return np.diag(matrix) / np.where(totals > 0, totals, np.nan)


def prediction_bias(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Predicted minus true count per class: < 0 under-predicted, > 0 over-predicted."""
    count = lambda classes: np.bincount(classes, minlength=num_classes)
    return count(predicted) - count(labels)


def most_biased_classes(bias: np.ndarray, *, over: bool, count: int) -> np.ndarray:
    """The `count` (or fewer) classes most over-predicted (`over`: bias > 0, most positive
    first) or most under-predicted (bias < 0, most negative first), ranked by SIGNED bias;
    ties go to the lower class index. A class with bias 0 or of the other sign never appears."""
    signed = np.asarray(bias) if over else -np.asarray(bias)
    order = np.argsort(-signed, kind="stable")
    return order[signed[order] > 0][:count]


def confusion_samples(
    labels: np.ndarray,
    predicted: np.ndarray,
    c: int,
    *,
    over: bool,
    count: int = SAMPLES_PER_CLASS,
    max_confusions: int = CONFUSIONS_PER_CLASS,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Examples of class `c`'s most frequent confusions, and those confusions.

    The mistakes are images of class c predicted as another class (under-predicted view) or
    images of another class predicted as c (`over`). They are grouped by the other class;
    the `max_confusions` largest groups (ties: lower class index) share the `count` slots
    evenly, a group with too few images leaving its slots to the next ones; within a group
    images keep file order. Returns (indices into labels, grouped, largest confusion first)
    and [(other class, number of such mistakes)] of the groups shown.
    """
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    mistakes = (predicted == c) & (labels != c) if over else (labels == c) & (predicted != c)
    others = labels if over else predicted
    indices = np.flatnonzero(mistakes)
    classes, sizes = np.unique(others[indices], return_counts=True)
    ranked = np.lexsort((classes, -sizes))[:max_confusions]
    groups = [(int(classes[g]), int(sizes[g])) for g in ranked]
    quota = [0] * len(groups)
    for _ in range(min(count, sum(size for _, size in groups))):  # one slot at a time
        g = min(range(len(groups)), key=lambda g: (quota[g] >= groups[g][1], quota[g], g))
        quota[g] += 1
    chosen = [indices[others[indices] == other][:q] for (other, _), q in zip(groups, quota)]
    return (np.concatenate(chosen) if chosen else np.zeros(0, np.int64)), groups


def subset(num: int, max_images: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `max_images` of `num` items (all of them if few enough)."""
    if num <= max_images:
        return np.arange(num)
    return np.sort(np.random.default_rng(seed).choice(num, size=max_images, replace=False))


def project_2d(embeddings: np.ndarray, method: str, seed: int) -> np.ndarray:
    """[N, D] -> [N, 2] with scikit-learn's PCA (N >= 1) or t-SNE (N >= 2).

    PCA of fewer than 2 points (or dimensions) has fewer components: the missing coordinate
    is 0. t-SNE's perplexity is min(30, max(2, (N - 1) / 3), N - 1) (it must be below N)."""
    from sklearn import decomposition, manifold  # they set environment variables on import

    num = len(embeddings)
    if method == "pca":
        components = min(2, num, np.shape(embeddings)[1])
        with np.errstate(invalid="ignore", divide="ignore"):  # 1 point: no variance to explain
            points = decomposition.PCA(components, random_state=seed).fit_transform(embeddings)
        return np.pad(points, ((0, 0), (0, 2 - components)))
    perplexity = min(30.0, max(2.0, (num - 1) / 3), float(num - 1))
    # Exact gradients are faster than Barnes-Hut below about a thousand points.
    method = "exact" if num <= EXACT_TSNE_POINTS else "barnes_hut"
    tsne = manifold.TSNE(perplexity=perplexity, init="pca", method=method, random_state=seed)
    return tsne.fit_transform(embeddings)


def save(fig: Any, path: str) -> str:
    """Writes `fig` as a PNG to `path`, whole (temporary name, then rename), and closes it."""
    try:
        png = dict(format="png", dpi=110, bbox_inches="tight", facecolor="white")
        atomic_files.write_atomic(path, lambda temp: fig.savefig(temp, **png))
    finally:
        plt.close(fig)
    return path


def _class_ticks(ax: Any, order: Sequence[int], names: Sequence[str]) -> None:
    """Class names as x ticks when there are few classes, else only the rank."""
    if len(order) > MAX_NAMED_CLASSES:
        ax.set_xlabel("classes (by rank)")
    else:
        labels = [names[i] for i in order]
        ax.set_xticks(range(len(order)), labels, rotation=60, ha="right", fontsize=8)


def _per_class_axes(num_classes: int, title: str, ylabel: str) -> tuple[Any, Any]:
    """A figure wide enough for one bar per class."""
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * min(num_classes, 60) + 3), 4.5))
    ax.set(title=title, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


def _show_image(ax: Any, image: np.ndarray, title: str = "") -> None:
    gray = image.shape[-1] == 1
    ax.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None, vmin=0, vmax=255)
    ax.set(xticks=[], yticks=[])
    ax.set_title(title, fontsize=7)


def _note(ax: Any, text: str) -> None:  # centred in the axes
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, transform=ax.transAxes)


def training_curves_figure(
    training: list[dict], evaluation: list[dict], omit: Sequence[str] = ()
) -> Any:
    """Losses, mask rate / pseudo-label accuracy, learning rate and test accuracy vs step.

    Only logged values are drawn: a metric missing from a record is not a point (never 0),
    a metric missing from every record has no line, and the names in `omit` are not drawn
    (e.g. pseudo_label_acc of a run without ground truth for its unlabeled images)."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = [
        (training, ("loss", "loss_x", "loss_u", "loss_ctr"), "losses"),
        (training, ("mask_rate", "pseudo_label_acc"), "unlabeled batch"),
        (training, ("learning_rate",), "learning rate"),
        (evaluation, ("test_accuracy", "test_accuracy_raw"), "test accuracy"),
    ]
    names = {"test_accuracy": "EMA model", "test_accuracy_raw": "raw model"}
    for ax, (records, keys, title) in zip(axes.ravel(), panels):
        for key in (k for k in keys if k not in omit):
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                steps, values = zip(*points)
                label = names.get(key, key)
                if records is evaluation:
                    label += f" (last {100 * values[-1]:.1f}%)"
                ax.plot(steps, values, marker="o" if len(points) < 20 else None, ms=3, label=label)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
        else:
            _note(ax, "not logged")
    fig.suptitle("Training curves")
    fig.tight_layout()
    return fig


def predicted_distribution_figure(
    unlabeled: np.ndarray, test: np.ndarray, names: Sequence[str]
) -> Any:
    """Predicted-label counts on the unlabeled set and on the test set (`unlabeled`, `test`:
    predicted classes), each sorted by count, then each class's share of the predictions on
    one set against the other."""
    num_classes = len(names)
    fig, axes = plt.subplots(1, 3, figsize=(max(15, 0.5 * min(num_classes, 60) + 11), 4.5))
    shares = []
    for ax, predicted, name in zip(axes, (unlabeled, test), ("unlabeled", "test")):
        counts = np.bincount(predicted, minlength=num_classes)
        order = np.argsort(-counts, kind="stable")
        ax.bar(range(num_classes), counts[order], color="tab:blue")
        ax.axhline(len(predicted) / num_classes, color="tab:red", ls="--", lw=1, label="uniform")
        _class_ticks(ax, order, names)
        ax.set_title(f"Predicted labels, {name} set ({len(predicted)} images)")
        ax.set_ylabel("images predicted")
        shares.append(counts / max(len(predicted), 1))
    top = max(shares[0].max(), shares[1].max()) * 1.1
    axes[2].scatter(*shares, s=25, color="tab:blue")
    axes[2].plot([0, top], [0, top], color="gray", ls="--", lw=1, label="equal share")
    for c, name in enumerate(names if num_classes <= MAX_NAMED_CLASSES else ()):
        axes[2].annotate(name, (shares[0][c], shares[1][c]), fontsize=8)
    axes[2].set(xlim=(0, top), ylim=(0, top), title="Share of the predictions, per class")
    axes[2].set(xlabel="unlabeled set", ylabel="test set")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def prediction_bias_figure(labels: np.ndarray, predicted: np.ndarray, names: Sequence[str]) -> Any:
    """Predicted minus true test count per class, sorted: left under-, right over-predicted."""
    bias = prediction_bias(labels, predicted, len(names))
    order = np.argsort(bias, kind="stable")
    title = "Test set: under-predicted (orange) and over-predicted (green) classes"
    fig, ax = _per_class_axes(len(order), title, "predicted - true count")
    colors = np.where(bias[order] < 0, "tab:orange", "tab:green")
    ax.bar(range(len(order)), bias[order], color=colors)
    ax.axhline(0, color="black", lw=0.8)
    _class_ticks(ax, order, names)
    return fig


def class_samples_figure(
    images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, names: Sequence[str], over: bool
) -> Any:
    """A grid: one row per most under- (or `over`-) predicted class, with its mistakes.

    Classes are ranked by signed bias (most_biased_classes); only classes of that sign get a
    row (none: a one-line note). Under-predicted class c: test images of class c predicted as
    something else; over-predicted class c: test images of other classes predicted as c;
    both grouped by the most frequent confusions (confusion_samples), listed with their
    counts under the class name.
    """
    bias = prediction_bias(labels, predicted, len(names))
    order = most_biased_classes(bias, over=over, count=NUM_SAMPLE_CLASSES)
    kind, often = ("over", "at most") if over else ("under", "at least")
    if not len(order):
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        _note(ax, f"No {kind}-predicted class: every class is predicted {often} as often as it is.")
        return fig
    size = (1.3 * SAMPLES_PER_CLASS + 2.9, 1.6 * len(order) + 0.6)
    fig, axes = plt.subplots(len(order), SAMPLES_PER_CLASS + 1, figsize=size, squeeze=False)
    others, word = (labels, "from") if over else (predicted, "as")  # what a caption names
    for row, c in zip(axes, order):
        for ax in row:
            ax.axis("off")
        chosen, confusions = confusion_samples(labels, predicted, c, over=over)
        lines = [names[c], f"{abs(int(bias[c]))} too {'many' if over else 'few'}"]
        lines += [f"{word} {names[other]}: {n}" for other, n in confusions]
        row[0].text(0, 0.5, "\n".join(lines), fontsize=8, fontweight="bold", va="center")
        for ax, i in zip(row[1:], chosen):
            _show_image(ax, images[i], f"{'true' if over else 'as'} {names[others[i]]}")
        if not len(chosen):
            _note(row[1], "no mistakes")
    what = "images wrongly predicted as" if over else "images missed of"
    fig.suptitle(
        f"{kind.capitalize()}-predicted: {what} each class, most frequent confusions first "
        "(too many / few: predicted vs true count)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def confusion_matrix_figure(labels: np.ndarray, predicted: np.ndarray, names: Sequence[str]) -> Any:
    """Row-normalised confusion matrix (rows: true class), with counts for few classes."""
    matrix = confusion_matrix(labels, predicted, len(names))
    fractions = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = min(max(6, 0.55 * len(names) + 2), 20)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    fig.colorbar(ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1), label="fraction of the class")
    if len(names) <= MAX_NAMED_CLASSES:
        _class_ticks(ax, range(len(names)), names)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        for t, p in zip(*np.nonzero(matrix)):
            color = "white" if fractions[t, p] > 0.5 else "black"
            ax.text(p, t, matrix[t, p], ha="center", va="center", fontsize=7, color=color)
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(f"Confusion matrix, test set (accuracy {100 * accuracy:.1f}%)")
    return fig


def per_class_accuracy_figure(
    labels: np.ndarray, predicted: np.ndarray, names: Sequence[str]
) -> Any:
    """Test accuracy of every class, sorted, with the overall accuracy as a line. A class
    without test images is drawn last as a hatched grey bar marked "not measured"."""
    accuracy = per_class_accuracy(confusion_matrix(labels, predicted, len(names)))
    order = np.argsort(np.nan_to_num(accuracy, nan=2.0), kind="stable")  # not measured: last
    fig, ax = _per_class_axes(len(order), "Per-class test accuracy", "accuracy")
    ax.bar(range(len(order)), np.nan_to_num(accuracy[order]), color="tab:blue")
    unmeasured = np.flatnonzero(np.isnan(accuracy[order]))
    if len(unmeasured):
        label = "not measured (no test images)"
        ax.bar(unmeasured, 1.0, color="0.9", edgecolor="gray", hatch="//", label=label)
    overall = np.mean(np.asarray(labels) == np.asarray(predicted))
    ax.axhline(overall, color="tab:red", ls="--", lw=1, label=f"overall {100 * overall:.1f}%")
    _class_ticks(ax, order, names)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return fig


def feature_maps_figure(image: np.ndarray, maps: dict[str, np.ndarray], title: str) -> Any:
    """The input image, then the first channels of up to MAX_LAYERS convolution outputs
    (evenly spread over the encoder's depth), one row per layer."""
    names = list(maps)
    if len(names) > MAX_LAYERS:
        names = [names[i] for i in np.linspace(0, len(names) - 1, MAX_LAYERS).round().astype(int)]
    size = (1.4 * CHANNELS_PER_LAYER, 1.5 * (len(names) + 1))
    fig, axes = plt.subplots(len(names) + 1, CHANNELS_PER_LAYER, figsize=size, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    _show_image(axes[0, 0], image, "input")
    for row, name in zip(axes[1:], names):
        layer = maps[name]
        for channel, ax in enumerate(row[: layer.shape[-1]]):
            ax.imshow(layer[..., channel], cmap="viridis")
        row[0].set_title(f"{name} {'x'.join(map(str, layer.shape))}", fontsize=7, loc="left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def embedding_figure(
    points: np.ndarray, labels: np.ndarray, names: Sequence[str], method: str
) -> Any:
    """2-D projection of the embeddings (`method`: pca or tsne), coloured by true class."""
    num_classes = len(names)
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo")
    colors = cmap(labels / max(num_classes - 1, 1)) if num_classes > 20 else cmap(labels % cmap.N)
    fig, ax = plt.subplots(figsize=(8, 6.5))
    ax.scatter(points[:, 0], points[:, 1], c=colors, s=6, alpha=0.7, linewidths=0)
    if num_classes <= 20:
        dots = [plt.Line2D([], [], marker="o", ls="", color=cmap(c)) for c in range(num_classes)]
        ax.legend(dots, names, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(f"Embeddings of {len(points)} test images ({method.upper()}), by true class")
    ax.set(xticks=[], yticks=[])
    return fig


def unknown_images_figure(
    known: np.ndarray, pool: np.ndarray, images: np.ndarray, names: Sequence[str], score: str
) -> Any:
    """Where a person finds the junk of a folder. Top: histograms of the unknown scores of the
    evaluation images (all of known classes) and of the unlabeled pool, and the threshold that
    UNKNOWN_RATE of the former exceed. Below: the MOST_UNKNOWN pool `images` of highest score,
    highest first (8 a row), each with its score and the end of its name."""
    order = np.argsort(-pool, kind="stable")[:MOST_UNKNOWN]
    rows = -(-len(order) // 8)
    fig = plt.figure(figsize=(12, 1.7 * rows + 4))
    grid = fig.add_gridspec(rows + 2, 8)
    ax = fig.add_subplot(grid[:2, :])
    bins = np.histogram_bin_edges(np.r_[known, pool], bins=40)
    for scores, name in ((known, "evaluation"), (pool, "unlabeled")):
        ax.hist(scores, bins, density=True, alpha=0.5, label=f"{name} images ({len(scores)})")
    threshold = unknown_scores.threshold_for_rejection_rate(known, UNKNOWN_RATE)
    above = f"{100 * UNKNOWN_RATE:g}% of the evaluation, {100 * np.mean(pool > threshold):.0f}%"
    ax.axvline(threshold, color="tab:red", ls="--", lw=1, label=f"{above} of the unlabeled above")
    title = "Unknown scores, and the unlabeled images of highest score"
    ax.set(xlabel=f"unknown score ({score})", ylabel="density", title=title)
    ax.legend(fontsize=8)
    for n, i in enumerate(order):
        image_ax = fig.add_subplot(grid[2 + n // 8, n % 8])
        _show_image(image_ax, images[i], f"{pool[i]:.3g}\n{names[i][-20:]}")
    fig.tight_layout()
    return fig


def write_analysis(
    run: saved_runs.TrainedRun,
    data: pipeline.SemiSupervisedData,
    workdir: str,
    out_dir: str,
    *,
    max_images: int = 10000,
    image_index: int = 0,
    embedding: str = "pca",
    seed: int = 0,
    batch_size: int = 1000,
) -> list[str]:
    """Writes every plot of the module docstring to `out_dir`; returns the paths. `embedding`
    is pca or tsne. Raises ValueError (one line) for a bad option before writing anything."""
    num_test = len(data.test_labels)
    if max_images <= 0:
        raise ValueError(f"--max_images must be positive, got {max_images}.")
    if not 0 <= image_index < num_test:
        raise ValueError(f"--image_index must be in 0..{num_test - 1}, got {image_index}.")
    if embedding == "tsne" and min(num_test, max_images) < 2:
        raise ValueError(
            f"--embedding=tsne needs at least 2 test images, got {min(num_test, max_images)}; "
            "use --embedding=pca or a larger --max_images."
        )
    atomic_files.make_directory(out_dir, "--out directory")
    written = []
    write = lambda name, fig: written.append(save(fig, os.path.join(out_dir, name)))
    names = run.class_names

    training, evaluation = read_metrics(workdir)
    if training or evaluation:
        # Without ground truth for the unlabeled images (an image folder), a logged
        # pseudo-label accuracy measures nothing: it is not drawn.
        no_truth = len(data.unlabeled_labels) and np.all(np.asarray(data.unlabeled_labels) < 0)
        omit = ("pseudo_label_acc",) if no_truth else ()
        write("training_curves.png", training_curves_figure(training, evaluation, omit))
    else:
        logging.warning("No metrics.jsonl in %s: no training curves.", workdir)

    predict = ema_model.predictor(run, batch_size)
    scorer = ema_model.UnknownScorer(run, predict, data)
    pool_rows = subset(len(data.unlabeled_images), max_images, seed)
    pool_images = data.unlabeled_images[pool_rows]
    pool = predict(pool_images)
    unlabeled = np.argmax(pool["probs"], -1)
    rows = subset(num_test, max_images, seed)
    images, labels = data.test_images[rows], data.test_labels[rows]
    outputs = predict(images)
    test = (labels, np.argmax(outputs["probs"], -1), names)
    write("predicted_distribution.png", predicted_distribution_figure(unlabeled, test[1], names))
    write("prediction_bias.png", prediction_bias_figure(*test))
    write("under_predicted_samples.png", class_samples_figure(images, *test, over=False))
    write("over_predicted_samples.png", class_samples_figure(images, *test, over=True))
    write("confusion_matrix.png", confusion_matrix_figure(*test))
    write("per_class_accuracy.png", per_class_accuracy_figure(*test))

    image = data.test_images[image_index]
    title = f"Encoder feature maps, test image {image_index} (class {names[data.test_labels[image_index]]})"
    write("feature_maps.png", feature_maps_figure(image, ema_model.feature_maps(run, image), title))

    shown = subset(len(rows), MAX_EMBEDDING_POINTS, seed)
    points = project_2d(outputs["embedding"][shown], embedding, seed)
    write(f"embedding_{embedding}.png", embedding_figure(points, labels[shown], names, embedding))

    ids = data.unlabeled_ids[pool_rows]
    pool_names = [data.unlabeled_paths[i] if data.unlabeled_paths else f"id {i}" for i in ids]
    figure = (scorer(outputs), scorer(pool), pool_images, pool_names, scorer.score)
    write("unknown_images.png", unknown_images_figure(*figure))
    return written


def _analyze() -> None:
    matplotlib.use("Agg")  # headless: files only, no display needed
    run = saved_runs.load_run(FLAGS.workdir)
    names = ("max_images", "image_index", "embedding", "seed", "batch_size")
    options = {name: FLAGS[name].value for name in names}
    data = pipeline.prepare_data(run.config)
    for path in write_analysis(run, data, FLAGS.workdir, FLAGS.out, **options):
        logging.info("wrote %s", path)


main = cli.entry_point(_analyze)


def command() -> None:
    """comatch-analyze (setup.py): flags are defined here, so that importing defines none."""
    flags.DEFINE_string("workdir", None, "Workdir of a trained run.")
    flags.DEFINE_string("out", None, "Directory to write the PNG files to.")
    flags.DEFINE_integer("max_images", 10000, "Most images scored per set (unlabeled, test).")
    flags.DEFINE_integer("image_index", 0, "Test image whose feature maps are drawn.")
    flags.DEFINE_enum("embedding", "pca", ["pca", "tsne"], "2-D projection of the embeddings.")
    flags.DEFINE_integer("seed", 0, "Seed of the image subsets.")
    flags.DEFINE_integer("batch_size", 1000, "Images per inference batch.")
    flags.mark_flags_as_required(["workdir", "out"])
    commands.help_for_console_script(__name__)
    cli.run(main)


if __name__ == "__main__":
    command()
