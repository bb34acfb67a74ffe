"""Label Studio files: the writers' tasks JSON and labelling config parse back with every
name escaped, and the answers reader takes Label Studio's own exports (tests/testdata/
label_studio, written by Label Studio 1.23.2 in experiments/label_studio_round_trip.py)."""

import json
import os
import urllib.parse
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

from comatch_jax.commands import request_labels
from comatch_jax.data import answers
from comatch_jax.data.answers import CHOICES_NAME, IMAGE_NAME, UNKNOWN as UNKNOWN_LABEL

FIXTURES = os.path.join(os.path.dirname(__file__), "testdata", "label_studio")
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
HOSTILE = ["cat & dog #1?%+.jpg", "<img src=x onerror=alert(1)>.jpg"]
POOL = [f"unlabeled/{i:06d}.jpg" for i in range(6)] + [f"unlabeled/{name}" for name in HOSTILE]
# What the round trip annotated: task 2 cancelled, task 3 twice (dog, then frog).
ANSWERS = {
    POOL[0]: "cat",
    POOL[2]: "frog",
    POOL[3]: UNKNOWN_LABEL,
    POOL[6]: "airplane",
    POOL[7]: "truck",
}
EXPORTS = ["export.json", "export_min.json", "export.csv"]


def read_export(path, unlabeled_paths=POOL, class_names=CIFAR10):
    """The export's answers as (paths, labels), through the one answers reader."""
    read = answers.read_answers(
        str(path), class_names, root="/data/root", unlabeled_paths=unlabeled_paths
    )
    ids = [*read.ids.tolist(), *read.unknown_ids.tolist()]
    labels = [class_names[c] for c in read.labels] + [UNKNOWN_LABEL] * len(read.unknown_ids)
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    return [unlabeled_paths[ids[i]] for i in order], [labels[i] for i in order]


@pytest.mark.parametrize("name", EXPORTS)
def test_reads_label_studios_exports(name):
    paths, labels = read_export(os.path.join(FIXTURES, name))
    assert dict(zip(paths, labels)) == ANSWERS
    assert len(paths) == len(ANSWERS)  # one answer per image


@pytest.mark.parametrize("name", EXPORTS)
def test_reads_an_export_saved_with_a_byte_order_mark_and_crlf(tmp_path, name):
    text = open(os.path.join(FIXTURES, name), encoding="utf-8").read()
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    paths, labels = read_export(path)
    assert dict(zip(paths, labels)) == ANSWERS


def test_the_committed_tasks_are_what_the_round_trip_imported():
    tasks = json.load(open(os.path.join(FIXTURES, "tasks.json"), encoding="utf-8"))
    urls = [task["data"]["image"] for task in tasks]
    assert [urllib.parse.unquote(url.split("?d=")[1]) for url in urls] == POOL
    exported = json.load(open(os.path.join(FIXTURES, "export.json"), encoding="utf-8"))
    assert {t["data"]["image"] for t in exported} <= set(urls)


def test_written_tasks_and_config_parse_back_with_names_escaped(tmp_path):
    classes = ["</script>", 'a & "b" <c>', "plain"]
    names = POOL[:1] + [f"unlabeled/{name}" for name in HOSTILE] + ["unlabeled/\udcff.jpg"]
    path = tmp_path / "r_tasks.json"
    request_labels.write_label_studio_files(
        str(tmp_path / "r"),
        [os.path.join("/data/root", name) for name in names],
        np.array([0, 1, 2, 1]),
        np.array([2.5, 1.5, 0.5, 0.25]),
        classes,
        document_root="/data",
    )
    tasks = json.load(open(path, encoding="utf-8"))
    for task, name in zip(tasks, names):
        encoded = task["data"]["image"].removeprefix(request_labels.LOCAL_FILES)
        assert not set(encoded) & set(" <>&#?%+\"'") - {"%"}  # only %XX escapes
        assert os.fsdecode(urllib.parse.unquote_to_bytes(encoded)) == "root/" + name
    predictions = [task["predictions"][0] for task in tasks]
    assert [p["score"] for p in predictions] == [2.5, 1.5, 0.5, 0.25]
    assert [p["result"][0]["value"]["choices"] for p in predictions] == [
        [classes[0]],
        [classes[1]],
        [classes[2]],
        [classes[1]],
    ]
    config = ElementTree.parse(tmp_path / "r_label_config.xml").getroot()
    choices = config.find("Choices")
    assert choices.get("name") == CHOICES_NAME and choices.get("choice") == "single"
    assert [c.get("value") for c in choices] == classes + [UNKNOWN_LABEL]
    assert config.find("Image").get("value") == "$" + IMAGE_NAME


