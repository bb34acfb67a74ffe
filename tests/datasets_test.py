"""Tests for the comatch_jax.data readers (offline: IDX files, TFDS mock, tiny TFDS), the
labeled split, normalisation statistics and data fingerprints."""

import functools
import gzip
import logging
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from comatch_jax import config_lib
from comatch_jax import data as datasets
from comatch_jax.data import idx, tfds_source

from core_imports_test import without_tensorflow

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


# --------------------------------------------------------------------------- helpers


def _write_idx(path, array, *, type_byte=0x08, big_endian_dtype=">u1"):
    """Writes `array` as an IDX file; gzipped when `path` ends with .gz."""
    array = np.asarray(array)
    header = bytes([0, 0, type_byte, array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(big_endian_dtype).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(raw)
    return str(path)


def _fake_arrays(num_train=30, num_test=10, height=6, width=7, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (num_train, height, width), np.uint8),
        "train_labels": (np.arange(num_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (num_test, height, width), np.uint8),
        "test_labels": (np.arange(num_test)[::-1] % 10).astype(np.uint8),
    }


def _write_idx_dir(directory, arrays, gz_keys=("train_images", "train_labels")):
    """Writes the four IDX files; `gz_keys` are gzipped, the others plain."""
    os.makedirs(directory, exist_ok=True)
    for key, base in idx.IDX_FILENAMES.items():
        name = base + ".gz" if key in gz_keys else base
        _write_idx(os.path.join(directory, name), arrays[key])
    return str(directory)


def _config(**overrides):
    """A run config whose dataset section has `overrides` (the IDX files in DEBIAN_DIR)."""
    config = config_lib.base_config()
    config.dataset.idx_dir = DEBIAN_DIR
    config.dataset.update(overrides)
    return config


def _tfds():
    pytest.importorskip("tensorflow")
    return pytest.importorskip("tensorflow_datasets")


@functools.lru_cache(maxsize=None)
def _register_tiny_builder():
    """Registers (once) a tiny real TFDS dataset that prepares without downloads."""
    tfds = _tfds()

    class ComatchTinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(4, 5, 3)),
                        "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {
                "train": self._generate_examples(12, 0),
                "test": self._generate_examples(6, 100),
            }

        def _generate_examples(self, n, offset):
            for i in range(n):
                image = np.full((4, 5, 3), offset + i, np.uint8)
                yield i, {"image": image, "label": i % 3}

    return "comatch_tiny_images"


# ------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_file_uint8(tmp_path, suffix):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = _write_idx(tmp_path / f"x-idx3-ubyte{suffix}", array)
    out = datasets.read_idx_file(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)


def test_read_idx_file_big_endian_int32(tmp_path):
    array = np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int32)
    path = _write_idx(tmp_path / "x.idx", array, type_byte=0x0C, big_endian_dtype=">i4")
    out = datasets.read_idx_file(path)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("gz_keys", [(), tuple(idx.IDX_FILENAMES)])
def test_load_idx_dataset_shapes_and_values(tmp_path, gz_keys):
    arrays = _fake_arrays()
    directory = _write_idx_dir(tmp_path / "idx", arrays, gz_keys=gz_keys)
    ds = datasets.load_idx_dataset(directory, "fashion_mnist")
    assert ds.train_images.shape == (30, 6, 7, 1)
    assert ds.test_images.shape == (10, 6, 7, 1)
    assert ds.train_images.dtype == np.uint8 and ds.test_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
    np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(ds.test_labels, arrays["test_labels"])
    assert ds.num_classes == 10 and ds.class_names == idx.FASHION_MNIST_CLASS_NAMES
    assert ds.source == f"idx:{directory}"
    assert ds.unlabeled_images is None


def test_load_idx_dataset_mixed_gz_and_plain(tmp_path):
    arrays = _fake_arrays()
    directory = _write_idx_dir(tmp_path / "idx", arrays)  # train .gz, test plain
    ds = datasets.load_idx_dataset(directory, "fashion_mnist")
    np.testing.assert_array_equal(ds.test_images[..., 0], arrays["test_images"])


