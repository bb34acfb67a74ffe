"""The answers CSV (dataset.extra_labels_csv): every bad file is one line naming its row and
the fix, before a run claims its workdir; spreadsheet files simply work, and a label can be
read only one way. Label Studio's exports: label_studio_test.py."""

import unicodedata

import numpy as np
import pytest

from comatch_jax.commands import active_learning
from comatch_jax.data import answers, pipeline
from comatch_jax.trainer import train
from train_test import synthetic_dataset, tiny_config

CLASSES = ("a", "b", "c")


def _read_ids(tmp_path, raw, **kwargs):
    path = tmp_path / "answers.csv"
    path.write_bytes(raw.encode("utf-8") if isinstance(raw, str) else raw)
    kwargs = {"num_images": 10, "labeled_ids": [4], **kwargs}
    return answers.read_answers(str(path), kwargs.pop("classes", CLASSES), **kwargs)


def test_written_answers_read_back(tmp_path):
    path = str(tmp_path / "labels.csv")
    active_learning.write_csv(path, ("id", "label"), [(7, 1), (3, 0)])
    read = answers.read_answers(path, CLASSES, num_images=10, labeled_ids=[0])
    assert read.ids.tolist() == [7, 3] and read.labels.tolist() == [1, 0]
    assert read.ids.dtype == read.labels.dtype == np.int32 and len(read.unknown_ids) == 0


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,label\n12,1\n", r"line 2: id '12' is not in the train split \(ids are 0..9\); fix"),
        ("id,label\n-1,1\n", "line 2: id '-1' is not in the train split"),
        ("id,label\nx7,1\n", "line 2: id 'x7' is not in the train split"),
        ("id,label\n4,1\n", "line 2: id 4 is already in the labeled set; remove it."),
        (
            "id,label\n3,1\n3,2\n",
            "line 3: '3' appears more than once, answered 'c' here and 'b' on line 2; keep one",
        ),
        (
            "id,label\n3,5\n",
            r"line 2: label '5' is neither a class name \(a, b, c\) nor an index 0..2, nor "
            "__unknown__",
        ),
        ("id,label\n3,cat\n", "line 2: label 'cat' is neither a class name"),
        ("id,label\n3\n", "line 2: 1 fields, the header has 2"),
        ("id,label\n5,b\n6,", "line 3: label '' is neither a class name"),  # a half-written row
        ("image,label\n3,1\n", r"header 'image,label' lacks column\(s\) id; expected a header"),
        ("\ufeff\ufeffid,label\n3,1\n", r"header '\\ufeffid,label' lacks column\(s\) id"),
        ("", "is empty; expected a header with columns id,label"),
        ("id,label\n", "has a header but no rows; add id,label rows or unset it"),
    ],
)
def test_a_bad_answers_file_is_one_line_naming_the_row(tmp_path, text, message):
    with pytest.raises(ValueError, match=message) as error:
        _read_ids(tmp_path, text)
    assert "\n" not in str(error.value) and "answers.csv" in str(error.value)


def test_a_missing_file_is_named():
    with pytest.raises(FileNotFoundError, match="No such file or directory: 'nowhere.csv'"):
        answers.read_answers("nowhere.csv", CLASSES, num_images=10)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xef\xbb\xbfid,label\r\n7,b\r\n3,0\r\n",  # spreadsheet: UTF-8 with BOM, CRLF
        b"id,label\r\n7,1\r\n3,0\r\n\r\n\r\n",  # blank trailing lines
        b'"id","label"\n"7","1"\n" 3 ",a\n',  # quoted fields, spaces around a number
        b"\xef\xbb\xbf id , label \n7,1\n\n3,0\n,\n7,b\n",  # header spaces, blank rows, a repeat
    ],
)
def test_answers_as_spreadsheets_save_them(tmp_path, raw):
    read = _read_ids(tmp_path, raw)
    assert read.ids.tolist() == [7, 3] and read.labels.tolist() == [1, 0]


def test_a_label_that_is_one_class_and_the_index_of_another_is_refused(tmp_path):
    """Class folders 0, 1, 2, 10 sort as 0, 1, 10, 2: '2' names class '2' (index 3), but
    index 2 is class '10'."""
    classes = ("0", "1", "10", "2")
    with pytest.raises(ValueError) as error:
        _read_ids(tmp_path, "id,label\n5,1\n6,2\n", classes=classes)
    assert str(error.value) == (
        f"{tmp_path / 'answers.csv'} line 3: label '2' is both the class named '2' and class "
        "index 2 (the class '10'); rename the class folders so that no name is a number (e.g. "
        "class_2) and write class names."
    )
    # A name that is its own index, a name past the indices, an index that is no name: one way.
    read = _read_ids(tmp_path, "id,label\n5,1\n6,10\n7,3\n", classes=classes)
    assert read.labels.tolist() == [1, 2, 3]


