"""Every command on the smallest valid input, and file names of every kind round-tripping.

An image folder with one labeled image per class, 2 validation images and a few unlabeled
images whose names hold commas, quotes, spaces, non-ASCII letters and a line break: train,
probe, predict, request_labels (one image requested), answer_from_truth, analyze with every
option, and training again with the answers (extra_labels_csv). Each works or says in one line
why not.
One tiny training run is shared by the module.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from comatch_jax.commands import (
    analyze,
    answer_from_truth,
    ema_model,
    predict,
    probe,
    request_labels,
)
from comatch_jax.data import pipeline as training_data
from comatch_jax.trainer import saved_runs, train

from train_test import RecordingWriter, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {"cat": (210, 30, 30), "dog": (30, 30, 210)}
ODD_NAMES = [
    "plain.png",
    "with,comma.png",
    'quote"d.png',
    " leading and trailing space .png",
    "ünïcödé 画像.png",
    "line\nbreak.png",
    "semi;colon 'single'.png",
]


def _save(path, colour, rng):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (10, 10, 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def _smallest_folder(root, classes=("cat", "dog")):
    rng = np.random.default_rng(0)
    for name in classes:
        _save(os.path.join(root, "labeled", name, "a.png"), COLOURS[name], rng)
        _save(os.path.join(root, "val", name, "v.png"), COLOURS[name], rng)
    for i, name in enumerate(ODD_NAMES):
        _save(os.path.join(root, "unlabeled", name), COLOURS[classes[i % len(classes)]], rng)


def _command(name, *args):
    command = [sys.executable, "-m", f"comatch_jax.commands.{name}", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO)


def _config(root):
    config = tiny_config()
    config.dataset.name = "image_folder"
    config.dataset.root = str(root)
    config.dataset.image_size = 8
    config.dataset.mean, config.dataset.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    config.batch_size = 2
    config.num_steps = 2
    config.log_every = 1
    config.eval_every = 2
    config.checkpoint_every = 2
    return config


@pytest.fixture(scope="module")
def smallest_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("smallest")
    _smallest_folder(str(base / "data"))
    config = _config(base / "data")
    state, _ = train.train_and_evaluate(config, str(base / "run"), writer=RecordingWriter())
    assert int(state.step) == 2
    return base, config


def test_probe_on_one_labeled_image_per_class(smallest_run):
    base, _ = smallest_run
    results = probe.probe_run(str(base / "run"))
    assert results["num_labeled"] == 2
    assert 0.0 <= results["knn_accuracy"] <= 1.0 and 0.0 <= results["linear_probe_accuracy"] <= 1.0
    assert os.path.exists(base / "run" / "probe.json")


def test_predict_request_answer_retrain_round_trip_every_file_name(smallest_run, tmp_path):
    base, config = smallest_run
    workdir, unlabeled = str(base / "run"), str(base / "data" / "unlabeled")
    predictions = tmp_path / "predictions.csv"
    assert predict.predict_folder(workdir, unlabeled, str(predictions), top_k=5) == len(ODD_NAMES)
    with open(predictions, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"] for r in rows) == sorted(ODD_NAMES)
    assert all(os.path.isfile(os.path.join(unlabeled, r["path"])) for r in rows)
    assert {"class_2", "prob_2"} <= set(rows[0]) and "class_3" not in rows[0]  # top_k capped

    # Every image requested, then a single one.
    requests_csv = tmp_path / "requests.csv"
    request_labels.request_labels(workdir, str(requests_csv), budget=len(ODD_NAMES))
    with open(requests_csv, newline="", encoding="utf-8") as f:
        requested = list(csv.DictReader(f))
    assert list(requested[0]) == ["path", "predicted_class", "score"]
    assert sorted(os.path.basename(r["path"]) for r in requested) == sorted(ODD_NAMES)
    assert all(os.path.isfile(r["path"]) for r in requested)
    assert {r["predicted_class"] for r in requested} <= {"cat", "dog"}  # names, not indices
    request_labels.request_labels(workdir, str(tmp_path / "one.csv"), budget=1)
    request_labels.request_labels(workdir, str(tmp_path / "all.csv"), budget=8)  # 7 are left
    with open(tmp_path / "all.csv", newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 7

    # A person answers in a spreadsheet: path column kept, label added; saved with a BOM
    # and CRLF line ends. Colour of image i is that of class i % 2.
    truth = {name: ("cat", "dog")[i % 2] for i, name in enumerate(ODD_NAMES)}
    answers = tmp_path / "answers.csv"
    with open(answers, "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.writer(f, lineterminator="\r\n")
        writer.writerow(["path", "label"])
        for r in requested:
            writer.writerow([r["path"], truth[os.path.basename(r["path"])]])
        f.write("\r\n")  # a blank trailing line
    retrain = _config(base / "data")
    retrain.dataset.extra_labels_csv = str(answers)
    data = training_data.prepare_data(retrain)
    assert len(data.labels) == 2 + len(ODD_NAMES)
    by_name = {
        os.path.basename(data.unlabeled_paths[i]): data.class_names[label]
        for i, label in zip(data.labeled_ids, data.labels)
        if i >= 0
    }
    assert by_name == truth
    # (training reads extra_labels_csv through prepare_data, as above; the module's run
    # already covers training on this folder)


def _predictions(out):
    with open(out, newline="", encoding="utf-8") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def test_predict_calls_images_above_the_recorded_threshold_unknown(
    smallest_run, tmp_path, monkeypatch
):
    base, _ = smallest_run
    workdir = str(shutil.copytree(base / "run", tmp_path / "run"))  # predict records T there
    images, out = str(base / "data" / "unlabeled"), tmp_path / "p.csv"
    predict.predict_folder(workdir, images, str(out), unknown_rate=0.5)
    record_path = os.path.join(workdir, ema_model.THRESHOLD_FILE)
    with open(record_path) as f:
        record = json.load(f)
    assert record["score"] == "nearest_labeled" and record["rate"] == 0.5
    assert record["num_images"] == 2 and record["step"] == 2
    # The recorded T rejects the asked share of the evaluation images (all known).
    run = saved_runs.load_run(workdir)
    scorer = ema_model.UnknownScorer(
        run, ema_model.predictor(run), training_data.prepare_data(run.config)
    )
    known = scorer(scorer.predict(scorer.data.test_images))
    assert np.mean(known > record["threshold"]) == 0.5
    rows = _predictions(out)
    scores = {path: float(r["unknown_score"]) for path, r in rows.items()}
    for path, r in rows.items():
        unknown = scores[path] > record["threshold"]
        assert (r["predicted_class"] == "__unknown__") == unknown
        assert unknown or r["predicted_class"] in ("cat", "dog")
    # An explicit threshold; and a logit score needs no data.
    lowest = min(scores.values())
    predict.predict_folder(workdir, images, str(out), unknown_threshold=lowest)
    rows = _predictions(out)
    assert [p for p, r in rows.items() if r["predicted_class"] != "__unknown__"] == [
        p for p, s in scores.items() if s == lowest
    ]
    monkeypatch.setattr(predict.pipeline, "prepare_data", None)  # not called
    predict.predict_folder(workdir, images, str(out), unknown_score="energy", top_k=2)
    energy = [float(r["unknown_score"]) for r in _predictions(out).values()]
    assert np.all(np.isfinite(energy)) and energy != list(scores.values())
    with pytest.raises(ValueError, match="not both"):
        predict.predict_folder(workdir, images, str(out), unknown_threshold=1, unknown_rate=0.1)


def test_likely_unknown_files_are_named_whole(smallest_run, tmp_path):
    base, _ = smallest_run
    run = saved_runs.load_run(str(base / "run"))
    data = training_data.prepare_data(run.config)
    out = tmp_path / "unknown.csv"
    scorer = ema_model.UnknownScorer(run, ema_model.predictor(run), data)
    ids = scorer.write_likely_unknown(str(base / "run"), 0.5, str(out))
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(ids) > 0 and all(os.path.isfile(r["path"]) for r in rows)
    root = str(base / "data")
    assert [os.path.relpath(r["path"], root) for r in rows] == [
        data.unlabeled_paths[i] for i in ids
    ]


def test_answer_from_truth_answers_an_image_folder_from_its_truth_csv(smallest_run, tmp_path):
    base, config = smallest_run
    workdir, root = str(base / "run"), base / "data"
    requests_csv, answers = tmp_path / "requests.csv", tmp_path / "answers.csv"
    request_labels.request_labels(workdir, str(requests_csv), budget=3)
    # The truth CSV as experiments/make_folder_subset.py writes it: paths under unlabeled/.
    truth = {name: ("cat", "dog")[i % 2] for i, name in enumerate(ODD_NAMES)}
    with open(tmp_path / "unlabeled_truth.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("path", "label"), *truth.items()])
    with pytest.raises(ValueError, match="is not in") as error:  # beside another folder
        answer_from_truth.answer_from_truth_csv(
            str(requests_csv), str(tmp_path / "unlabeled_truth.csv"), str(answers)
        )
    assert "\n" not in str(error.value) and not answers.exists()
    (root / "unlabeled_truth.csv").write_bytes((tmp_path / "unlabeled_truth.csv").read_bytes())
    truth_csv = root / "unlabeled_truth.csv"
    result = _command(
        "answer_from_truth",
        f"--requests={requests_csv}",
        f"--truth={truth_csv}",
        f"--out={answers}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(answers, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(requests_csv, newline="", encoding="utf-8") as f:
        assert [r["path"] for r in rows] == [r["path"] for r in csv.DictReader(f)]
    assert all(r["label"] == truth[os.path.basename(r["path"])] for r in rows)
    retrain = _config(root)
    retrain.dataset.extra_labels_csv = str(answers)
    assert len(training_data.prepare_data(retrain).labels) == 2 + 3
    # Without --truth an image folder's run cannot be answered: one line says what to pass.
    with pytest.raises(ValueError, match="--truth=FOLDER/unlabeled_truth.csv") as error:
        answer_from_truth.answer_requests(str(requests_csv), str(tmp_path / "out.csv"), config)
    assert "\n" not in str(error.value) and not os.path.exists(tmp_path / "out.csv")


@pytest.mark.parametrize(
    "options",
    [
        {"embedding": "tsne"},
        {"max_images": 1, "image_index": 1, "seed": 3, "batch_size": 1},
        {"max_images": 1, "embedding": "tsne"},  # one test image: t-SNE says why not
        {"image_index": 2},  # 2 validation images: index out of range
        {"max_images": 0},
    ],
)
def test_analyze_with_every_option(smallest_run, tmp_path, options):
    base, _ = smallest_run
    workdir = str(base / "run")
    run = saved_runs.load_run(workdir)
    data = training_data.prepare_data(run.config)
    out = tmp_path / "plots"
    bad = {
        "image_index": r"--image_index must be in 0..1",
        "max_images": r"--max_images must be positive",
        "tsne": r"--embedding=tsne needs at least 2 test images, got 1; use --embedding=pca",
    }
    expected = (
        bad["image_index"]
        if options.get("image_index") == 2
        else (
            bad["max_images"]
            if options.get("max_images") == 0
            else bad["tsne"] if options == {"max_images": 1, "embedding": "tsne"} else None
        )
    )
    if expected:
        with pytest.raises(ValueError, match=expected) as error:
            analyze.write_analysis(run, data, workdir, str(out), **options)
        assert "\n" not in str(error.value)
        assert not out.exists()  # refused before writing anything
        return
    written = analyze.write_analysis(run, data, workdir, str(out), **options)
    assert len(written) == 10 and all(os.path.getsize(p) > 0 for p in written)
    assert not [name for name in os.listdir(out) if name.startswith(".")]  # no temporaries


def test_a_single_class_folder_is_refused_in_one_line_before_the_workdir(tmp_path):
    _smallest_folder(str(tmp_path / "data"), classes=("cat",))
    config = _config(tmp_path / "data")
    message = r"has 1 class \(cat\); a classifier needs at least 2 class folders under labeled/"
    with pytest.raises(ValueError, match=message) as error:
        train.train_and_evaluate(config, str(tmp_path / "run"), writer=RecordingWriter())
    assert "\n" not in str(error.value)
    assert not os.path.exists(tmp_path / "run")  # refused before the workdir is claimed


def test_predict_advises_a_flag_that_works(smallest_run, tmp_path):
    base, _ = smallest_run
    images = tmp_path / "images"
    _save(str(images / "good.png"), COLOURS["cat"], np.random.default_rng(1))
    for i in range(6):
        (images / f"broken{i}.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "predictions.csv"
    with pytest.raises(ValueError, match="broken0.png") as error:
        predict.predict_folder(str(base / "run"), str(images), str(out))
    assert not out.exists()
    advised = re.findall(r"(--\S+=\S+?)\b", str(error.value))
    assert advised == ["--corrupt_policy=skip"], str(error.value)
    result = _command(
        "predict", f"--workdir={base / 'run'}", f"--images={images}", f"--out={out}", *advised
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out, newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == ["good.png"]
    # The skipped files are named, up to 5.
    named = ", ".join(f"broken{i}.png" for i in range(5))
    assert f"Skipped 6 unreadable images in {images}: {named} and 1 more." in result.stderr


def test_images_too_small_for_the_model_are_refused_before_the_workdir(tmp_path):
    _smallest_folder(str(tmp_path / "data"))
    config = _config(tmp_path / "data")
    config.dataset.image_size = 2  # small_cnn widths (8, 16): one 2x2 pooling is fine
    training_data.prepare_data(config)
    config.model.widths = (8, 16, 32)  # two poolings need 4x4 pixels
    message = r"needs images of at least 4x4 pixels, the data has 2x2; set --config.dataset"
    with pytest.raises(ValueError, match=message) as error:
        train.train_and_evaluate(config, str(tmp_path / "run"), writer=RecordingWriter())
    assert "\n" not in str(error.value) and not os.path.exists(tmp_path / "run")