def test_corrupt_magic_names_file(tmp_path):
    directory = _write_idx_dir(tmp_path / "idx", _fake_arrays(), gz_keys=())
    bad = os.path.join(directory, "t10k-labels-idx1-ubyte")
    with open(bad, "r+b") as f:
        f.write(b"\x12\x34")
    with pytest.raises(ValueError, match="magic number") as info:
        datasets.load_idx_dataset(directory, "fashion_mnist")
    assert bad in str(info.value)


def test_truncated_plain_file_names_file(tmp_path):
    directory = _write_idx_dir(tmp_path / "idx", _fake_arrays(), gz_keys=())
    bad = os.path.join(directory, "train-images-idx3-ubyte")
    with open(bad, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="truncated") as info:
        datasets.load_idx_dataset(directory, "fashion_mnist")
    assert bad in str(info.value)


def test_truncated_gz_file_names_file(tmp_path):
    directory = _write_idx_dir(tmp_path / "idx", _fake_arrays())
    bad = os.path.join(directory, "train-images-idx3-ubyte.gz")
    with open(bad, "rb") as f:
        data = f.read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        datasets.load_idx_dataset(directory, "fashion_mnist")
    assert bad in str(info.value)


def test_images_labels_count_mismatch(tmp_path):
    arrays = _fake_arrays()
    arrays["test_labels"] = arrays["test_labels"][:-1]
    directory = _write_idx_dir(tmp_path / "idx", arrays)
    with pytest.raises(ValueError, match="disagree"):
        datasets.load_idx_dataset(directory, "fashion_mnist")