@pytest.mark.parametrize("prefix", [request_labels.LOCAL_FILES, "http://host:8081/files/"])
def test_written_urls_map_back_to_the_pool(tmp_path, prefix):
    names = POOL[:2] + [f"unlabeled/{name}" for name in HOSTILE] + ["unlabeled/\udcff.jpg"]
    request_labels.write_label_studio_files(
        str(tmp_path / "r"),
        [os.path.join("/data/root", name) for name in names],
        np.zeros(len(names), int),
        np.ones(len(names)),
        CIFAR10,
        document_root="/data",
        url_prefix=prefix,
    )
    tasks = json.load(open(tmp_path / "r_tasks.json", encoding="utf-8"))
    rows = [{"id": i, "image": t["data"]["image"], "label": "ship"} for i, t in enumerate(tasks)]
    path = tmp_path / "export_min.json"
    path.write_text(json.dumps(rows))
    paths, labels = read_export(path, names)
    assert paths == names and labels == ["ship"] * len(names)


def _task(task_id, image, *annotations):
    return {
        "id": task_id,
        "data": {"image": request_labels.LOCAL_FILES + urllib.parse.quote(image)},
        "annotations": [
            {
                "id": annotation_id,
                "was_cancelled": cancelled,
                "updated_at": updated_at,
                "result": [] if label is None else [
                    {"type": "choices", "from_name": "label", "to_name": "image",
                     "value": {"choices": [label]}}
                ],
            }  # fmt: skip
            for annotation_id, updated_at, label, cancelled in annotations
        ],
    }


def test_the_annotation_updated_last_counts_and_cancelled_ones_never(tmp_path):
    tasks = [
        # Annotation 5 was made first but edited last (a reviewer's correction): it counts.
        _task(
            1,
            POOL[0],
            (5, "2024-05-02T10:00:00.5Z", "dog", 0),
            (6, "2024-05-01T10:00:00Z", "cat", 0),
        ),
        # A cancelled (skipped) annotation never counts, even the latest one with a choice.
        _task(
            2,
            POOL[1],
            (7, "2024-05-03T10:00:00Z", "ship", 1),
            (8, "2024-05-01T09:00:00Z", "bird", 0),
        ),
        _task(3, POOL[2], (9, "2024-05-04T10:00:00Z", "ship", 1)),  # only cancelled: no answer
        _task(4, POOL[0], (10, "2024-05-01T11:00:00Z", "frog", 0)),  # the same image again: older
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    paths, labels = read_export(path)
    assert (paths, labels) == ([POOL[0], POOL[1]], ["dog", "bird"])


def _edited_fixture(tmp_path, name, edit):
    path = tmp_path / name
    text = open(os.path.join(FIXTURES, name), encoding="utf-8").read()
    path.write_text(edit(text), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "name, edit, pool, message",
    [
        ("export_min.json", lambda t: t.replace('"cat"', '"kitten"'), POOL,
         r"entry 1 \(task 1\): label 'kitten' is neither a class"),
        ("export.json", lambda t: t.replace('"frog"', '"kitten"'), POOL,
         r"entry 3 \(task 3\): label 'kitten'"),
        ("export.csv", lambda t: t.replace(',"truck"', ',"kitten"'), POOL,
         r"line 7 \(task 8\): label 'kitten'"),
        ("export.csv", lambda t: t, POOL[1:], r"line 2 \(task 1\): image .* is not in the unlabeled pool"),
        ("export.json", lambda t: t, POOL[1:], r"entry 1 \(task 1\): image .* is not in the unlabeled"),
        ("export.json", lambda t: t[:100], POOL, "cannot read it as JSON"),
        ("export.json", lambda t: '{"tasks": []}', POOL, "not a list of tasks"),
        ("export.json", lambda t: t.replace('"data"', '"dato"'), POOL,
         r"entry 1 \(task 1\): not a Label Studio task .*KeyError"),
        ("export.json", lambda t: "[]", POOL, "no answered image"),
        ("export_min.json", lambda t: t.replace('"image"', '"picture"'), POOL, "not a Label Studio task"),
        ("export_min.json", lambda t: t.replace('"annotation_id": 1,', '"annotation_id": "one",'), POOL, "not a Label Studio task"),
        ("export.csv", lambda t: t.replace('"label"', '"class"', 1), POOL, "lacks column"),
        ("export.csv", lambda t: "", POOL, "is empty"),
        ("export.csv", lambda t: t[: t.rindex('"truck"') + 3], POOL,
         "line 7: 6 fields, the header has 8"),  # a half-written file
        ("export.json", lambda t: t[: t.rindex('"truck"') + 3], POOL, "cannot read it as JSON"),
    ],
)  # fmt: skip
def test_bad_exports_are_one_line_naming_the_row(tmp_path, name, edit, pool, message):
    path = _edited_fixture(tmp_path, name, edit)
    with pytest.raises(ValueError, match=message) as error:
        read_export(path, pool)
    assert "\n" not in str(error.value) and str(error.value).startswith(path)


def test_files_outside_the_document_root_are_refused(tmp_path):
    with pytest.raises(ValueError, match="outside the document root /data"):
        request_labels.write_label_studio_files(
            str(tmp_path / "r"), ["/elsewhere/a.jpg"], [0], [1.0], CIFAR10, document_root="/data"
        )
    assert not os.listdir(tmp_path)
