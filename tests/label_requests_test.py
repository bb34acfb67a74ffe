"""Label requests: each strategy on hand cases, the CSV files, and the whole loop
(train -> request_labels -> answer_from_truth -> train on the extra labels) through the real
commands."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from comatch_jax.commands import active_learning, answer_from_truth, ema_model, request_labels
from comatch_jax.data import pipeline as training_data
from comatch_jax.trainer import saved_runs, train

from train_test import RecordingWriter, synthetic_dataset, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------ strategies


def test_entropy_is_largest_for_uniform_and_zero_for_certain_predictions():
    probs = np.array([[0.25] * 4, [1.0, 0, 0, 0], [0.7, 0.1, 0.1, 0.1]])
    scores = active_learning.entropy_scores(probs)
    np.testing.assert_allclose(scores[0], np.log(4))
    np.testing.assert_allclose(scores[1], 0.0, atol=1e-9)
    expected = -(0.7 * np.log(0.7) + 3 * 0.1 * np.log(0.1))
    np.testing.assert_allclose(scores[2], expected)
    assert list(active_learning.top_k(scores, 3)) == [0, 2, 1]


def test_margin_prefers_the_closest_top_two():
    probs = np.array([[0.9, 0.05, 0.05], [0.5, 0.01, 0.49], [0.4, 0.3, 0.3]])
    np.testing.assert_allclose(active_learning.margin_scores(probs), [0.15, 0.99, 0.9])
    picked = active_learning.select("margin", probs=probs, budget=1)
    assert list(picked) == [1]


def test_least_confidence_is_one_minus_the_top_probability():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    np.testing.assert_allclose(active_learning.least_confidence_scores(probs), [0.1, 0.4, 0.2])
    assert list(active_learning.select("least_confidence", probs=probs, budget=2)) == [1, 2]


def test_strategies_disagree_where_they_should():
    # Row 0: two classes tie, the rest empty (small margin, lower entropy).
    # Row 1: spread over four classes (larger margin, higher entropy).
    probs = np.array([[0.45, 0.45, 0.05, 0.05], [0.4, 0.2, 0.2, 0.2]])
    assert active_learning.select("margin", probs=probs, budget=1)[0] == 0
    assert active_learning.select("entropy", probs=probs, budget=1)[0] == 1


def test_random_is_seeded():
    a = active_learning.random_scores(100, seed=3)
    np.testing.assert_array_equal(a, active_learning.random_scores(100, seed=3))
    assert not np.array_equal(a, active_learning.random_scores(100, seed=4))
    probs = np.full((50, 5), 0.2)
    picks = [active_learning.select("random", probs=probs, budget=10, seed=s) for s in (0, 0, 1)]
    np.testing.assert_array_equal(picks[0], picks[1])
    assert set(picks[0]) != set(picks[2])


def test_k_center_picks_the_farthest_point_then_fills_the_largest_gap():
    labeled = np.array([[0.0, 0.0]])
    points = np.array([[1.0, 0.0], [2.0, 0.0], [10.0, 0.0], [9.0, 0.0], [5.0, 0.0]])
    # 10 is farthest from the labeled 0; then 5 (distance 5 from both 0 and 10).
    assert list(active_learning.k_center_greedy(points, labeled, 2)) == [2, 4]
    # Without labeled points the first pick is the farthest from the mean (5.4): 10.
    assert active_learning.k_center_greedy(points, np.zeros((0, 2)), 1)[0] == 2


def test_k_center_never_repeats_even_with_duplicate_points():
    points = np.zeros((4, 3))
    picked = active_learning.k_center_greedy(points, np.ones((1, 3)), 4)
    assert sorted(picked) == [0, 1, 2, 3]


def test_k_center_matches_a_naive_reference():
    rng = np.random.default_rng(0)
    points, labeled = rng.normal(size=(60, 4)), rng.normal(size=(5, 4))
    centers, expected = list(labeled), []
    for _ in range(8):
        nearest = [min(np.linalg.norm(p - c) for c in centers) for p in points]
        for i in expected:
            nearest[i] = -1.0
        expected.append(int(np.argmax(nearest)))
        centers.append(points[expected[-1]])
    assert list(active_learning.k_center_greedy(points, labeled, 8)) == expected


def test_class_balanced_top_k_goes_round_robin_over_predicted_classes():
    scores = np.array([0.9, 0.8, 0.7, 0.5, 0.4, 0.1])
    predicted = np.array([0, 0, 0, 1, 1, 2])
    assert list(active_learning.class_balanced_top_k(scores, predicted, 3)) == [0, 3, 5]
    # Second round: class 0's second best (0.8) before class 1's (0.4); class 2 ran out.
    assert list(active_learning.class_balanced_top_k(scores, predicted, 5)) == [0, 3, 5, 1, 4]
    # Plain top-k would take three images of class 0.
    assert list(active_learning.top_k(scores, 3)) == [0, 1, 2]


def test_balanced_entropy_spreads_requests_over_predicted_classes():
    rng = np.random.default_rng(1)
    logits = 8.0 * np.eye(5)[np.arange(200) % 5] + rng.normal(size=(200, 5))  # confident...
    logits[:100] = 0.05 * rng.normal(size=(100, 5))  # ...and 100 near-uniform ones...
    logits[:100, 0] += 0.3  # ...all predicted as class 0
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    predicted = probs.argmax(-1)
    plain = active_learning.select("entropy", probs=probs, budget=10)
    balanced = active_learning.select(
        "entropy", probs=probs, budget=10, balance_by_predicted_class=True
    )
    counts = np.bincount(predicted[balanced], minlength=5)
    assert counts.max() - counts.min() <= 1  # 2 per predicted class
    assert set(predicted[plain]) == {0}


@pytest.mark.parametrize(
    "strategy,balance",
    [(s, False) for s in active_learning.STRATEGIES] + [("entropy", True), ("random", True)],
)
def test_select_returns_budget_unique_indices(strategy, balance):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(6), size=80)
    embeddings = rng.normal(size=(80, 5))
    picked = active_learning.select(
        strategy,
        probs=probs,
        budget=17,
        embeddings=embeddings,
        labeled_embeddings=rng.normal(size=(4, 5)),
        balance_by_predicted_class=balance,
        seed=2,
    )
    assert len(picked) == 17 and len(set(picked.tolist())) == 17
    assert picked.min() >= 0 and picked.max() < 80


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(strategy="entropy", budget=0), "budget must be in 1..10"),
        (dict(strategy="entropy", budget=11), "budget must be in 1..10"),
        (dict(strategy="badge", budget=2), "Unknown strategy 'badge'"),
        (dict(strategy="kcenter", budget=2, balance_by_predicted_class=True), "not kcenter"),
        (dict(strategy="kcenter", budget=2), "needs embeddings"),
    ],
)
def test_select_rejects_bad_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        active_learning.select(probs=np.full((10, 2), 0.5), **kwargs)


# ------------------------------------------------------------------------- CSV files


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_csv_writers_leave_no_partial_file(tmp_path):
    """A write that fails half-way leaves the previous file as it was and no temporary."""
    path = tmp_path / "labels.csv"
    active_learning.write_csv(str(path), ("id", "label"), [(1, 0)])
    before = path.read_bytes()
    rows = ((i, 10 // (2 - i)) for i in range(3))  # fails after the header and two rows
    with pytest.raises(ZeroDivisionError):
        active_learning.write_csv(str(path), ("id", "label"), rows)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["labels.csv"]


def test_extra_labels_join_the_labeled_set_and_leave_the_unlabeled_set(tmp_path):
    dataset = synthetic_dataset()
    config = tiny_config()
    base = training_data.prepare_data(config, dataset)
    new_ids = np.setdiff1d(np.arange(120), base.labeled_ids)[:5]
    # The given labels win over the dataset's (a person may label differently).
    given = (dataset.train_labels[new_ids] + 1) % 10
    config.dataset.extra_labels_csv = str(tmp_path / "labels.csv")
    active_learning.write_csv(config.dataset.extra_labels_csv, ("id", "label"), zip(new_ids, given))
    data = training_data.prepare_data(config, dataset)
    assert len(data.labeled_ids) == len(base.labeled_ids) + 5
    assert len(data.unlabeled_ids) == len(base.unlabeled_ids) - 5
    assert not np.isin(new_ids, data.unlabeled_ids).any()
    assert np.all(np.diff(data.labeled_ids) > 0)
    position = np.searchsorted(data.labeled_ids, new_ids)
    np.testing.assert_array_equal(data.labels[position], given)
    np.testing.assert_array_equal(data.labeled_images[position], dataset.train_images[new_ids])
    np.testing.assert_array_equal(data.unlabeled_images, dataset.train_images[data.unlabeled_ids])
    assert data.labeled_images.shape[0] == data.labels.shape[0]


# ------------------------------------------------------------------- the whole loop


def _command(module, *args):
    result = subprocess.run(
        [sys.executable, "-m", f"comatch_jax.commands.{module}", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return result


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A few steps on scikit-learn's digits, a dataset the commands can load by name."""
    workdir = str(tmp_path_factory.mktemp("digits_run"))
    config = tiny_config()
    config.dataset.name = "digits"
    train.train_and_evaluate(config, workdir, writer=RecordingWriter())
    return workdir, config