def test_missing_dir_mentions_debian_package(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as info:
        datasets.load_idx_dataset(missing, "fashion_mnist")
    assert missing in str(info.value)
    assert "idx_dir" in str(info.value) and "source=tfds" in str(info.value)


def test_mnist_from_fashion_dir_is_refused(tmp_path):
    directory = _write_idx_dir(tmp_path / "fashion-mnist", _fake_arrays())
    with pytest.raises(ValueError, match="Fashion-MNIST"):
        datasets.load_idx_dataset(directory, "mnist")


@pytest.mark.skipif(
    not os.path.isdir(DEBIAN_DIR),
    reason=f"{DEBIAN_DIR} absent (apt-get install dataset-fashion-mnist)",
)
def test_real_debian_fashion_mnist():
    ds = datasets.load_dataset(_config(source="idx", idx_dir=DEBIAN_DIR))
    assert ds.train_images.shape == (60000, 28, 28, 1)
    assert ds.test_images.shape == (10000, 28, 28, 1)
    assert ds.train_images.dtype == np.uint8
    assert ds.num_classes == 10 and len(ds.class_names) == 10
    assert ds.train_labels.min() == 0 and ds.train_labels.max() == 9
    assert ds.test_labels.min() == 0 and ds.test_labels.max() == 9
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
    assert ds.source == f"idx:{DEBIAN_DIR}"
    assert 0 < ds.train_images.mean() < 255


def test_idx_and_split_work_without_tensorflow(tmp_path):
    directory = _write_idx_dir(tmp_path / "idx", _fake_arrays())
    code = textwrap.dedent(f"""
        import importlib.util
        assert importlib.util.find_spec("tensorflow") is None  # hidden
        from comatch_jax import data as ip
        ds = ip.load_idx_dataset({directory!r}, "fashion_mnist")
        lab, unl = ip.split_labeled_unlabeled(
            ds.train_labels, num_labels=10, num_classes=10, seed=0
        )
        assert len(lab) == 10 and len(unl) == 20
        print("OK")
        """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=without_tensorflow()
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


# ----------------------------------------------------------------------------- TFDS


@pytest.mark.parametrize(
    "name, shape, first_class",
    [("cifar10", (32, 32, 3), None), ("fashion_mnist", (28, 28, 1), "T-shirt/top")],
)
def test_tfds_under_mock_data(tmp_path, name, shape, first_class):
    tfds = _tfds()
    with tfds.testing.mock_data(num_examples=6):
        ds = datasets.load_dataset(_config(name=name, source="tfds", data_dir=str(tmp_path)))
    assert ds.train_images.shape == (6,) + shape
    assert ds.test_images.shape == (6,) + shape
    assert ds.train_images.dtype == np.uint8 and ds.test_images.dtype == np.uint8
    assert ds.train_labels.shape == (6,) and ds.train_labels.dtype == np.int32
    assert ds.test_labels.dtype == np.int32
    assert ds.num_classes == 10 and len(ds.class_names) == 10
    assert np.all((ds.train_labels >= 0) & (ds.train_labels < 10))
    if first_class is not None:
        assert ds.class_names[0] == first_class
    assert ds.source.startswith(f"tfds:{name}")


def test_tfds_mock_stl10_extra_unlabeled(tmp_path):
    tfds = _tfds()
    config = _config(
        name="stl10",
        source="auto",
        data_dir=str(tmp_path),
        extra_unlabeled_split="unlabelled",
    )
    with tfds.testing.mock_data(num_examples=3):
        ds = datasets.load_dataset(config)
    assert ds.train_images.shape == (3, 96, 96, 3)
    assert ds.unlabeled_images.shape == (3, 96, 96, 3)
    assert ds.unlabeled_images.dtype == np.uint8
    assert ds.source.startswith("tfds:stl10")


def test_tfds_prepared_tiny_dataset(tmp_path):
    name = _register_tiny_builder()
    data_dir = str(tmp_path / "tfds")
    assert not datasets.tfds_is_prepared(name, data_dir)
    ds = datasets.load_tfds_dataset(name, data_dir)
    assert datasets.tfds_is_prepared(name, data_dir)
    assert ds.train_images.shape == (12, 4, 5, 3)
    assert ds.test_images.shape == (6, 4, 5, 3)
    assert ds.class_names == ("a", "b", "c") and ds.num_classes == 3
    assert ds.train_labels.dtype == np.int32
    # Labels follow images (TFDS shuffles the order when preparing).
    np.testing.assert_array_equal(ds.train_images[:, 0, 0, 0] % 3, ds.train_labels)
    assert sorted(ds.test_images[:, 0, 0, 0]) == list(range(100, 106))
    assert data_dir in ds.source
    sliced = datasets.load_tfds_dataset(name, data_dir, train_split="train[:4]", download=False)
    assert sliced.train_images.shape == (4, 4, 5, 3)


def test_auto_uses_idx_when_tfds_not_prepared(tmp_path, caplog):
    """The fallback is the normal offline case: one INFO line names the source, and no
    library warning (TFDS's is_prepared() warns about a missing dataset_info.json)."""
    _tfds()
    directory = _write_idx_dir(tmp_path / "idx", _fake_arrays())
    empty = tmp_path / "tfds_empty"
    empty.mkdir()
    config = _config(source="auto", data_dir=str(empty), idx_dir=directory)
    with caplog.at_level(logging.INFO, logger="absl"):  # an earlier entry point may quiet it
        ds = datasets.load_dataset(config)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == [
        f"fashion_mnist: reading the IDX files in {directory}."
    ]
    assert ds.source == f"idx:{directory}"
    assert ds.train_images.shape == (30, 6, 7, 1)
    assert not any(empty.iterdir())  # nothing was downloaded or prepared


def test_auto_prefers_prepared_tfds(tmp_path):
    tfds = _tfds()
    # Real fashion_mnist metadata (no data) makes the builder count as prepared.
    metadata = tmp_path / "metadata"
    builder = tfds.builder("fashion_mnist", data_dir=str(tmp_path / "unused"))
    version_dir = metadata / "fashion_mnist" / str(builder.version)
    version_dir.mkdir(parents=True)
    builder.info.write_to_directory(str(version_dir))
    directory = _write_idx_dir(tmp_path / "idx", _fake_arrays())
    with tfds.testing.mock_data(num_examples=4, data_dir=str(metadata)):
        ds = datasets.load_dataset(_config(source="auto", idx_dir=directory))
    assert ds.source.startswith("tfds:fashion_mnist")
    assert ds.train_images.shape == (4, 28, 28, 1)


def test_auto_without_any_data_raises_one_clear_error(tmp_path, monkeypatch):
    _tfds()

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(tfds_source, "load_tfds_dataset", offline)
    empty = tmp_path / "tfds_empty"
    empty.mkdir()
    config = _config(data_dir=str(empty), idx_dir=str(tmp_path / "no_idx"))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as info:
        datasets.load_dataset(config)
    message = str(info.value)
    assert "no internet" in message and "source=tfds" in message


# -------------------------------------------------------------------------- dispatch


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match="cifar10") as info:
        datasets.load_dataset(_config(name="imagenet"))
    for name in datasets.KNOWN_DATASETS:
        assert name in str(info.value)


def test_idx_source_rejects_split_slicing(tmp_path):
    directory = _write_idx_dir(tmp_path / "idx", _fake_arrays())
    config = _config(source="idx", idx_dir=directory, train_split="train[:10]")
    with pytest.raises(ValueError, match="source=tfds"):
        datasets.load_dataset(config)


def test_digits():
    pytest.importorskip("sklearn")
    ds = datasets.load_dataset(_config(name="digits"))
    assert ds.train_images.shape == (1500, 8, 8, 1)
    assert ds.test_images.shape == (297, 8, 8, 1)
    assert ds.train_images.dtype == np.uint8 and ds.train_images.max() == 255
    assert ds.source == "sklearn:load_digits"


def test_image_dataset_validates_shapes():
    images = np.zeros((2, 3, 3), np.uint8)  # 3-D: missing channel axis
    labels = np.zeros((2,), np.int32)
    with pytest.raises(ValueError, match="train_images"):
        datasets.ImageDataset(images, labels, images[..., None], labels, 1, ("a",), "x")


# ---------------------------------------------------------------------------- split


def _labels(per_class=50, num_classes=10, seed=0):
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels).astype(np.int32)


