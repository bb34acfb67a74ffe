"""Training from an image folder (memory-mapped cache, host batches), then `predict`."""

import csv
import os

import numpy as np
from PIL import Image

from comatch_jax import predict, train

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


def test_train_on_image_folder_then_predict(tmp_path):
    _write_folder(tmp_path / "data", np.random.default_rng(0))
    config = tiny_config()
    config.dataset.name = "image_folder"
    config.dataset.root = str(tmp_path / "data")
    config.dataset.image_size = 12
    config.dataset.mean, config.dataset.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    config.dataset.val_fraction = 0.25
    config.batch_size = 4
    state, summary = train.train_and_evaluate(
        config, str(tmp_path / "run"), writer=RecordingWriter()
    )
    assert int(state.step) == config.num_steps
    assert "image_folder" in summary["data_source"]
    run = train.load_run(str(tmp_path / "run"))
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
        "class_1",
        "prob_1",
        "class_2",
        "prob_2",
    }
    assert all(
        r["predicted_class"] in run.class_names and 0 <= float(r["confidence"]) <= 1 for r in rows
    )
    assert all(float(r["prob_1"]) >= float(r["prob_2"]) for r in rows)
