"""Plots a person looks at to understand a trained run (PNG files, headless matplotlib).

  python -m comatch_jax.commands.analyze --workdir=RUN --out=DIR

writes to DIR:
  training_curves.png          losses, mask rate, pseudo-label accuracy, test accuracy vs step
  predicted_distribution.png   predicted-label counts on the unlabeled set and on the test set,
                               each sorted by count, side by side (CoMatch-at-scale paper, Fig. 3)
  predicted_counts_scatter.png per-class predicted share, unlabeled vs test
  prediction_bias.png          predicted minus true count per test class, sorted
  under_predicted_samples.png  the most under-predicted classes (most negative predicted minus
                               true count): their test images the model missed, grouped by
                               its most frequent confusions (Fig. 5)
  over_predicted_samples.png   the most over-predicted classes (most positive bias): test images
                               wrongly put there, grouped by their most frequent true classes
  confusion_matrix.png         row-normalised confusion matrix on the test set
  per_class_accuracy.png       test accuracy of every class
  feature_maps.png             encoder convolution outputs for one test image (Fig. 4)
  embedding_pca.png            2-D PCA (or t-SNE) of the CoMatch embeddings, coloured by class
The model is the run's EMA model, the one evaluation reports. At most --max_images images of
each set are scored (a seeded random subset), which keeps a CPU run to a minute or so.
A metric the run did not log (e.g. pseudo_label_acc of an image folder, which has no ground
truth for its unlabeled images) is left out of the curves, never drawn as 0. Every file is
written whole (a temporary file renamed when complete, comatch_jax.atomic_files).
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from absl import flags, logging

from comatch_jax import atomic_files, cli
from comatch_jax.core import inference
from comatch_jax.trainer import saved_runs as runs
from comatch_jax.data import pipeline as training_data

# The trainer's metrics file (comatch_jax.trainer.metric_writing writes it; read here without clu).
METRICS_JSONL = "metrics.jsonl"

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


# --------------------------------------------------------------------------- computations


def read_metrics(workdir: str) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """(training records, evaluation records) of metrics.jsonl, sorted by step, with the
    `train/` and `eval/` prefixes removed ({'step', 'loss', ...}, {'step', 'test_accuracy',
    ...}). Records of one step and kind are merged; a resumed run may log a step twice: the
    later value wins. Unprefixed records of runs before the prefixes are read too."""
    path = os.path.join(workdir, METRICS_JSONL)
    if not os.path.exists(path):
        return [], []
    kinds: dict[str, dict[int, dict[str, float]]] = {"train": {}, "eval": {}}
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            step = record.pop("step")
            for name, value in record.items():
                kind, _, short = name.rpartition("/")
                if not kind:  # an unprefixed record (older runs)
                    kind = "eval" if "test_accuracy" in record else "train"
                if kind in kinds:
                    kinds[kind].setdefault(step, {"step": step})[short] = value
    training, evaluation = kinds["train"], kinds["eval"]
    return [training[s] for s in sorted(training)], [evaluation[s] for s in sorted(evaluation)]


def class_counts(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """How many entries of `classes` fall in each class [num_classes]."""
    return np.bincount(np.asarray(classes), minlength=num_classes)[:num_classes]


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted] [num_classes, num_classes]."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predicted)), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Diagonal over row sums; NaN for a class with no images."""
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / totals, np.nan)