def test_split_balanced_sorted_disjoint_covering():
    labels = _labels()
    lab, unl = datasets.split_labeled_unlabeled(labels, num_labels=40, num_classes=10, seed=1)
    assert lab.dtype == np.int32 and unl.dtype == np.int32
    assert len(lab) == 40 and len(unl) == len(labels) - 40
    np.testing.assert_array_equal(np.bincount(labels[lab], minlength=10), [4] * 10)
    assert np.all(np.diff(lab) > 0) and np.all(np.diff(unl) > 0)
    assert not set(lab) & set(unl)
    np.testing.assert_array_equal(np.sort(np.concatenate([lab, unl])), np.arange(500))


def test_split_seeded():
    labels = _labels()
    kwargs = dict(num_labels=40, num_classes=10)
    a = datasets.split_labeled_unlabeled(labels, seed=3, **kwargs)
    b = datasets.split_labeled_unlabeled(labels, seed=3, **kwargs)
    c = datasets.split_labeled_unlabeled(labels, seed=4, **kwargs)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_split_include_labeled_in_unlabeled():
    labels = _labels()
    lab, unl = datasets.split_labeled_unlabeled(
        labels, num_labels=20, num_classes=10, seed=0, include_labeled_in_unlabeled=True
    )
    np.testing.assert_array_equal(unl, np.arange(len(labels)))
    assert set(lab) <= set(unl)


def test_split_all_labels():
    labels = _labels(per_class=3)
    lab, unl = datasets.split_labeled_unlabeled(labels, num_labels=30, num_classes=10, seed=0)
    np.testing.assert_array_equal(lab, np.arange(30))
    assert unl.shape == (0,) and unl.dtype == np.int32


@pytest.mark.parametrize(
    "labels, num_labels, match",
    [
        (_labels(), 45, "num_labels=45 is not a positive multiple of num_classes=10"),
        (_labels(), 0, "num_labels=0 is not a positive multiple"),
        (_labels(), -10, "num_labels=-10 is not a positive multiple"),
        (_labels(per_class=2), 30, "Class 0 has 2 images but 3 labels per class are needed"),
        (np.concatenate([_labels(per_class=10), np.zeros(50, np.int32)]), 120, "Class 1 has 10"),
    ],
)
def test_split_errors(labels, num_labels, match):
    with pytest.raises(ValueError, match=match):
        datasets.split_labeled_unlabeled(labels, num_labels=num_labels, num_classes=10, seed=0)


