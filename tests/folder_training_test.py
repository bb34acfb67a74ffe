"""Training from an image folder (memory-mapped cache, host batches), then `predict`."""

import csv
import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from comatch_jax.commands import predict
from comatch_jax.trainer import saved_runs as runs, train
from comatch_jax.data import describe_data_change, pipeline as training_data

from train_test import RecordingWriter, tiny_config


def _write_folder(root, rng):
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    for name, colour in colours.items():
        os.makedirs(root / "labeled" / name)
        for i in range(4):
            pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (20, 24, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / "labeled" / name / f"{i}.png")
    os.makedirs(root / "unlabeled" / "batch1")
    os.makedirs(root / "test")
    for i, colour in enumerate(list(colours.values()) * 4):
        pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (18, 18, 3)), 0, 255).astype(
            np.uint8
        )
        Image.fromarray(pixels).save(root / "unlabeled" / "batch1" / f"u{i}.jpg")
        Image.fromarray(pixels).save(root / "test" / f"t{i}.png")


def _folder_config(root):
    config = tiny_config()
    config.dataset.name = "image_folder"
    config.dataset.root = str(root)
    config.dataset.image_size = 12
    config.dataset.mean, config.dataset.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    config.dataset.val_fraction = 0.25
    config.batch_size = 4
    return config


def test_train_on_image_folder_then_predict(tmp_path):
    _write_folder(tmp_path / "data", np.random.default_rng(0))
    config = _folder_config(tmp_path / "data")
    writer = RecordingWriter()
    state, summary = train.train_and_evaluate(config, str(tmp_path / "run"), writer=writer)
    assert int(state.step) == config.num_steps
    # No ground truth for unlabeled/: its pseudo-label accuracy is unknown, not logged as 0.
    logged = [name for _, scalars in writer.scalars for name in scalars]
    assert "train/mask_rate" in logged and "train/pseudo_label_acc" not in logged
    assert "image_folder" in summary["data_source"]
    run = runs.load_run(str(tmp_path / "run"))
    assert run.class_names == ("blue", "green", "red")

    out = tmp_path / "preds.csv"
    count = predict.predict_folder(
        str(tmp_path / "run"), str(tmp_path / "data" / "test"), str(out), top_k=2
    )
    rows = list(csv.DictReader(open(out)))
    assert count == len(rows) == 12
    assert set(rows[0]) == {
        "path",
        "predicted_class",
        "confidence",
        "unknown_score",
        "class_1",
        "prob_1",
        "class_2",
        "prob_2",
    }
    assert all(
        r["predicted_class"] in run.class_names and 0 <= float(r["confidence"]) <= 1 for r in rows
    )
    assert all(float(r["prob_1"]) >= float(r["prob_2"]) for r in rows)