def test_request_answer_retrain_loop_adds_budget_labels(digits_run, tmp_path):
    workdir, config = digits_run
    requests_csv, labels_csv = str(tmp_path / "requests.csv"), str(tmp_path / "labels.csv")
    result = _command(
        "request_labels",
        f"--workdir={workdir}",
        "--budget=15",
        "--strategy=entropy",
        "--balance_by_predicted_class",
        f"--out={requests_csv}",
    )
    assert result.returncode == 0, result.stderr
    lines = open(requests_csv).read().splitlines()
    assert lines[0] == "id,predicted_class,score" and len(lines) == 16
    page = tmp_path / "requests_page" / "labelling.html"  # the digits' own pixels, as PNGs
    assert f"open {page} in a browser" in result.stderr
    assert len(os.listdir(tmp_path / "requests_page" / "images")) == 15
    names = saved_runs.load_run(workdir).class_names
    assert all(line.split(",")[1] in names for line in lines[1:])  # a class NAME
    base = training_data.prepare_data(config)
    ids = [int(line.split(",")[0]) for line in lines[1:]]
    assert set(ids) <= set(base.unlabeled_ids.tolist())

    result = _command(
        "answer_from_truth",
        f"--requests={requests_csv}",
        f"--workdir={workdir}",
        f"--out={labels_csv}",
    )
    assert result.returncode == 0, result.stderr
    digits_labels = training_data.prepare_data(config)  # ground truth of the answered ids
    truth = dict(zip(digits_labels.unlabeled_ids.tolist(), digits_labels.unlabeled_labels.tolist()))
    answered = [
        tuple(map(int, line.split(","))) for line in open(labels_csv).read().splitlines()[1:]
    ]
    assert answered == [(i, truth[i]) for i in ids]

    config = tiny_config()
    config.dataset.name = "digits"
    config.num_steps = 2
    config.dataset.extra_labels_csv = labels_csv
    retrained = training_data.prepare_data(config)
    assert len(retrained.labeled_ids) == len(base.labeled_ids) + 15
    assert len(retrained.unlabeled_ids) == len(base.unlabeled_ids) - 15
    _, summary = train.train_and_evaluate(
        config, str(tmp_path / "retrained"), writer=RecordingWriter()
    )
    assert summary["final_step"] == 2