def test_a_dataset_with_labels_outside_its_classes_is_refused():
    images, labels = np.zeros((4, 2, 2, 1), np.uint8), np.array([0, 1, 2, 10], np.int32)
    with pytest.raises(ValueError, match=r"train_images: labels int32 \(4,\) from 0 to 10, not"):
        datasets.ImageDataset(images, labels, images, labels % 2, 2, ("a", "b"), "x")


# -------------------------------------------------------------------- normalisation


def _dataset(channels=3, n=6, size=4, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    labels = (np.arange(n) % 2).astype(np.int32)
    fields = dict(
        train_images=images,
        train_labels=labels,
        test_images=images[:2],
        test_labels=labels[:2],
        num_classes=2,
        class_names=("a", "b"),
        source="test",
    )
    fields.update(kwargs)
    return datasets.ImageDataset(**fields)


def _numpy_statistics(*arrays):
    pixels = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays]).astype(np.float64) / 255
    return pixels.mean(axis=0), pixels.std(axis=0)


def test_pixel_sums_and_image_statistics_match_numpy(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (70, 5, 3, 3), dtype=np.uint8)  # more rows than one block
    np.save(tmp_path / "b.npy", rng.integers(0, 256, (9, 5, 3, 3), dtype=np.uint8))
    b = np.load(tmp_path / "b.npy", mmap_mode="r")
    sums = datasets.pixel_sums(a)
    assert sums.dtype == np.int64 and sums.shape == (70, 2, 3)
    flat = a.reshape(70, -1, 3).astype(np.int64)
    np.testing.assert_array_equal(sums[:, 0], flat.sum(1))
    np.testing.assert_array_equal(sums[:, 1], (flat**2).sum(1))
    mean, std = datasets.image_statistics(a, None, b)
    expected_mean, expected_std = _numpy_statistics(a, np.asarray(b))
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(std, expected_std, rtol=1e-12)
    # Hand-checked: pixels 0 and 255 -> mean 0.5, std 0.5.
    two = np.array([0, 255], np.uint8).reshape(1, 2, 1, 1)
    assert datasets.image_statistics(two) == ((0.5,), (0.5,))


def test_resolve_normalization_user_values_win():
    dataset = _dataset(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    assert datasets.resolve_normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), dataset) == (
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
    )
    assert datasets.resolve_normalization((), (), dataset) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))


def test_resolve_normalization_measures_a_dataset_without_statistics():
    unlabeled = np.random.default_rng(5).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    dataset = _dataset(unlabeled_images=unlabeled)
    mean, std = datasets.resolve_normalization((), (), dataset)
    expected_mean, expected_std = _numpy_statistics(dataset.train_images, unlabeled)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(std, expected_std, rtol=1e-12)


@pytest.mark.parametrize(
    "channels, mean, std, message",
    [
        (
            1,
            (0.5, 0.5, 0.5),
            (0.2, 0.2, 0.2),
            "dataset.mean has 3 values but the images have 1 channel; set "
            "--config.dataset.mean to 1 values",
        ),
        (3, (0.3,), (0.3,), "dataset.mean has 1 values but the images have 3 channels"),
        (3, (0.3, 0.3, 0.3), (0.3,), "dataset.std has 1 values but the images have 3 channels"),
        (1, (0.5,), (0.0,), "dataset.std (0.0000) has an entry <= 0"),
    ],
)
def test_resolve_normalization_errors_are_one_line(channels, mean, std, message):
    with pytest.raises(ValueError) as raised:
        datasets.resolve_normalization(mean, std, _dataset(channels=channels))
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_named_datasets_carry_standard_statistics(tmp_path):
    directory = _write_idx_dir(tmp_path / "idx", _fake_arrays())
    fashion = datasets.load_idx_dataset(directory, "fashion_mnist")
    assert (fashion.mean, fashion.std) == ((0.2860,), (0.3530,))
    assert (fashion.name, fashion.channels) == ("fashion_mnist", 1)
    assert set(fashion.file_digests) == {"train", "test"}  # hashes of the IDX files' stats
    for name, stats in datasets.STANDARD_STATISTICS.items():
        channels = 1 if name in ("fashion_mnist", "mnist") else 3
        assert len(stats[0]) == len(stats[1]) == channels, name
        assert all(0 < v < 1 for v in stats[0] + stats[1]), name