def test_label_requests_on_an_image_folder_name_files_and_answers_join_by_path(tmp_path):
    import subprocess
    import sys

    import pytest

    from comatch_jax.data.answers import read_answers

    _write_folder(tmp_path / "data", np.random.default_rng(1))
    config = _folder_config(tmp_path / "data")
    config.num_steps = 2
    train.train_and_evaluate(config, str(tmp_path / "run"), writer=RecordingWriter())
    requests_csv = tmp_path / "requests.csv"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "comatch_jax.commands.request_labels",
            f"--workdir={tmp_path / 'run'}",
            "--budget=12",
            f"--out={requests_csv}",
            f"--label_studio_root={tmp_path}",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    page = tmp_path / "requests_page" / "labelling.html"
    assert f"open {page} in a browser" in result.stderr and page.exists()
    assert (tmp_path / "requests_label_config.xml").exists()
    tasks = json.load(open(tmp_path / "requests_tasks.json"))
    rows = list(csv.DictReader(open(requests_csv)))
    assert len(rows) == 12  # every unlabeled image: labeled/ images are not candidates
    assert all(os.path.isfile(r["path"]) and "/unlabeled/" in r["path"] for r in rows)
    data = training_data.prepare_data(config)
    unlabeled = {os.path.join(config.dataset.root, p) for p in data.unlabeled_paths}
    assert {r["path"] for r in rows} == unlabeled
    assert {r["predicted_class"] for r in rows} <= set(data.class_names)  # names, not indices
    # A --label_studio_url given without its trailing slash: the folder's files are under it.
    from comatch_jax.commands import request_labels

    url_csv = str(tmp_path / "url" / "requests.csv")
    request_labels.request_labels(
        str(tmp_path / "run"),
        url_csv,
        labelling_page=False,
        label_studio_url="http://h/files",
        budget=2,
    )
    for task in json.load(open(tmp_path / "url" / "requests_tasks.json")):
        assert task["data"]["image"].startswith("http://h/files/unlabeled/"), task

    # Answers: u{i} has colour i % 3 of (red, green, blue); one by absolute path, one by
    # root-relative path, each with its class (folder) name.
    colour = lambda path: ("red", "green", "blue")[int(os.path.basename(path)[1:-4]) % 3]
    first, second = rows[0]["path"], rows[1]["path"]
    answers = tmp_path / "labels.csv"
    answers.write_text(
        f"path,label\n{first},{colour(first)}\n"
        f"{os.path.relpath(second, config.dataset.root)},{colour(second)}\n"
    )
    config.dataset.extra_labels_csv = str(answers)
    retrained = training_data.prepare_data(config)
    assert len(retrained.labels) == len(data.labels) + 2
    added = {
        int(i): int(label) for i, label in zip(retrained.labeled_ids, retrained.labels) if i >= 0
    }
    by_path = {
        retrained.unlabeled_paths[i]: retrained.class_names[label] for i, label in added.items()
    }
    assert by_path == {os.path.relpath(p, config.dataset.root): colour(p) for p in (first, second)}
    np.testing.assert_array_equal(
        retrained.labeled_images[len(data.labels)], data.unlabeled_images[min(added)]
    )

    # An image answered "none of these classes" stays in the pool, or leaves it on request:
    # the pool is then a RowSubset of the memmap, which batches read row by row.
    unknown = os.path.relpath(rows[2]["path"], config.dataset.root)
    answers.write_text(f"path,label\n{first},{colour(first)}\n{unknown},__unknown__\n")
    kept = training_data.prepare_data(config)
    row = data.unlabeled_paths.index(unknown)
    assert kept.unknown_ids.tolist() == [row] and len(kept.labels) == len(data.labels) + 1
    assert len(kept.unlabeled_images) == len(data.unlabeled_images)
    config.dataset.drop_unknown_answers = True
    dropped = training_data.prepare_data(config)
    assert isinstance(dropped.unlabeled_images, training_data.RowSubset)
    assert row not in dropped.unlabeled_ids and len(dropped.unlabeled_ids) == 11
    np.testing.assert_array_equal(
        np.asarray(dropped.unlabeled_images),
        np.asarray(data.unlabeled_images)[dropped.unlabeled_ids],
    )
    batch = training_data.host_batch(
        {
            "labeled_images": dropped.labeled_images,
            "labels": dropped.labels,
            "unlabeled_images": dropped.unlabeled_images,
            "unlabeled_labels": dropped.unlabeled_labels,
            "sampling_rng": np.asarray(jax.random.key_data(jax.random.key(0))),
        },
        3,
        batch_size=2,
        unlabeled_batch_size=8,
        sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]),
    )
    assert batch["unlabeled_images"].shape == (8, 12, 12, 3)
    config.dataset.drop_unknown_answers = False

    # A Label Studio export (JSON_MIN) of the tasks request_labels wrote answers alike, and
    # the run's data fingerprint follows its content.
    urls = [task["data"]["image"] for task in tasks[:2]]
    assert urls[0] == "/data/local-files/?d=data/" + os.path.relpath(first, config.dataset.root)
    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"id": 1, "image": urls[0], "label": colour(first)},
                                  {"id": 2, "image": urls[1], "label": colour(second)}]))  # fmt: skip
    config.dataset.extra_labels_csv = str(export)
    studio = training_data.prepare_data(config)
    assert studio.labeled_ids.tolist() == retrained.labeled_ids.tolist()
    assert studio.labels.tolist() == retrained.labels.tolist()
    export.write_text(
        export.read_text().replace(colour(first), "blue" if colour(first) != "blue" else "red")
    )
    change = describe_data_change(
        studio.fingerprint, training_data.prepare_data(config).fingerprint
    )
    assert change == "extra_labels_csv: 2 images, but its content changed"

    for text, message in [
        ("path,label\nunlabeled/nope.png,red\n", "is not an image of"),
        (f"path,label\n{first},purple\n", "neither a class name"),
        (f"path,label\n{first},red\n{first},green\n", "appears more than once"),
        ("file,label\nx,red\n", "expected a header with columns path,label"),
    ]:
        answers.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_answers(
                str(answers),
                data.class_names,
                root=config.dataset.root,
                unlabeled_paths=data.unlabeled_paths,
            )


def test_supervised_on_a_folder_without_unlabeled_trains_and_resumes(tmp_path):
    """configs/supervised.py:folder_cpu on a folder with only labeled/ (issue 21's new user):
    a run that draws no unlabeled images needs no unlabeled/; its data fingerprint (an empty
    unlabeled part) lets the run resume. A semi-supervised run still needs the folder."""
    _write_folder(tmp_path / "data", np.random.default_rng(0))
    shutil.rmtree(tmp_path / "data" / "unlabeled")
    config = _folder_config(tmp_path / "data")
    config.dataset.mean = config.dataset.std = ()  # the folder's own
    with pytest.raises(FileNotFoundError, match="unlabeled does not exist; semi-supervised"):
        training_data.prepare_data(config)  # CoMatch, mu = 2
    config.method, config.mu = "supervised", 0
    config.num_steps, config.eval_every, config.checkpoint_every = 2, 2, 2
    data = training_data.prepare_data(config)
    assert data.unlabeled_images.shape[0] == 0 and len(data.labels) == 9
    state, _ = train.train_and_evaluate(config, str(tmp_path / "run"), writer=RecordingWriter())
    assert int(state.step) == 2
    config.num_steps = 4  # the same data: resumed from step 2, not refused as changed data
    state, summary = train.train_and_evaluate(
        config, str(tmp_path / "run"), writer=RecordingWriter()
    )
    assert int(state.step) == 4 and 0.0 <= summary["test_accuracy"] <= 1.0

    # Unlabeled images added: refused (the folder's mean/std changed), and the message says
    # why that matters to a run that draws none of them.
    os.makedirs(tmp_path / "data" / "unlabeled")
    Image.fromarray(np.full((18, 18, 3), 255, np.uint8)).save(
        tmp_path / "data" / "unlabeled" / "u.png"
    )
    config.num_steps = 6
    with pytest.raises(ValueError) as refused:
        train.train_and_evaluate(config, str(tmp_path / "run"), writer=RecordingWriter())
    message = str(refused.value)
    assert "holds a run on other data (unlabeled: 0 -> 1 image (1 added)); use a new" in message
    # So is a run that draws unlabeled images.
    semi = training_data.with_normalization(config, training_data.prepare_data(config))
    semi.method, semi.mu = "comatch", 2
    fingerprint = training_data.prepare_data(semi).fingerprint
    with pytest.raises(ValueError, match=r"\(unlabeled: 0 -> 1 image \(1 added\)\); use a new"):
        runs.check_workdir(semi, str(tmp_path / "run"), fingerprint=fingerprint)