def prediction_bias(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Predicted minus true count per class: < 0 under-predicted, > 0 over-predicted."""
    return class_counts(predicted, num_classes) - class_counts(labels, num_classes)


def most_biased_classes(bias: np.ndarray, *, over: bool, count: int) -> np.ndarray:
    """The `count` (or fewer) classes most over-predicted (`over`: bias > 0, most positive
    first) or most under-predicted (bias < 0, most negative first), ranked by SIGNED bias;
    ties go to the lower class index. A class with bias 0 or of the other sign never appears."""
    bias = np.asarray(bias)
    signed = bias if over else -bias
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
    left = count
    while left > 0 and any(q < size for q, (_, size) in zip(quota, groups)):
        for g, (_, size) in enumerate(groups):
            if left > 0 and quota[g] < size:
                quota[g] += 1
                left -= 1
    chosen = [indices[others[indices] == other][:q] for (other, _), q in zip(groups, quota)]
    return (np.concatenate(chosen) if chosen else np.zeros(0, np.int64)), groups


def subset(num: int, max_images: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `max_images` of `num` items (all of them if few enough)."""
    if num <= max_images:
        return np.arange(num)
    return np.sort(np.random.default_rng(seed).choice(num, size=max_images, replace=False))


# ------------------------------------------------------------------------------- plotting


def _save(fig: Any, path: str) -> str:
    """Writes `fig` as a PNG to `path`, whole (temporary name, then rename), and closes it."""
    try:
        atomic_files.write_atomic(
            path,
            lambda temp: fig.savefig(
                temp, format="png", dpi=110, bbox_inches="tight", facecolor="white"
            ),
        )
    finally:
        plt.close(fig)
    return path


def _class_ticks(ax: Any, order: np.ndarray, class_names: Sequence[str], axis: str = "x") -> None:
    """Class names as ticks when there are few classes, else only the rank."""
    if len(order) > MAX_NAMED_CLASSES:
        getattr(ax, f"set_{axis}label")("classes (by rank)")
        return
    positions = np.arange(len(order))
    names = [class_names[i] for i in order]
    if axis == "x":
        ax.set_xticks(positions, names, rotation=60, ha="right", fontsize=8)
    else:
        ax.set_yticks(positions, names, fontsize=8)


def _show_image(ax: Any, image: np.ndarray) -> None:
    image = np.asarray(image)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_training_curves(
    training: list[dict], evaluation: list[dict], path: str, omit: Sequence[str] = ()
) -> str:
    """Losses, mask rate / pseudo-label accuracy, learning rate and test accuracy vs step.

    Only logged values are drawn: a metric missing from a record is not a point (never 0),
    a metric missing from every record has no line, and the names in `omit` are not drawn
    (e.g. pseudo_label_acc of a run without ground truth for its unlabeled images)."""
    return _save(training_curves_figure(training, evaluation, omit), path)


def training_curves_figure(
    training: list[dict], evaluation: list[dict], omit: Sequence[str] = ()
) -> Any:
    """The figure of plot_training_curves (one line per logged metric, labelled by name)."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = [
        (axes[0, 0], training, ("loss", "loss_x", "loss_u", "loss_ctr"), "losses"),
        (axes[0, 1], training, ("mask_rate", "pseudo_label_acc"), "unlabeled batch"),
        (axes[1, 0], training, ("learning_rate",), "learning rate"),
        (axes[1, 1], evaluation, ("test_accuracy", "test_accuracy_raw"), "test accuracy"),
    ]
    for ax, records, keys, title in panels:
        for key in keys:
            if key in omit:
                continue
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                steps, values = zip(*points)
                label = {"test_accuracy": "EMA model", "test_accuracy_raw": "raw model"}.get(
                    key, key
                )
                if records is evaluation:
                    label += f" (last {100 * values[-1]:.1f}%)"
                ax.plot(steps, values, marker="o" if len(points) < 20 else None, ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("Training curves")
    fig.tight_layout()
    return fig


def plot_predicted_distribution(
    unlabeled_predicted: np.ndarray,
    test_predicted: np.ndarray,
    class_names: Sequence[str],
    path: str,
) -> str:
    """Predicted-label counts, unlabeled set and test set side by side, each sorted by count."""
    num_classes = len(class_names)
    fig, axes = plt.subplots(1, 2, figsize=(max(10, 0.5 * min(num_classes, 60) + 6), 4.5))
    for ax, predicted, title in [
        (axes[0], unlabeled_predicted, "unlabeled set"),
        (axes[1], test_predicted, "test set"),
    ]:
        counts = class_counts(predicted, num_classes)
        order = np.argsort(-counts, kind="stable")
        ax.bar(np.arange(num_classes), counts[order], color="tab:blue")
        ax.axhline(len(predicted) / num_classes, color="tab:red", ls="--", lw=1, label="uniform")
        _class_ticks(ax, order, class_names)
        ax.set_ylabel("images predicted")
        ax.set_title(f"Predicted labels, {title} ({len(predicted)} images)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_predicted_counts_scatter(
    unlabeled_predicted: np.ndarray,
    test_predicted: np.ndarray,
    class_names: Sequence[str],
    path: str,
) -> str:
    """Each class's share of predictions on the unlabeled set against the test set."""
    num_classes = len(class_names)
    unlabeled_share = class_counts(unlabeled_predicted, num_classes) / max(
        len(unlabeled_predicted), 1
    )
    test_share = class_counts(test_predicted, num_classes) / max(len(test_predicted), 1)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(unlabeled_share, test_share, s=25, color="tab:blue")
    top = max(unlabeled_share.max(), test_share.max()) * 1.1
    ax.plot([0, top], [0, top], color="gray", ls="--", lw=1, label="equal share")
    if num_classes <= MAX_NAMED_CLASSES:
        for c in range(num_classes):
            ax.annotate(
                class_names[c],
                (unlabeled_share[c], test_share[c]),
                fontsize=8,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("share of predictions, unlabeled set")
    ax.set_ylabel("share of predictions, test set")
    ax.set_title("Predicted class shares: unlabeled vs test")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_prediction_bias(
    labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str], path: str
) -> str:
    """Predicted minus true test count per class, sorted: left under-, right over-predicted."""
    bias = prediction_bias(labels, predicted, len(class_names))
    order = np.argsort(bias, kind="stable")
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * min(len(order), 60) + 3), 4.5))
    colors = np.where(bias[order] < 0, "tab:orange", "tab:green")
    ax.bar(np.arange(len(order)), bias[order], color=colors)
    ax.axhline(0, color="black", lw=0.8)
    _class_ticks(ax, order, class_names)
    ax.set_ylabel("predicted - true count")
    ax.set_title("Test set: under-predicted (orange) and over-predicted (green) classes")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_class_samples(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    class_names: Sequence[str],
    path: str,
    *,
    over: bool,
) -> str:
    """A grid: one row per most under- (or over-) predicted class, with its mistakes.

    Classes are ranked by signed bias (most_biased_classes); only classes of that sign get a
    row (none: a one-line note). Under-predicted class c: test images of class c predicted as
    something else; over-predicted class c: test images of other classes predicted as c;
    both grouped by the most frequent confusions (confusion_samples), listed with their
    counts under the class name.
    """
    bias = prediction_bias(labels, predicted, len(class_names))
    order = most_biased_classes(bias, over=over, count=NUM_SAMPLE_CLASSES)
    kind = (
        "Over-predicted: images wrongly predicted as"
        if over
        else "Under-predicted: images missed of"
    )
    if not len(order):
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            f"No {'over' if over else 'under'}-predicted class: every class is predicted "
            f"{'at most' if over else 'at least'} as often as it occurs.",
            ha="center",
            va="center",
            fontsize=9,
            transform=ax.transAxes,
        )
        return _save(fig, path)
    fig, axes = plt.subplots(
        len(order),
        SAMPLES_PER_CLASS + 1,
        figsize=(1.3 * (SAMPLES_PER_CLASS + 1) + 1.6, 1.6 * len(order) + 0.6),
        squeeze=False,
    )
    for row, c in enumerate(order):
        chosen, confusions = confusion_samples(labels, predicted, c, over=over)
        header = axes[row, 0]
        header.axis("off")
        word = "from" if over else "as"
        top = "\n".join(f"{word} {class_names[o]}: {n}" for o, n in confusions)
        header.text(
            0.0,
            0.5,
            f"{class_names[c]}\n{abs(int(bias[c]))} too {'many' if over else 'few'}\n{top}",
            fontsize=8,
            va="center",
            ha="left",
            transform=header.transAxes,
            fontweight="bold",
        )
        for col in range(SAMPLES_PER_CLASS):
            ax = axes[row, col + 1]
            if col < len(chosen):
                i = chosen[col]
                _show_image(ax, images[i])
                caption = (
                    f"true {class_names[labels[i]]}" if over else f"as {class_names[predicted[i]]}"
                )
                ax.set_title(caption, fontsize=7)
            else:
                ax.axis("off")
                if col == 0:
                    ax.text(
                        0.5,
                        0.5,
                        "no mistakes",
                        ha="center",
                        va="center",
                        fontsize=8,
                        transform=ax.transAxes,
                    )
    fig.suptitle(
        f"{kind} each class, most frequent confusions first (too many / few: predicted vs "
        "true count)",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(
    labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str], path: str
) -> str:
    """Row-normalised confusion matrix (rows: true class), with counts for few classes."""
    num_classes = len(class_names)
    matrix = confusion_matrix(labels, predicted, num_classes)
    rows = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = min(max(6, 0.55 * num_classes + 2), 20)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    shown = ax.imshow(matrix / rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, label="fraction of the true class")
    if num_classes <= MAX_NAMED_CLASSES:
        order = np.arange(num_classes)
        _class_ticks(ax, order, class_names, "x")
        _class_ticks(ax, order, class_names, "y")
        for t in range(num_classes):
            for p in range(num_classes):
                if matrix[t, p]:
                    dark = matrix[t, p] / rows[t, 0] > 0.5
                    ax.text(
                        p,
                        t,
                        str(matrix[t, p]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if dark else "black",
                    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"Confusion matrix, test set (accuracy {100 * accuracy:.1f}%)")
    return _save(fig, path)


def plot_per_class_accuracy(
    labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str], path: str
) -> str:
    """Test accuracy of every class, sorted, with the overall accuracy as a line."""
    accuracy = per_class_accuracy(confusion_matrix(labels, predicted, len(class_names)))
    order = np.argsort(np.nan_to_num(accuracy, nan=-1.0), kind="stable")
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * min(len(order), 60) + 3), 4.5))
    ax.bar(np.arange(len(order)), np.nan_to_num(accuracy[order]), color="tab:blue")
    overall = np.mean(np.asarray(labels) == np.asarray(predicted))
    ax.axhline(overall, color="tab:red", ls="--", lw=1, label=f"overall {100 * overall:.1f}%")
    _class_ticks(ax, order, class_names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("Per-class test accuracy")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_feature_maps(image: np.ndarray, maps: dict[str, np.ndarray], title: str, path: str) -> str:
    """The input image, then the first channels of up to MAX_LAYERS convolution outputs
    (evenly spread over the encoder's depth), one row per layer."""
    names = list(maps)
    if len(names) > MAX_LAYERS:
        names = [names[i] for i in np.linspace(0, len(names) - 1, MAX_LAYERS).round().astype(int)]
    fig, axes = plt.subplots(
        len(names) + 1,
        CHANNELS_PER_LAYER,
        figsize=(1.4 * CHANNELS_PER_LAYER, 1.5 * (len(names) + 1)),
        squeeze=False,
    )
    for ax in axes.ravel():
        ax.axis("off")
    _show_image(axes[0, 0], image)
    axes[0, 0].axis("on")
    axes[0, 0].set_title("input", fontsize=8)
    for row, name in enumerate(names, start=1):
        layer = maps[name]
        for channel in range(min(CHANNELS_PER_LAYER, layer.shape[-1])):
            ax = axes[row, channel]
            ax.axis("on")
            ax.imshow(layer[..., channel], cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if channel == 0:
                ax.set_ylabel(
                    f"{name}\n{layer.shape[0]}x{layer.shape[1]}x{layer.shape[2]}", fontsize=7
                )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def project_2d(embeddings: np.ndarray, method: str, seed: int) -> np.ndarray:
    """[N, D] -> [N, 2] with scikit-learn's PCA or t-SNE.

    PCA of fewer than 2 points (or dimensions) has fewer components: the missing coordinate
    is 0. t-SNE's perplexity is min(30, max(2, (N - 1) / 3), N - 1) (scikit-learn needs it
    below N); it needs at least 2 points. Raises ValueError (one line) otherwise.
    """
    embeddings = np.asarray(embeddings)
    num = len(embeddings)
    if method == "pca":
        from sklearn.decomposition import PCA

        if num == 0:
            raise ValueError("No embeddings to project; analyze needs at least one test image.")
        components = min(2, num, embeddings.shape[1])
        with np.errstate(invalid="ignore", divide="ignore"):  # 1 point: no variance to explain
            points = PCA(n_components=components, random_state=seed).fit_transform(embeddings)
        return np.pad(points, ((0, 0), (0, 2 - components)))
    if method == "tsne":
        from sklearn.manifold import TSNE

        if num < 2:
            raise ValueError(
                f"--embedding=tsne needs at least 2 test images, got {num}; use "
                "--embedding=pca or a larger --max_images."
            )
        perplexity = min(30.0, max(2.0, (num - 1) / 3), float(num - 1))
        # Exact gradients are faster than Barnes-Hut below about a thousand points.
        method = "exact" if num <= EXACT_TSNE_POINTS else "barnes_hut"
        tsne = TSNE(
            n_components=2, perplexity=perplexity, init="pca", method=method, random_state=seed
        )
        return tsne.fit_transform(embeddings)
    raise ValueError(f"Unknown embedding projection {method!r}; expected pca or tsne.")


def plot_embedding(
    points: np.ndarray, labels: np.ndarray, class_names: Sequence[str], method: str, path: str
) -> str:
    """2-D projection of the embeddings, coloured by true class."""
    num_classes = len(class_names)
    fig, ax = plt.subplots(figsize=(8, 6.5))
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo")
    colors = cmap(labels / max(num_classes - 1, 1)) if num_classes > 20 else cmap(labels % cmap.N)
    ax.scatter(points[:, 0], points[:, 1], c=colors, s=6, alpha=0.7, linewidths=0)
    if num_classes <= 20:
        handles = [
            plt.Line2D([], [], marker="o", ls="", color=cmap(c % cmap.N), label=class_names[c])
            for c in range(num_classes)
        ]
        ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(
        f"Embeddings of {len(points)} test images ({method.upper()}), coloured by true class"
    )
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


# -------------------------------------------------------------------------------- driver


def define_flags() -> None:
    """The command-line flags (defined only when run as a program, so importing is free)."""
    flags.DEFINE_string("workdir", None, "Workdir of a trained run.")
    flags.DEFINE_string("out", None, "Directory to write the PNG files to.")
    flags.DEFINE_integer("max_images", 10000, "Most images scored per set (unlabeled, test).")
    flags.DEFINE_integer("image_index", 0, "Test image whose feature maps are drawn.")
    flags.DEFINE_enum("embedding", "pca", ["pca", "tsne"], "2-D projection of the embeddings.")
    flags.DEFINE_integer("seed", 0, "Seed of the image subsets.")
    flags.DEFINE_integer("batch_size", 1000, "Images per inference batch.")
    flags.mark_flags_as_required(["workdir", "out"])


def write_analysis(
    run: runs.TrainedRun,
    data: training_data.SemiSupervisedData,
    workdir: str,
    out_dir: str,
    *,
    max_images: int = 10000,
    image_index: int = 0,
    embedding: str = "pca",
    seed: int = 0,
    batch_size: int = 1000,
) -> list[str]:
    """Writes every plot of the module docstring to `out_dir`; returns the paths."""
    if max_images <= 0:
        raise ValueError(f"--max_images must be positive, got {max_images}.")
    if not 0 <= image_index < len(data.test_labels):
        raise ValueError(
            f"--image_index must be in 0..{len(data.test_labels) - 1} (a test image), got {image_index}."
        )
    if embedding == "tsne" and min(len(data.test_labels), max_images) < 2:
        raise ValueError(
            f"--embedding=tsne needs at least 2 test images, got "
            f"{min(len(data.test_labels), max_images)}; use --embedding=pca or a larger "
            "--max_images."
        )
    atomic_files.make_directory(out_dir, "--out directory")
    path = lambda name: os.path.join(out_dir, name)
    names = run.class_names
    written = []

    training, evaluation = read_metrics(workdir)
    if training or evaluation:
        # Without ground truth for the unlabeled images (an image folder) a logged
        # pseudo-label accuracy is no measurement (older runs logged it as 0): not drawn.
        no_truth = len(data.unlabeled_labels) and np.all(np.asarray(data.unlabeled_labels) < 0)
        omit = ("pseudo_label_acc",) if no_truth else ()
        written.append(
            plot_training_curves(training, evaluation, path("training_curves.png"), omit)
        )
    else:
        logging.warning("No metrics.jsonl in %s: no training curves.", workdir)

    unlabeled_rows = subset(len(data.unlabeled_images), max_images, seed)
    test_rows = subset(len(data.test_labels), max_images, seed)
    unlabeled_predicted = np.argmax(
        inference.predict(run, data.unlabeled_images[unlabeled_rows], batch_size)["probs"], -1
    )
    test_outputs = inference.predict(run, data.test_images[test_rows], batch_size)
    test_predicted = np.argmax(test_outputs["probs"], -1)
    test_images, test_labels = data.test_images[test_rows], data.test_labels[test_rows]

    written += [
        plot_predicted_distribution(
            unlabeled_predicted, test_predicted, names, path("predicted_distribution.png")
        ),
        plot_predicted_counts_scatter(
            unlabeled_predicted, test_predicted, names, path("predicted_counts_scatter.png")
        ),
        plot_prediction_bias(test_labels, test_predicted, names, path("prediction_bias.png")),
        plot_class_samples(
            test_images,
            test_labels,
            test_predicted,
            names,
            path("under_predicted_samples.png"),
            over=False,
        ),
        plot_class_samples(
            test_images,
            test_labels,
            test_predicted,
            names,
            path("over_predicted_samples.png"),
            over=True,
        ),
        plot_confusion_matrix(test_labels, test_predicted, names, path("confusion_matrix.png")),
        plot_per_class_accuracy(test_labels, test_predicted, names, path("per_class_accuracy.png")),
    ]

    image = data.test_images[image_index]
    title = f"Encoder feature maps, test image {image_index} (class {names[data.test_labels[image_index]]})"
    written.append(
        plot_feature_maps(
            image, inference.feature_maps(run, image), title, path("feature_maps.png")
        )
    )

    shown = subset(len(test_rows), MAX_EMBEDDING_POINTS, seed)
    points = project_2d(test_outputs["embedding"][shown], embedding, seed)
    written.append(
        plot_embedding(
            points, test_labels[shown], names, embedding, path(f"embedding_{embedding}.png")
        )
    )
    return written


def _analyze() -> None:
    matplotlib.use("Agg")  # headless: files only, no display needed
    run = runs.load_run(FLAGS.workdir)
    data = training_data.prepare_data(run.config)
    written = write_analysis(
        run,
        data,
        FLAGS.workdir,
        FLAGS.out,
        max_images=FLAGS.max_images,
        image_index=FLAGS.image_index,
        embedding=FLAGS.embedding,
        seed=FLAGS.seed,
        batch_size=FLAGS.batch_size,
    )
    for path in written:
        logging.info("wrote %s", path)


main = cli.entry_point(_analyze)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
