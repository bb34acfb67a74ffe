"""Analysis plots: every PNG is written and is a real, non-blank image; the counts behind them."""

import json
import os
import subprocess
import sys

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from comatch_jax.commands import analyze, ema_model
from comatch_jax.data import pipeline
from comatch_jax.trainer import saved_runs, train

from kill_resume_test import _library_info_lines
from train_test import RecordingWriter, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLOTS = [
    "training_curves.png",
    "predicted_distribution.png",
    "prediction_bias.png",
    "under_predicted_samples.png",
    "over_predicted_samples.png",
    "confusion_matrix.png",
    "per_class_accuracy.png",
    "feature_maps.png",
    "embedding_pca.png",
    "unknown_images.png",
]


def _check_image(path):
    pixels = matplotlib.image.imread(path)  # fails on anything but a valid PNG
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100, path
    rgb = pixels[..., :3]
    assert rgb.std() > 0.01, f"{path} is blank"
    drawn = np.mean(np.any(rgb < 0.9, axis=-1))  # anything but the white background
    assert drawn > 0.01, f"{path} is almost empty ({drawn:.3%} drawn)"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A few steps on scikit-learn's digits, a dataset the command can load by name."""
    workdir = str(tmp_path_factory.mktemp("digits_run"))
    config = tiny_config()
    config.dataset.name = "digits"
    train.train_and_evaluate(config, workdir, writer=RecordingWriter())
    return workdir


def test_write_analysis_writes_every_plot_as_a_non_blank_png(digits_run, tmp_path):
    run = saved_runs.load_run(digits_run)
    data = pipeline.prepare_data(run.config)
    written = analyze.write_analysis(
        run, data, digits_run, str(tmp_path), max_images=500, image_index=3
    )
    assert sorted(os.path.basename(p) for p in written) == sorted(PLOTS)
    for name in PLOTS:
        _check_image(tmp_path / name)


def test_the_unknown_images_are_the_highest_scores_first_with_their_names():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    pool, known = rng.permutation(50) / 49, rng.uniform(0, 0.5, 20)
    names = [f"folder/image{i}.png" for i in range(50)]
    fig = analyze.unknown_images_figure(known, pool, images, names, "nearest_labeled")
    titles = [ax.get_title() for ax in fig.axes[1:]]  # fig.axes[0]: the histogram
    first = np.argmax(pool)
    assert len(titles) == analyze.MOST_UNKNOWN and titles[0] == f"1\nfolder/image{first}.png"
    shown = [float(t.split("\n")[0]) for t in titles]
    assert shown == sorted(shown, reverse=True) and min(shown) == pytest.approx(1 - 39 / 49, 1e-3)
    plt.close(fig)


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_2d_projection_keeps_separate_clusters_apart(method):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 30)
    embeddings = rng.normal(size=(60, 16)) + 10.0 * labels[:, None] * np.eye(16)[0]
    points = analyze.project_2d(embeddings, method, seed=0)
    assert points.shape == (60, 2) and np.all(np.isfinite(points))
    centers = [points[labels == c].mean(0) for c in (0, 1)]
    spread = max(np.linalg.norm(points[labels == c] - centers[c], axis=1).mean() for c in (0, 1))
    assert np.linalg.norm(centers[0] - centers[1]) > 2 * spread


