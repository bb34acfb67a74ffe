"""Tests for the image-folder dataset source (datasets.load_image_folder) and its incremental
decode cache (datasets.folder_cache)."""

import glob
import logging
import os
import re
import unicodedata

import numpy as np
import pytest
from PIL import Image

from comatch_jax import data as datasets
from comatch_jax.data import folder_cache, image_folder

SIZE = 16  # decoded image size in these tests


# --------------------------------------------------------------------------- helpers


def _pixels(seed: int, shape=(20, 30, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save(path, array: np.ndarray, **kwargs) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


def _make_folder(
    root, classes=("zebra", "ant", "moose"), per_class=4, num_unlabeled=5, val_classes=None
) -> str:
    """labeled/<class>/ PNGs (20x30), unlabeled/ nested PNGs, optional val/<class>/ PNGs."""
    seed = 0
    for name in classes:
        for i in range(per_class):
            seed += 1
            _save(os.path.join(root, "labeled", name, f"{i:02d}.png"), _pixels(seed))
    for i in range(num_unlabeled):
        seed += 1
        _save(os.path.join(root, "unlabeled", f"batch{i % 2}", "deep", f"u{i}.png"), _pixels(seed))
    for name in val_classes or ():
        for i in range(2):
            seed += 1
            _save(os.path.join(root, "val", name, f"v{i}.png"), _pixels(seed))
    return str(root)


def _load(root, **kwargs) -> datasets.ImageDataset:
    kwargs.setdefault("image_size", SIZE)
    return datasets.load_image_folder(str(root), **kwargs)


@pytest.fixture
def decode_calls(monkeypatch):
    """Records the cache path of every decode_images_to_cache call (i.e. every cache build)."""
    calls = []
    real = folder_cache.decode_images_to_cache

    def spy(paths, root, image_size, cache_path, corrupt_policy, **kwargs):
        calls.append(os.path.basename(cache_path))
        return real(paths, root, image_size, cache_path, corrupt_policy, **kwargs)

    monkeypatch.setattr(folder_cache, "decode_images_to_cache", spy)
    return calls


def _cache_files(root, pattern="*"):
    return sorted(
        os.path.basename(p) for p in glob.glob(os.path.join(root, ".comatch_cache", pattern))
    )


# ------------------------------------------------------------------------ loading


def test_shapes_labels_and_class_order(tmp_path):
    root = _make_folder(tmp_path, val_classes=("moose", "ant"))
    _save(os.path.join(root, "test", "t0.png"), _pixels(99))  # test/ is not loaded
    data = _load(root)

    assert data.class_names == ("ant", "moose", "zebra")  # sorted folder names
    assert data.num_classes == 3
    assert data.train_images.shape == (12, SIZE, SIZE, 3)
    assert data.unlabeled_images.shape == (5, SIZE, SIZE, 3)
    assert data.test_images.shape == (4, SIZE, SIZE, 3)
    for images in (data.train_images, data.unlabeled_images, data.test_images):
        assert images.dtype == np.uint8
    assert isinstance(data.unlabeled_images, np.memmap)
    assert data.train_labels.dtype == np.int32 and data.test_labels.dtype == np.int32
    for paths, labels in [
        (data.train_paths, data.train_labels),
        (data.test_paths, data.test_labels),
    ]:
        assert [data.class_names[c] for c in labels] == [p.split("/")[1] for p in paths]
    assert list(data.train_paths) == sorted(data.train_paths)
    assert all(p.startswith("labeled/") for p in data.train_paths)
    assert all(p.startswith("val/") for p in data.test_paths)
    assert "unlabeled/batch0/deep/u0.png" in data.unlabeled_paths  # nested folders
    assert not any("test/" in p for p in data.train_paths + data.unlabeled_paths + data.test_paths)
    assert data.source == f"image_folder:{root} (val: val/)"
    assert data.skipped_corrupt == ()


def test_formats_decode_to_rgb(tmp_path):
    """RGBA, grayscale, palette, 16-bit PNG, JPEG and WEBP all come out uint8 RGB; images already
    SIZE x SIZE pass through unchanged, other sizes are resized."""
    root = _make_folder(tmp_path, per_class=1, num_unlabeled=1, val_classes=("ant",))
    rgb, gray = _pixels(1, (SIZE, SIZE, 3)), _pixels(2, (SIZE, SIZE))
    rgba = _pixels(3, (SIZE, SIZE, 4))
    palette = Image.fromarray(_pixels(4, (SIZE, SIZE, 3))).convert("P")
    u = os.path.join(root, "unlabeled", "formats")
    _save(os.path.join(u, "rgba.png"), rgba)
    _save(os.path.join(u, "gray.png"), gray)
    _save(os.path.join(u, "gray16.png"), gray.astype(np.uint16) * 257)
    palette.save(os.path.join(u, "palette.png"))
    _save(os.path.join(u, "lossless.webp"), rgb, lossless=True)
    _save(os.path.join(u, "photo.JPG"), rgb, quality=95, subsampling=0)  # no chroma resampling
    _save(os.path.join(u, "gray.jpeg"), gray, quality=95)
    _save(os.path.join(u, "flat.png"), np.full((20, 30, 3), (10, 200, 77), np.uint8))
    data = _load(root)
    images = dict(zip(data.unlabeled_paths, data.unlabeled_images))

    def get(name):
        return np.asarray(images[f"unlabeled/formats/{name}"])

    np.testing.assert_array_equal(get("rgba.png"), rgba[..., :3])  # alpha dropped
    np.testing.assert_array_equal(get("gray.png"), np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(get("gray16.png"), np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(get("palette.png"), np.asarray(palette.convert("RGB")))
    np.testing.assert_array_equal(get("lossless.webp"), rgb)
    for name in ("photo.JPG", "gray.jpeg"):
        # TensorFlow's default JPEG IDCT is the fast integer one, PIL's the accurate one.
        reference = np.asarray(Image.open(os.path.join(u, name)).convert("RGB")).astype(int)
        error = np.abs(get(name).astype(int) - reference)
        assert error.mean() < 2 and error.max() <= 12, name
    np.testing.assert_array_equal(get("flat.png"), np.full((SIZE, SIZE, 3), (10, 200, 77)))


def test_list_image_files_ignores_and_counts_non_images(tmp_path, caplog):
    root = _make_folder(tmp_path, val_classes=("ant",))
    for rel in ["labeled/ant/notes.txt", "labeled/zebra/meta.json", "unlabeled/batch0/x.gif"]:
        with open(os.path.join(root, rel), "w") as f:
            f.write("not used")
    with open(os.path.join(root, "labeled", "ant", ".DS_Store"), "w") as f:
        f.write("hidden files are skipped, not counted")
    _save(os.path.join(root, "unlabeled", ".ipynb_checkpoints", "copy.png"), _pixels(0))

    paths, ignored = datasets.list_image_files(os.path.join(root, "unlabeled"))
    assert ignored == 1
    assert paths == sorted(paths) and len(paths) == 5
    assert paths[0] == "batch0/deep/u0.png"
    assert datasets.list_image_files(os.path.join(root, "labeled")) == (
        sorted(f"{c}/{i:02d}.png" for c in ("zebra", "ant", "moose") for i in range(4)),
        2,
    )
    with caplog.at_level(logging.INFO, logger="absl"):
        data = _load(root)
    assert len(data.train_paths) == 12 and len(data.unlabeled_paths) == 5
    assert f"Ignored 2 non-image files in {root}/labeled" in caplog.text
    assert f"Ignored 1 non-image files in {root}/unlabeled" in caplog.text


def test_held_out_val_is_stratified_and_seeded(tmp_path, caplog, decode_calls):
    root = _make_folder(tmp_path, per_class=10)
    with caplog.at_level(logging.INFO, logger="absl"):
        data = _load(root, val_fraction=0.2, seed=0)
    assert "Evaluating on a held-out 20 % of labeled/ (no val/), 6 images" in caplog.text
    assert data.source == f"image_folder:{root} (val: held out 20% of labeled, seed 0)"
    assert np.bincount(data.test_labels).tolist() == [2, 2, 2]
    assert np.bincount(data.train_labels).tolist() == [8, 8, 8]
    assert not set(data.test_paths) & set(data.train_paths)
    assert len(set(data.test_paths) | set(data.train_paths)) == 30
    assert [data.class_names[c] for c in data.test_labels] == [
        p.split("/")[1] for p in data.test_paths
    ]

    # The images follow their paths through the split.
    for name, images, paths in [
        ("val", data.test_images, data.test_paths),
        ("labeled", data.train_images, data.train_paths),
    ]:
        reference, _ = datasets.decode_images_to_cache(
            list(paths), root, SIZE, str(tmp_path / f"{name}.npy"), "fail"
        )
        np.testing.assert_array_equal(images, reference)

    decode_calls.clear()
    again = _load(root, val_fraction=0.2, seed=0)
    other = _load(root, val_fraction=0.2, seed=1)
    assert again.test_paths == data.test_paths
    assert other.test_paths != data.test_paths
    assert decode_calls == []  # the labeled cache does not depend on the split


@pytest.mark.parametrize(
    "counts, fraction, expected",
    [
        ([10, 10, 10], 0.1, [1, 1, 1]),
        ([20, 5, 2, 1], 0.1, [2, 1, 1, 0]),  # >= 1 from a class of >= 2, none from a singleton
        ([4, 3], 0.5, [2, 2]),  # round half up (3 * 0.5 = 1.5 -> 2)
        ([2], 0.9, [1]),  # one image always stays in training
    ],
)
def test_stratified_holdout_counts(counts, fraction, expected):
    labels = np.repeat(np.arange(len(counts)), counts)
    train, val = image_folder._stratified_holdout(labels, len(counts), fraction, seed=3)
    assert np.bincount(labels[val], minlength=len(counts)).tolist() == expected
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    again = image_folder._stratified_holdout(labels, len(counts), fraction, seed=3)
    assert np.array_equal(again[1], val)


# ------------------------------------------------------------------------- errors


def _remove_class(root, part, name):
    for path in glob.glob(os.path.join(root, part, name, "*")):
        os.remove(path)


# name: (how to break the folder r (for 'root missing': the path to load), error, message)
ERROR_CASES = {
    "root missing": (
        lambda r: os.path.join(r, "nope"),
        FileNotFoundError,
        "{r}/nope does not exist",
    ),
    "labeled missing": (
        lambda r: os.rename(os.path.join(r, "labeled"), os.path.join(r, "x")),
        FileNotFoundError,
        "{r}/labeled does not exist",
    ),
    "root is labeled/ itself": (
        lambda r: os.path.join(r, "labeled"),
        ValueError,
        "{r}/labeled looks like the labeled/ folder itself; pass its parent ({r}) as "
        "--config.dataset.root.",
    ),
    "unlabeled missing": (
        lambda r: os.rename(os.path.join(r, "unlabeled"), os.path.join(r, "x")),
        FileNotFoundError,
        "{r}/unlabeled does not exist",
    ),
    "no class folders": (
        lambda r: [
            _remove_class(r, "labeled", c) or os.rmdir(os.path.join(r, "labeled", c))
            for c in ("ant", "moose", "zebra")
        ],
        ValueError,
        "{r}/labeled has no class folders",
    ),
    "image outside class folder": (
        lambda r: _save(os.path.join(r, "labeled", "stray.png"), _pixels(0)),
        ValueError,
        "Image {r}/labeled/stray.png is not in a class folder",
    ),
    "empty class folder": (
        lambda r: _remove_class(r, "labeled", "moose")
        or open(os.path.join(r, "labeled", "moose", "a.txt"), "w").close(),
        ValueError,
        "Class folder {r}/labeled/moose has no images",
    ),
    "empty val class folder": (
        lambda r: os.makedirs(os.path.join(r, "val", "ant")),
        ValueError,
        "Class folder {r}/val/ant has no images",
    ),
    "val class not in labeled": (
        lambda r: _save(os.path.join(r, "val", "ghost", "g.png"), _pixels(0)),
        ValueError,
        "Class folder {r}/val/ghost has no counterpart in {r}/labeled",
    ),
    "no unlabeled images": (
        lambda r: [
            os.remove(p)
            for p in glob.glob(os.path.join(r, "unlabeled", "**", "*.png"), recursive=True)
        ],
        ValueError,
        "{r}/unlabeled has no images",
    ),
    "class folder named __unknown__": (
        lambda r: _save(os.path.join(r, "labeled", "__unknown__", "x.png"), _pixels(0)),
        ValueError,
        "Class folder {r}/labeled/__unknown__ is named __unknown__, which answers files keep",
    ),
    "one class in two unicode forms": (
        lambda r: [
            _save(
                os.path.join(r, "labeled", unicodedata.normalize(form, "café"), "x.png"),
                _pixels(0),
            )
            for form in ("NFC", "NFD")
        ],
        ValueError,
        "Class folder {r}/labeled/.* appears twice in {r}/labeled, its name stored composed (NFC) "
        "and decomposed (NFD); merge the two folders into one.",
    ),
    "cache dir not writable": (
        lambda r: open(os.path.join(r, ".comatch_cache"), "w").close(),
        PermissionError,
        "Cannot write the image cache in {r}/.comatch_cache .*--config.dataset.cache_dir",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_folders_raise_naming_the_path(tmp_path, case):
    root = _make_folder(tmp_path / "data")
    break_it, error, message = ERROR_CASES[case]
    returned = break_it(root)
    to_load = returned if case in ("root missing", "root is labeled/ itself") else root
    pattern = re.escape(message.format(r=root)).replace(re.escape(".*"), ".*")
    with pytest.raises(error, match=pattern) as raised:
        _load(to_load)
    assert "\n" not in str(raised.value)  # one line


def test_val_class_folders_match_labeled_ones_in_either_unicode_form(tmp_path):
    """A Mac may store val/café decomposed (NFD) and labeled/café composed (NFC)."""
    composed, decomposed = "café", unicodedata.normalize("NFD", "café")
    root = _make_folder(tmp_path, classes=(composed, "tea"))
    for i, name in enumerate((decomposed, decomposed, "tea")):
        _save(os.path.join(root, "val", name, f"v{i}.png"), _pixels(60 + i))
    data = _load(root)
    assert data.class_names == (composed, "tea") and data.test_labels.tolist() == [0, 0, 1]


# ----------------------------------------------------------------- corrupt images


def _write_corrupt_files(root) -> list[str]:
    """Garbage, truncated and empty image files; returns their paths relative to root."""
    good = _save(os.path.join(root, "labeled", "ant", "zz_good.png"), _pixels(7, (SIZE, SIZE, 3)))
    with open(good, "rb") as f:
        png = f.read()
    files = {
        "labeled/ant/01b_garbage.jpg": b"this is not a jpeg",
        "unlabeled/batch0/deep/u0_truncated.png": png[: len(png) // 2],
        "unlabeled/batch1/empty.webp": b"",
    }
    for rel, raw in files.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(raw)
    return sorted(files)


def test_corrupt_image_fails_naming_it(tmp_path):
    root = _make_folder(tmp_path)
    _write_corrupt_files(root)
    with pytest.raises(
        ValueError, match=re.escape(f"Cannot decode image {root}/labeled/ant/01b_garbage.jpg (")
    ) as raised:
        _load(root)
    assert "corrupt_policy=skip" in str(raised.value) and "\n" not in str(raised.value)
    assert not _cache_files(root, "labeled_*")  # nothing half-built is left behind


def test_corrupt_images_skipped_and_listed(tmp_path, caplog, decode_calls):
    root = _make_folder(tmp_path, val_classes=("ant",))
    corrupt = _write_corrupt_files(root)
    with caplog.at_level(logging.INFO, logger="absl"):
        data = _load(root, corrupt_policy="skip")
    assert sorted(data.skipped_corrupt) == corrupt
    assert "Skipped 3 unreadable or corrupt images" in caplog.text
    assert not set(corrupt) & set(data.train_paths + data.unlabeled_paths)
    assert len(data.train_paths) == 13 and len(data.unlabeled_paths) == 5
    assert data.train_images.shape[0] == 13 and data.unlabeled_images.shape[0] == 5
    # Rows after a skipped file still hold their own image.
    row = data.train_paths.index("labeled/ant/zz_good.png")
    np.testing.assert_array_equal(data.train_images[row], _pixels(7, (SIZE, SIZE, 3)))
    assert data.train_labels[row] == data.class_names.index("ant")

    # The skip list is cached with the images: 'skip' reuses it, 'fail' still names the file.
    calls = len(decode_calls)
    assert _load(root, corrupt_policy="skip").skipped_corrupt == data.skipped_corrupt
    assert len(decode_calls) == calls
    with pytest.raises(ValueError, match=re.escape(f"{root}/labeled/ant/01b_garbage.jpg")):
        _load(root, corrupt_policy="fail")


# -------------------------------------------------------------------------- cache


def test_cache_reused_then_rebuilt_when_files_change(tmp_path, decode_calls):
    root = _make_folder(tmp_path, val_classes=("ant", "zebra"))
    first = _load(root)
    assert sorted(c.split("_")[0] for c in decode_calls) == ["labeled", "unlabeled", "val"]
    assert len(_cache_files(root, "*.npy")) == 3 and len(_cache_files(root, "*.json")) == 3
    mtimes = {
        p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(root, ".comatch_cache", "*"))
    }

    decode_calls.clear()
    second = _load(root)
    assert decode_calls == []
    assert {p: os.stat(p).st_mtime_ns for p in mtimes} == mtimes
    np.testing.assert_array_equal(second.unlabeled_images, first.unlabeled_images)
    assert second.unlabeled_paths == first.unlabeled_paths

    _save(os.path.join(root, "unlabeled", "new", "n.png"), _pixels(50))
    third = _load(root)
    assert [c.split("_")[0] for c in decode_calls] == ["unlabeled"]
    assert len(third.unlabeled_paths) == 6
    assert len(_cache_files(root, "unlabeled_*.npy")) == 1  # the stale cache was removed

    decode_calls.clear()
    _load(root, image_size=8)  # another size: its own caches
    assert len(decode_calls) == 3


def test_half_written_cache_is_never_used(tmp_path, monkeypatch, decode_calls):
    root = _make_folder(tmp_path)
    real_batches = folder_cache._decoded_batches

    def killed_after_first_batch(full_paths, image_size):
        for i, batch in enumerate(real_batches(full_paths, image_size)):
            if i:
                break
            yield batch
        raise KeyboardInterrupt  # as if the build was stopped part-way

    monkeypatch.setattr(folder_cache, "_DECODE_BATCH", 2)
    monkeypatch.setattr(folder_cache, "_decoded_batches", killed_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        _load(root)
    assert _cache_files(root) == []  # temp file removed, nothing renamed into place
    monkeypatch.setattr(folder_cache, "_decoded_batches", real_batches)
    good = _load(root)
    reference = {p: np.array(x) for p, x in zip(good.unlabeled_paths, good.unlabeled_images)}

    # A kill between writing the .npy and its .json, a truncated .npy, and a temp file left by a
    # dead process: each is ignored (and cleaned up) and the images are decoded again.
    (npy,) = glob.glob(os.path.join(root, ".comatch_cache", "unlabeled_*.npy"))
    os.remove(npy[: -len(".npy")] + ".json")
    np.save(npy, np.zeros((5, SIZE, SIZE, 3), np.uint8))
    leftover = npy + ".tmp-999999999"
    with open(leftover, "wb") as f:
        f.write(b"half written")
    decode_calls.clear()
    data = _load(root)
    assert [c.split("_")[0] for c in decode_calls] == ["unlabeled"]
    assert not os.path.exists(leftover)
    for path, image in zip(data.unlabeled_paths, data.unlabeled_images):
        np.testing.assert_array_equal(image, reference[path])

    with open(npy, "r+b") as f:
        f.truncate(os.path.getsize(npy) // 2)
    decode_calls.clear()
    data = _load(root)
    assert [c.split("_")[0] for c in decode_calls] == ["unlabeled"]
    np.testing.assert_array_equal(data.unlabeled_images[0], reference[data.unlabeled_paths[0]])


def test_explicit_cache_dir(tmp_path):
    root = _make_folder(tmp_path / "data")
    cache = tmp_path / "elsewhere" / "cache"
    _load(root, cache_dir=str(cache))
    assert len(glob.glob(str(cache / "*.npy"))) == 2
    assert not os.path.exists(os.path.join(root, ".comatch_cache"))


def _update(root, cache_dir, corrupt_policy="fail"):
    return folder_cache.update_part_cache(
        str(root),
        "unlabeled",
        image_folder.scan_unlabeled(str(root)),
        image_size=SIZE,
        cache_dir=folder_cache.prepare_cache_dir(str(root), str(cache_dir)),
        corrupt_policy=corrupt_policy,
    )


def test_a_changed_part_is_rebuilt_as_a_fresh_cache_would_be(tmp_path):
    root = _make_folder(tmp_path / "data", num_unlabeled=6)
    cache = tmp_path / "cache"
    assert not _update(root, cache).reused and _update(root, cache).reused
    _save(os.path.join(root, "unlabeled", "a_first.png"), _pixels(61))  # added
    os.remove(os.path.join(root, "unlabeled", "batch1", "deep", "u3.png"))  # removed
    _save(os.path.join(root, "unlabeled", "batch0", "deep", "u0.png"), _pixels(77, (10, 10, 3)))
    part = _update(root, cache)
    fresh = _update(root, tmp_path / "fresh")
    assert not part.reused and part.entries == fresh.entries and len(part.entries) == 6
    assert part.paths == sorted(part.paths) and "unlabeled/batch1/deep/u3.png" not in part.paths
    np.testing.assert_array_equal(np.asarray(part.images), np.asarray(fresh.images))
    np.testing.assert_array_equal(part.row_sums, datasets.pixel_sums(np.asarray(part.images)))
    assert len(glob.glob(os.path.join(cache, "unlabeled_*"))) == 3  # .npy, .rowstats, .json


def test_folder_statistics_equal_numpy_over_the_decoded_images(tmp_path):
    for name, val_classes in [("held_out", None), ("with_val", ("ant", "zebra"))]:
        root = _make_folder(tmp_path / name, per_class=5, val_classes=val_classes)
        data = _load(root, val_fraction=0.2)
        assert data.name == "image_folder" and data.channels == 3
        pixels = np.concatenate(
            [
                np.asarray(data.train_images).reshape(-1, 3),
                np.asarray(data.unlabeled_images).reshape(-1, 3),
            ]
        ).astype(np.float64)
        np.testing.assert_allclose(data.mean, pixels.mean(0) / 255, rtol=1e-12)
        np.testing.assert_allclose(data.std, pixels.std(0) / 255, rtol=1e-12)
        assert datasets.resolve_normalization((), (), data) == (data.mean, data.std)
        # The statistics come back with the cached dataset, without decoding again.
        again = _load(root, val_fraction=0.2)
        assert (again.mean, again.std) == (data.mean, data.std)
    with pytest.raises(
        ValueError, match="dataset.mean has 1 values but the images have 3 channels"
    ):
        datasets.resolve_normalization((0.5,), (0.2,), data)


def test_folder_fingerprint_reports_added_files_and_classes(tmp_path):
    root = _make_folder(tmp_path, val_classes=("ant", "moose", "zebra"))
    before = datasets.data_fingerprint(_load(root))
    assert before["parts"]["unlabeled"]["count"] == 5 and before["parts"]["unlabeled"]["files"]
    assert datasets.describe_data_change(before, datasets.data_fingerprint(_load(root))) is None
    _save(os.path.join(root, "unlabeled", "n1.png"), _pixels(80))
    _save(os.path.join(root, "unlabeled", "n2.png"), _pixels(81))
    for i in range(2):
        _save(os.path.join(root, "labeled", "koala", f"k{i}.png"), _pixels(90 + i))
    after = datasets.data_fingerprint(_load(root))
    assert datasets.describe_data_change(before, after) == (
        "classes added: koala; train: 12 -> 14 images (2 added); "
        "unlabeled: 5 -> 7 images (2 added)"
    )
    os.utime(os.path.join(root, "unlabeled", "n1.png"), ns=(1, 1))  # touched: same count
    touched = datasets.data_fingerprint(_load(root))
    assert datasets.describe_data_change(after, touched) == (
        "unlabeled: 7 images, but files were replaced or modified"
    )


def test_the_unlabeled_cache_is_advised_for_random_access(tmp_path, monkeypatch):
    """Training reads scattered rows of the unlabeled memmap: it is advised MADV_RANDOM (no
    read-around); the labeled and validation parts, read whole, keep the default."""
    import mmap

    if not hasattr(mmap, "MADV_RANDOM"):
        pytest.skip("this platform's mmap has no madvise")
    advised = []

    def record(images):
        advised.append(images.shape)
        return images

    monkeypatch.setattr(folder_cache, "random_access", record)
    dataset = _load(_make_folder(tmp_path))
    assert isinstance(dataset.unlabeled_images, np.memmap)
    assert advised == [dataset.unlabeled_images.shape]


def test_random_access_calls_madvise_on_the_memmap(tmp_path):
    import mmap

    if not hasattr(mmap, "MADV_RANDOM"):
        pytest.skip("this platform's mmap has no madvise")
    path = tmp_path / "a.npy"
    np.save(path, np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3))
    images = np.load(path, mmap_mode="r")
    calls = []

    class Handle:
        def madvise(self, advice):
            calls.append(advice)

    real = images._mmap
    images._mmap = Handle()
    try:
        assert folder_cache.random_access(images) is images
    finally:
        images._mmap = real
    assert calls == [mmap.MADV_RANDOM]
    advised = folder_cache.random_access(np.load(path, mmap_mode="r"))  # the real call works
    np.testing.assert_array_equal(advised[3], np.load(path)[3])
    assert folder_cache.random_access(np.zeros((2, 2), np.uint8)).shape == (2, 2)  # no memmap


# ------------------------------------------------- issue 21: a new user's findings


def test_one_class_folder_is_rejected_before_decoding(tmp_path, decode_calls, caplog):
    root = _make_folder(tmp_path, classes=("zebra",))
    with caplog.at_level(logging.INFO, logger="absl"):
        with pytest.raises(
            ValueError,
            match=re.escape(
                f"{root}/labeled has 1 class (zebra); a classifier needs at least 2 "
                "class folders under labeled/."
            ),
        ):
            _load(root)
    assert decode_calls == [] and not _cache_files(root)  # nothing was decoded or cached
    assert "1 classes" not in caplog.text


@pytest.mark.parametrize("unlabeled", ["absent", "empty"])
def test_unlabeled_folder_is_optional_only_when_not_required(tmp_path, unlabeled):
    root = _make_folder(tmp_path / "data", num_unlabeled=0)
    if unlabeled == "empty":
        os.makedirs(os.path.join(root, "unlabeled", "nested"))
    error = FileNotFoundError if unlabeled == "absent" else ValueError
    message = "does not exist; semi-supervised" if unlabeled == "absent" else "has no images"
    with pytest.raises(error, match=message) as raised:
        _load(root)
    if unlabeled == "absent":
        assert "configs/supervised.py trains without them" in str(raised.value)
    data = _load(root, require_unlabeled=False)
    assert data.unlabeled_images.shape == (0, SIZE, SIZE, 3)
    assert data.unlabeled_images.dtype == np.uint8 and data.unlabeled_paths == ()
    assert len(data.train_paths) + len(data.test_paths) == 12
    # The fingerprint of the empty part is stable, and adding unlabeled images changes it.
    first = datasets.data_fingerprint(data)
    assert first == datasets.data_fingerprint(_load(root, require_unlabeled=False))
    _save(os.path.join(root, "unlabeled", "u.png"), _pixels(99))
    change = datasets.describe_data_change(first, datasets.data_fingerprint(_load(root)))
    assert change and "unlabeled" in change


@pytest.mark.parametrize("layout", ["val", "val_with_test", "held_out", "held_out_with_test"])
def test_the_log_names_the_evaluation_set_and_warns_when_it_is_small(tmp_path, caplog, layout):
    root = _make_folder(
        tmp_path,
        per_class=10,
        val_classes=("zebra", "ant", "moose") if layout.startswith("val") else None,
    )
    if layout.endswith("with_test"):
        _save(os.path.join(root, "test", "t.png"), _pixels(3))
    with caplog.at_level(logging.INFO, logger="absl"):
        _load(root)
    which = (
        "val/, 6 images"
        if layout.startswith("val")
        else ("a held-out 10 % of labeled/ (no val/), 3 images")
    )
    test = (
        "; test/ is not read (evaluation images go in val/<class_name>/)"
        if "test" in layout
        else ""
    )
    assert (
        f"Evaluating on {which}: the run's 'test accuracy' is measured on them{test}.\n"
        in caplog.text
    )
    small = (
        f"The evaluation set ({6 if layout.startswith('val') else 3} images, 3 classes) has fewer "
        f"than 10 images per class on average (its accuracy is noisy); add images to "
        f"{root}/val/<class_name>/."
    )
    assert small in caplog.text
    caplog.clear()
    big = _make_folder(tmp_path / "big", classes=("a", "b"), per_class=100, num_unlabeled=1)
    with caplog.at_level(logging.INFO, logger="absl"):
        _load(big)
    assert "held-out 10 % of labeled/ (no val/), 20 images" in caplog.text
    assert "noisy" not in caplog.text


@pytest.mark.parametrize(
    "layout, missing",
    [
        ("val without moose", "moose"),
        ("val without moose and zebra", "moose, zebra"),
        ("held out, one moose", "moose"),  # its one labeled image is kept for training
        ("val with every class", None),
        ("held out", None),
    ],
)
def test_classes_without_evaluation_images_are_named(tmp_path, caplog, layout, missing):
    val_classes = {
        "val without moose": ("zebra", "ant"),
        "val without moose and zebra": ("ant",),
        "val with every class": ("zebra", "ant", "moose"),
    }.get(layout)
    root = _make_folder(tmp_path, val_classes=val_classes)
    if layout == "held out, one moose":
        for name in ("01.png", "02.png", "03.png"):
            os.remove(os.path.join(root, "labeled", "moose", name))
    with caplog.at_level(logging.INFO, logger="absl"):
        data = _load(root)
    if missing is None:
        assert "accuracy is not measured" not in caplog.text
        assert set(data.test_labels) == {0, 1, 2}
    else:
        assert re.search(
            rf"has no images of {missing} \(their accuracy is not measured\); and fewer than 10 "
            rf"images per class on average \(its accuracy is noisy\); add images to "
            f"{re.escape(root)}/val/<class_name>/.",
            caplog.text,
        ), caplog.text


def test_a_missing_root_names_unlabeled_only_where_a_run_needs_it(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=re.escape("with labeled/<class_name>/ and unl")):
        _load(missing)
    with pytest.raises(FileNotFoundError) as raised:
        _load(missing, require_unlabeled=False)
    assert str(raised.value) == (
        f"Image folder {missing} does not exist; fix the dataset path or create it with "
        "labeled/<class_name>/ inside (unlabeled/ is optional for this run)."
    )


def test_the_loaded_line_prints_mean_and_std_as_the_normalisation_line_does(tmp_path, caplog):
    """4 decimals, trailing zeros kept: (0.2000, ...), as datasets.normalization logs them."""
    for name in ("a", "b"):
        for i in range(2):
            _save(
                os.path.join(tmp_path, "labeled", name, f"{i}.png"),
                np.full((8, 8, 3), 51, np.uint8),
            )
    with caplog.at_level(logging.INFO, logger="absl"):
        _load(tmp_path, require_unlabeled=False)
    assert "mean (0.2000, 0.2000, 0.2000), std (0.0000, 0.0000, 0.0000)." in caplog.text
