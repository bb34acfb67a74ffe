"""The data a run trains on: normalisation, data fingerprint and placement, as the trainer
applies them (before the workdir is claimed)."""

import dataclasses
import re

import numpy as np
import pytest
from absl import logging

from comatch_jax.trainer import train
from comatch_jax.data import pipeline as training_data
from train_test import RecordingWriter, synthetic_dataset, tiny_config


def test_normalisation_is_the_datas_own_unless_given():
    config = tiny_config()
    dataset = synthetic_dataset()
    data = training_data.prepare_data(config, dataset)
    pixels = dataset.train_images.astype(np.float64) / 255.0
    np.testing.assert_allclose(data.mean, [pixels.mean()], rtol=1e-6)
    np.testing.assert_allclose(data.std, [pixels.std()], rtol=1e-6)
    config.dataset.mean, config.dataset.std = (0.5,), (0.25,)
    data = training_data.prepare_data(config, dataset)
    assert (data.mean, data.std) == ((0.5,), (0.25,))
    resolved = training_data.with_normalization(config, data)
    assert tuple(resolved.dataset.mean) == (0.5,) and tuple(config.dataset.mean) == (0.5,)


def test_a_mean_of_the_wrong_length_is_one_line_and_claims_no_workdir(tmp_path):
    config = tiny_config()
    config.dataset.mean, config.dataset.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"^dataset.mean has 3 values but the images have 1 ch"):
        train.train_and_evaluate(
            config, str(workdir), writer=RecordingWriter(), dataset=synthetic_dataset()
        )
    assert not workdir.exists()


def test_every_image_labeled_is_one_line_for_a_semi_supervised_method(tmp_path):
    config = tiny_config()
    config.num_labels = 120  # the whole synthetic train split
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"^method=comatch trains on unlabeled images, but none"):
        train.train_and_evaluate(
            config, str(workdir), writer=RecordingWriter(), dataset=synthetic_dataset()
        )
    assert not workdir.exists()


def test_every_image_labeled_with_mu_left_set_is_one_line_for_supervised(tmp_path):
    config = tiny_config("supervised")
    config.num_labels, config.mu = 120, 2  # mu from a semi-supervised command line
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"^mu=2 asks for unlabeled images.*--config.mu=0"):
        train.train_and_evaluate(
            config, str(workdir), writer=RecordingWriter(), dataset=synthetic_dataset()
        )
    assert not workdir.exists()


def _free_ids(config, dataset, count):
    """`count` train-split ids of `dataset` that `config` leaves unlabeled."""
    labeled = training_data.prepare_data(config, dataset).labeled_ids
    return np.setdiff1d(np.arange(len(dataset.train_labels)), labeled)[:count]


def test_a_resumed_run_on_changed_data_or_answers_says_what_changed(tmp_path):
    config = tiny_config()
    config.num_steps = 2
    config.eval_every = config.checkpoint_every = 2
    a, b, c = _free_ids(config, synthetic_dataset(), 3)
    answers = tmp_path / "answers.csv"
    answers.write_text(f"id,label\n{a},1\n{b},2\n")
    config.dataset.extra_labels_csv = str(answers)
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir, writer=RecordingWriter(), dataset=synthetic_dataset())
    config.num_steps = 4
    resume = lambda dataset: train.train_and_evaluate(
        config, workdir, writer=RecordingWriter(), dataset=dataset
    )
    with pytest.raises(ValueError, match=r"holds a run on other data \(train: 120 -> 130 images"):
        resume(synthetic_dataset(num_train=130))
    for text, change in [
        (f"id,label\n{a},1\n{b},2\n{c},3\n", "extra_labels_csv: 2 -> 3 images (1 added)"),
        (f"id,label\n{a},1\n{b},3\n", "extra_labels_csv: 2 images, but its content changed"),
    ]:
        answers.write_text(text)
        with pytest.raises(ValueError, match=re.escape(f"holds a run on other data ({change});")):
            resume(synthetic_dataset())
    answers.write_text(f"id,label\n{a},1\n{b},2\n")  # the same data resumes
    assert int(resume(synthetic_dataset())[0].step) == 4


def test_unknown_answers_stay_in_the_pool_unless_dropped(tmp_path):
    config, dataset = tiny_config(), synthetic_dataset()
    known, unknown = _free_ids(config, dataset, 2)
    answers = tmp_path / "answers.csv"
    answers.write_text(f"id,label\n{known},3\n{unknown},__unknown__\n")
    config.dataset.extra_labels_csv = str(answers)
    kept = training_data.prepare_data(config, dataset)
    assert kept.unknown_ids.tolist() == [unknown] and unknown not in kept.labeled_ids
    assert unknown in kept.unlabeled_ids and known not in kept.unlabeled_ids
    assert kept.labels[list(kept.labeled_ids).index(known)] == 3
    config.dataset.drop_unknown_answers = True
    dropped = training_data.prepare_data(config, dataset)
    assert unknown not in dropped.unlabeled_ids
    assert len(dropped.unlabeled_ids) == len(kept.unlabeled_ids) - 1
    np.testing.assert_array_equal(
        dropped.unlabeled_images, dataset.train_images[dropped.unlabeled_ids]
    )
    np.testing.assert_array_equal(dropped.labeled_images, kept.labeled_images)


@pytest.mark.parametrize(
    "data_gib, free_gib, expected",
    [(14.2, 80.0, True), (14.2, 16.0, False), (0.05, 0.2, True), (1.0, 1.9, False)],
)
def test_placement_follows_size_and_free_memory(monkeypatch, data_gib, free_gib, expected):
    config = tiny_config()
    data = training_data.prepare_data(config, synthetic_dataset())
    free = lambda device: (free_gib / data_gib * data.labeled_images.nbytes, "test")
    monkeypatch.setattr(training_data, "free_device_memory", free)
    data = dataclasses.replace(data, unlabeled_images=data.unlabeled_images[:0])
    assert training_data.data_on_device(config, data) is expected


def test_placement_is_logged_and_the_config_overrides(monkeypatch):
    config = tiny_config()
    data = training_data.prepare_data(config, synthetic_dataset())
    lines = []
    monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
    assert training_data.data_on_device(config, data)  # a few KiB always fit
    assert "on the device" in lines[-1] and "GiB free" in lines[-1]
    config.data_on_device = False
    assert not training_data.data_on_device(config, data)
    assert "data_on_device=False set in the config" in lines[-1]
    monkeypatch.setattr(training_data, "free_device_memory", lambda device: (1000, "test"))
    config.data_on_device = None
    assert not training_data.data_on_device(config, data)
    assert "do not fit" in lines[-1]


def test_free_memory_of_this_machine_is_positive():
    import jax

    free, what = training_data.free_device_memory(jax.local_devices()[0])
    assert free > 0 and what