def test_tfds_cifar10_carries_its_statistics(tmp_path):
    tfds = _tfds()
    with tfds.testing.mock_data(num_examples=2):
        ds = datasets.load_dataset(_config(name="cifar10", source="tfds", data_dir=str(tmp_path)))
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2471, 0.2435, 0.2616)
    assert datasets.resolve_normalization((), (), ds) == (ds.mean, ds.std)


def test_digits_statistics_are_measured_on_the_train_split():
    pytest.importorskip("sklearn")
    ds = datasets.load_dataset(_config(name="digits"))
    expected_mean, expected_std = _numpy_statistics(ds.train_images)
    np.testing.assert_allclose(ds.mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(ds.std, expected_std, rtol=1e-12)


def test_image_dataset_rejects_statistics_of_the_wrong_length():
    with pytest.raises(ValueError, match="ImageDataset.mean has 1 values for 3-channel"):
        _dataset(mean=(0.5,), std=(0.5,))


# ---------------------------------------------------------------------- fingerprints


def _fingerprint(counts=(6, 2, 0), classes=("a", "b"), digests=None, source="test"):
    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, 2, 2, 1), dtype=np.uint8)
    labels = lambda n: (np.arange(n) % len(classes)).astype(np.int32)
    dataset = datasets.ImageDataset(
        train_images=images(counts[0]),
        train_labels=labels(counts[0]),
        test_images=images(counts[1]),
        test_labels=labels(counts[1]),
        num_classes=len(classes),
        class_names=tuple(classes),
        source=source,
        unlabeled_images=images(counts[2]) if counts[2] else None,
        file_digests=digests or {},
    )
    return datasets.data_fingerprint(dataset)


def test_data_fingerprint_counts_classes_and_files():
    import json

    fingerprint = _fingerprint(counts=(6, 2, 5), digests={"unlabeled": "f" * 64})
    assert json.loads(json.dumps(fingerprint)) == fingerprint
    assert fingerprint["class_names"] == ["a", "b"]
    assert fingerprint["parts"] == {
        "train": {"count": 6, "files": None},
        "test": {"count": 2, "files": None},
        "unlabeled": {"count": 5, "files": "f" * 64},
    }


def test_describe_data_change():
    base = _fingerprint(counts=(6, 2, 5), digests={"unlabeled": "1" * 64})
    assert datasets.describe_data_change(base, base) is None
    assert datasets.describe_data_change(
        base, _fingerprint(counts=(6, 2, 1005), digests={"unlabeled": "2" * 64})
    ) == ("unlabeled: 5 -> 1,005 images (1,000 added)")
    assert datasets.describe_data_change(
        base, _fingerprint(counts=(5, 2, 5), digests={"unlabeled": "1" * 64})
    ) == ("train: 6 -> 5 images (1 removed)")
    assert datasets.describe_data_change(
        base, _fingerprint(counts=(6, 2, 5), digests={"unlabeled": "3" * 64})
    ) == ("unlabeled: 5 images, but files were replaced or modified")
    assert datasets.describe_data_change(
        base, _fingerprint(counts=(6, 2, 5), classes=("a", "c"), digests={"unlabeled": "1" * 64})
    ) == ("classes added: c; classes removed: b")
    assert datasets.describe_data_change(
        base, _fingerprint(counts=(6, 2, 5), classes=("b", "a"), digests={"unlabeled": "1" * 64})
    ) == ("the class order changed (labels now mean other classes)")
    assert datasets.describe_data_change(
        base, _fingerprint(counts=(6, 2, 5), digests={"unlabeled": "1" * 64}, source="other")
    ) == ("source: test -> other")
    assert datasets.describe_data_change(base, _fingerprint(counts=(6, 2, 0))) == (
        "unlabeled: 5 -> 0 images (5 removed)"
    )