def test_a_command_error_is_one_line_without_library_log_lines(digits_run, tmp_path):
    message = "--image_index must be in 0..296, got 297."
    command = [
        sys.executable,
        "-m",
        "comatch_jax.commands.analyze",
        f"--workdir={digits_run}",
        f"--out={tmp_path / 'out'}",
        "--image_index=297",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    # Said once, and no library INFO lines (Orbax's restore, JAX's backends) around it.
    assert result.stderr.count(message) == 1, result.stderr[-3000:]
    assert not _library_info_lines(result.stderr), _library_info_lines(result.stderr)[:5]
    assert "Unable to initialize backend" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_out_path_that_is_a_file_is_one_line(digits_run, tmp_path):
    (tmp_path / "a_file").write_text("")
    run = saved_runs.load_run(digits_run)
    data = pipeline.prepare_data(run.config)
    with pytest.raises(OSError) as error:
        analyze.write_analysis(run, data, digits_run, str(tmp_path / "a_file"), max_images=10)
    expected = (
        f"Cannot create the --out directory {tmp_path}/a_file: it is a file, not a directory."
    )
    assert str(error.value) == expected


def test_feature_maps_are_the_convolutions_in_forward_order(digits_run):
    maps = ema_model.feature_maps(
        saved_runs.load_run(digits_run), np.full((8, 8, 1), 128, np.uint8)
    )
    assert list(maps) == ["Conv_0", "Conv_1"]  # tiny_config: widths (8, 16), one pool
    assert maps["Conv_0"].shape == (8, 8, 8) and maps["Conv_1"].shape == (4, 4, 16)


def test_read_metrics_keeps_the_last_record_of_each_step(tmp_path):
    records = [
        {"step": 2, "train/loss": 3.0},
        {"step": 4, "train/loss": 2.0, "train/images_per_sec": 10.0},
        {"step": 4, "eval/test_accuracy": 0.5},
        {"step": 4, "train/loss": 1.5},  # a resumed run logged step 4 again
        {"step": 3, "train/loss": 2.5},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    training, evaluation = analyze.read_metrics(str(tmp_path))
    assert [(r["step"], r["loss"]) for r in training] == [(2, 3.0), (3, 2.5), (4, 1.5)]
    assert training[-1]["images_per_sec"] == 10.0
    assert evaluation == [{"step": 4, "test_accuracy": 0.5}]
    assert analyze.read_metrics(str(tmp_path / "missing")) == ([], [])


def test_the_trainer_metrics_file_feeds_the_training_curves(digits_run):
    training, evaluation = analyze.read_metrics(digits_run)
    assert [r["step"] for r in training] == [2, 3, 4, 6]  # tiny_config's logging steps
    assert all({"loss", "mask_rate", "learning_rate"} <= set(r) for r in training)
    assert [r["step"] for r in evaluation] == [3, 6]


def test_counts_behind_the_plots_on_a_hand_case():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 1, 1])
    matrix = analyze.confusion_matrix(labels, predicted, 4)
    np.testing.assert_array_equal(matrix[:3, :3], [[1, 2, 0], [0, 2, 0], [0, 1, 0]])
    np.testing.assert_array_equal(analyze.prediction_bias(labels, predicted, 4), [-2, 3, -1, 0])
    accuracy = analyze.per_class_accuracy(matrix)
    np.testing.assert_allclose(accuracy[:3], [1 / 3, 1.0, 0.0])
    assert np.isnan(accuracy[3])  # no test image of class 3
    assert list(analyze.subset(5, 10, seed=0)) == [0, 1, 2, 3, 4]
    picked = analyze.subset(100, 10, seed=0)
    assert len(set(picked)) == 10 and np.all(np.diff(picked) > 0)


def test_sample_sheets_rank_by_signed_bias_and_show_the_frequent_confusions():
    # Class 0 is over-predicted; class 3 is never predicted (under-predicted, not
    # "over-predicted" as a ranking by |bias| would have it); class 2 is under-predicted by 1.
    labels = np.array([1, 1, 1, 3, 3, 3, 3, 2, 2, 0, 0, 4])
    predicted = np.array([0, 0, 1, 0, 4, 4, 4, 0, 2, 0, 0, 4])
    bias = analyze.prediction_bias(labels, predicted, 5)
    np.testing.assert_array_equal(bias, [4, -2, -1, -4, 3])
    assert list(analyze.most_biased_classes(bias, over=True, count=3)) == [0, 4]
    assert list(analyze.most_biased_classes(bias, over=False, count=3)) == [3, 1, 2]
    assert list(analyze.most_biased_classes(np.zeros(4, int), over=True, count=3)) == []

    # Class 3's mistakes in file order: as 0 (row 3), then as 4 three times: the most
    # frequent confusion (4) comes first, and both confusions are shown.
    chosen, confusions = analyze.confusion_samples(labels, predicted, 3, over=False, count=3)
    assert confusions == [(4, 3), (0, 1)]
    assert list(chosen) == [4, 5, 3]
    # Over-predicted class 0: wrongly predicted from 1 (twice), 3 and 2 (once each); the tie
    # goes to the lower class; max_confusions caps the groups.
    chosen, confusions = analyze.confusion_samples(
        labels, predicted, 0, over=True, count=8, max_confusions=2
    )
    assert confusions == [(1, 2), (2, 1)]
    assert list(chosen) == [0, 1, 7]
    # No mistakes: nothing to show.
    chosen, confusions = analyze.confusion_samples(labels, predicted, 4, over=False)
    assert len(chosen) == 0 and confusions == []