def test_an_image_folders_labels_are_its_folder_names_never_indices(tmp_path):
    """Folders 0, 1, 2, 10 (sorted 0, 1, 10, 2): the page's and the requests CSV's '2' is the
    folder '2'; '3', an index but no folder, is refused."""
    classes, pool = ("0", "1", "10", "2"), ["unlabeled/a.png", "unlabeled/b.png"]
    folder = dict(classes=classes, root=str(tmp_path), unlabeled_paths=pool)
    read = _read_ids(tmp_path, "path,label\nunlabeled/a.png,2\nunlabeled/b.png,10\n", **folder)
    assert read.labels.tolist() == [3, 2]
    with pytest.raises(ValueError) as error:
        _read_ids(tmp_path, "path,label\nunlabeled/a.png,3\n", **folder)
    assert str(error.value) == (
        f"{tmp_path / 'answers.csv'} line 2: label '3' is neither a class name (0, 1, 10, 2) nor "
        "__unknown__ (none of these classes); fix the row or remove it."
    )


def test_class_names_match_in_either_unicode_form(tmp_path):
    composed, decomposed = "café", unicodedata.normalize("NFD", "café")
    assert composed != decomposed
    for classes, typed in [((composed, "tea"), decomposed), ((decomposed, "tea"), composed)]:
        read = _read_ids(tmp_path, f"id,label\n5,{typed}\n6,tea\n", classes=classes)
        assert read.labels.tolist() == [0, 1]


def test_unknown_answers_are_kept_apart_and_the_digest_follows_the_bytes(tmp_path):
    read = _read_ids(tmp_path, "id,label\n5,__unknown__\n6,b\n")
    assert read.ids.tolist() == [6] and read.labels.tolist() == [1]
    assert read.unknown_ids.tolist() == [5]
    with pytest.raises(ValueError, match="answered '__unknown__' here and 'b' on line 2"):
        _read_ids(tmp_path, "id,label\n6,b\n6,__unknown__\n")
    again = _read_ids(tmp_path, "id,label\n5,__unknown__\n6,b\n")
    changed = _read_ids(tmp_path, "id,label\n5,__unknown__\n6,c\n")
    assert read.digest == again.digest != changed.digest and len(read.digest) == 64


def test_paths_of_the_unlabeled_pool(tmp_path):
    root = str(tmp_path / "folder")
    pool = ("unlabeled/x.png", "unlabeled/d/y z.png")
    read = _read_ids(
        tmp_path,
        f"path,label\n{root}/unlabeled/d/y z.png,c\n unlabeled/x.png ,a\n",
        root=root,
        unlabeled_paths=pool,
    )
    assert read.ids.tolist() == [1, 0] and read.labels.tolist() == [2, 0]
    with pytest.raises(
        ValueError, match=r"line 2: 'unlabeled/n.png' is not an image of .*/unlabeled/"
    ):
        _read_ids(tmp_path, "path,label\nunlabeled/n.png,a\n", root=root, unlabeled_paths=pool)
    with pytest.raises(ValueError, match="expected a header with columns path,label"):
        _read_ids(tmp_path, "id,label\n1,a\n", root=root, unlabeled_paths=pool)


def test_a_half_written_answers_file_stops_the_run_before_it_claims_its_workdir(tmp_path):
    config, dataset = tiny_config(), synthetic_dataset()
    free = pipeline.prepare_data(config, dataset).unlabeled_ids[:2]
    config.dataset.extra_labels_csv = str(tmp_path / "answers.csv")
    (tmp_path / "answers.csv").write_text(f"id,label\n{free[0]},1\n{free[1]},")  # cut mid-row
    with pytest.raises(ValueError, match="line 3: label '' is neither a class name") as error:
        train.train_and_evaluate(config, str(tmp_path / "run"), dataset=dataset)
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


def test_a_missing_answers_file_is_one_line_naming_the_field(tmp_path):
    config, dataset = tiny_config(), synthetic_dataset()
    config.dataset.extra_labels_csv = str(tmp_path / "moved.csv")
    with pytest.raises(ValueError, match=r"^dataset.extra_labels_csv: no file .*moved.csv") as e:
        train.train_and_evaluate(config, str(tmp_path / "run"), dataset=dataset)
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()