def test_requests_skip_labeled_images_kept_in_the_unlabeled_set(digits_run):
    workdir, config = digits_run
    run = saved_runs.load_run(workdir)
    config = tiny_config()
    config.dataset.name = "digits"
    config.dataset.include_labeled_in_unlabeled = True
    data = training_data.prepare_data(config)
    assert np.isin(data.labeled_ids, data.unlabeled_ids).all()
    requests = request_labels.rank_unlabeled(run, data, budget=1480, strategy="entropy")
    assert not np.isin(requests.ids, data.labeled_ids).any()
    assert len(request_labels.rank_unlabeled(run, data, budget=1481, strategy="random").ids) == 1480


def test_requests_skip_images_answered_unknown(digits_run, tmp_path):
    run = saved_runs.load_run(digits_run[0])
    config = tiny_config()
    config.dataset.name = "digits"
    unknown = training_data.prepare_data(config).unlabeled_ids[:2]
    config.dataset.extra_labels_csv = str(tmp_path / "answers.csv")
    (tmp_path / "answers.csv").write_text(f"id,label\n{unknown[0]},__unknown__\n{unknown[1]},3\n")
    data = training_data.prepare_data(config)
    assert data.unknown_ids.tolist() == [unknown[0]] and unknown[0] in data.unlabeled_ids
    requests = request_labels.rank_unlabeled(run, data, budget=1478, strategy="entropy")
    assert not np.isin(unknown, requests.ids).any()
    assert len(request_labels.rank_unlabeled(run, data, budget=1479, strategy="random").ids) == 1478