def test_cifar_like_folder_rows_show_each_class_its_own_confusions(tmp_path):
    """Each row shows the class's own most frequent confusion (automobile -> truck, truck ->
    automobile), though in file order every class's first mistake is an airplane."""
    names = ["airplane", "automobile", "bird", "cat", "truck"]
    labels = np.repeat(np.arange(5), 10)
    predicted = labels.copy()
    predicted[[10, 40, 20]] = 0  # one airplane mistake first in file order for 1, 4, 2
    predicted[11:16] = 4  # automobiles mostly taken for trucks
    predicted[41:45] = 1  # trucks mostly taken for automobiles
    predicted[21:23] = 3  # birds taken for cats
    for c, other in [(1, 4), (4, 1), (2, 3)]:
        _, confusions = analyze.confusion_samples(labels, predicted, c, over=False)
        assert confusions[0][0] == other
    images = np.random.default_rng(0).integers(0, 255, (50, 8, 8, 3)).astype(np.uint8)
    for over in (False, True):
        name = f"{'over' if over else 'under'}.png"
        fig = analyze.class_samples_figure(images, labels, predicted, names, over=over)
        _check_image(analyze.save(fig, str(tmp_path / name)))


def test_training_curves_draw_only_logged_metrics():
    import matplotlib.pyplot as plt

    training = [
        {"step": 2, "loss": 2.0, "mask_rate": 0.5},
        {"step": 4, "loss": 1.0, "mask_rate": 0.7},
    ]
    evaluation = [{"step": 4, "test_accuracy": 0.5}]

    def labels(fig):
        return {line.get_label().split(" (")[0] for ax in fig.axes for line in ax.get_lines()}

    fig = analyze.training_curves_figure(training, evaluation)
    assert "pseudo_label_acc" not in labels(fig) and {"loss", "mask_rate"} <= labels(fig)
    plt.close(fig)
    # Logged at one step only: one point, not a 0 at the other.
    training[1]["pseudo_label_acc"] = 0.75
    fig = analyze.training_curves_figure(training, evaluation)
    (line,) = [l for ax in fig.axes for l in ax.get_lines() if l.get_label() == "pseudo_label_acc"]
    assert list(line.get_xdata()) == [4] and list(line.get_ydata()) == [0.75]
    plt.close(fig)
    # A run without ground truth for its unlabeled images: omitted even where logged.
    fig = analyze.training_curves_figure(training, evaluation, omit=("pseudo_label_acc",))
    assert "pseudo_label_acc" not in labels(fig)
    plt.close(fig)


def test_plots_are_written_whole(tmp_path, monkeypatch):
    """A plot whose drawing fails leaves neither a partial PNG nor a temporary file, and
    the previous PNG of that name is kept."""
    import matplotlib.pyplot as plt

    path = tmp_path / "curves.png"
    analyze.save(analyze.training_curves_figure([{"step": 1, "loss": 1.0}], []), str(path))
    before = path.read_bytes()
    fig = plt.figure()

    def fail(*args, **kwargs):
        with open(args[0], "wb") as f:
            f.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", fail)
    with pytest.raises(OSError, match="disk full"):
        analyze.save(fig, str(path))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["curves.png"]


def test_a_class_without_test_images_is_marked_not_measured_not_drawn_as_zero():
    import matplotlib.pyplot as plt

    labels = np.array([0, 0, 1, 1])
    predicted = np.array([0, 0, 0, 0])  # a: 100 %, b: a measured 0 %, c: no test image
    fig = analyze.per_class_accuracy_figure(labels, predicted, ["a", "b", "c"])
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    at = lambda bar: ticks[round(bar.get_x() + bar.get_width() / 2)]
    assert [at(bar) for bar in ax.patches if bar.get_hatch()] == ["c"]
    heights = {at(bar): bar.get_height() for bar in ax.patches if not bar.get_hatch()}
    assert heights["a"] == 1.0 and heights["b"] == 0.0
    assert any("not measured" in t.get_text() for t in ax.get_legend().get_texts())
    plt.close(fig)
    # Every class measured: nothing is marked.
    fig = analyze.per_class_accuracy_figure(labels, predicted, ["a", "b"])
    assert not [bar for bar in fig.axes[0].patches if bar.get_hatch()]
    plt.close(fig)