def test_padding_the_last_batch_changes_no_prediction(digits_run):
    run = saved_runs.load_run(digits_run[0])
    images = training_data.prepare_data(digits_run[1]).test_images
    whole = ema_model.predictor(run, batch_size=len(images))(images)
    padded = ema_model.predictor(run, batch_size=7)(images)
    for name in ("logits", "probs", "embedding", "features"):
        np.testing.assert_allclose(whole[name], padded[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole["probs"].sum(-1), 1.0, rtol=1e-5)


def test_kcenter_requests_score_the_distance_to_the_labeled_images(digits_run, tmp_path):
    out = str(tmp_path / "requests.csv")
    requests = request_labels.request_labels(digits_run[0], out, budget=5, strategy="kcenter")
    rows = [line.split(",") for line in open(out).read().splitlines()[1:]]
    assert [int(row[0]) for row in rows] == list(requests.ids) and len(set(requests.ids)) == 5
    assert all(float(row[2]) > 0 for row in rows)  # distance to the nearest labeled image


def test_likely_unknown_images_are_listed_apart_and_never_requested(digits_run, tmp_path):
    workdir, out = digits_run[0], str(tmp_path / "requests.csv")
    requests = request_labels.request_labels(workdir, out, budget=20, unknown_rate=0.2)
    with open(os.path.join(workdir, ema_model.THRESHOLD_FILE)) as f:
        threshold = json.load(f)["threshold"]
    run = saved_runs.load_run(workdir)
    data = training_data.prepare_data(run.config)
    scorer = ema_model.UnknownScorer(run, ema_model.predictor(run), data)
    scores = scorer(scorer.predict(data.unlabeled_images))
    lines = (tmp_path / "requests_unknown.csv").read_text().splitlines()
    assert lines[0] == "id,unknown_score"
    listed = [(int(key), float(score)) for key, score in (line.split(",") for line in lines[1:])]
    assert sorted(i for i, _ in listed) == sorted(data.unlabeled_ids[scores > threshold])
    assert len(listed) > 20 and [s for _, s in listed] == sorted(
        (s for _, s in listed), reverse=True
    )
    assert not np.isin(requests.ids, [i for i, _ in listed]).any()
    # The recorded threshold: 20 % of the evaluation images (all known) above it.
    known = scorer(scorer.predict(data.test_images))
    assert np.mean(known > threshold) == pytest.approx(0.2, abs=1 / len(known))


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(budget=0), "--budget must be positive, got 0."),
        (dict(budget=5, strategy="coreset"), "Unknown strategy 'coreset'"),
        (dict(budget=5, label_studio_root="/"), "--label_studio_root/url need a run on an image"),
        (
            dict(budget=5, out="{tmp}/a_file/r.csv"),
            "Cannot write {tmp}/a_file/r.csv: {tmp}/a_file is a file, not a directory.",
        ),
        (dict(budget=5, out="{tmp}"), "Cannot write {tmp}: is a directory."),
        (
            dict(budget=5, out="{tmp}/new/"),
            "Cannot write {tmp}/new/: it names a directory, not a file.",
        ),
    ],
)
def test_request_labels_errors_are_one_line(digits_run, tmp_path, options, message):
    """Each is a ValueError or OSError: the command prints it as one `error:` line."""
    (tmp_path / "a_file").write_text("")
    out = options.pop("out", "{tmp}/r.csv").format(tmp=tmp_path)
    with pytest.raises((ValueError, OSError)) as error:
        request_labels.request_labels(digits_run[0], out, **options)
    assert message.format(tmp=tmp_path) in str(error.value) and "\n" not in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["a_file"]  # no file, no temporary file left


def test_answer_from_truth_rejects_unknown_ids(digits_run, tmp_path):
    requests_csv = _write(tmp_path / "requests.csv", "id,score\n5,0.1\n1500,0.2\n")
    config = saved_runs.read_config(digits_run[0])
    with pytest.raises(ValueError, match="line 3: id '1500' is not in the train split"):
        answer_from_truth.answer_requests(requests_csv, str(tmp_path / "l.csv"), config)


def test_nothing_left_to_request_is_said_plainly():
    images = np.zeros((3, 4, 4, 1), np.uint8)
    ids = np.arange(3, dtype=np.int32)
    data = training_data.SemiSupervisedData(
        labeled_images=images,
        labels=ids,
        unlabeled_images=images,
        unlabeled_labels=ids,
        labeled_ids=ids,  # every unlabeled image is also labeled (extra_labels_csv)
        unlabeled_ids=ids,
        test_images=images,
        test_labels=ids,
        num_classes=3,
        class_names=("a", "b", "c"),
        source="test",
    )
    with pytest.raises(ValueError, match=r"No unlabeled train-split image is left to request"):
        request_labels.rank_unlabeled(None, data, budget=5, strategy="entropy")
