"""The decode cache of an image folder: each part's images decoded once by tf.data into a
uint8 .npy file, and decoded again when the part's files change.

Per (folder root, part, image size) the cache directory holds `<part>_<S>px_<root key>`:
  .npy       uint8 [N, S, S, 3], the images in sorted path order (read as a memmap);
  .rowstats  int64 [N, 2, 3], per image and channel the sum and sum of squares of its
             pixels (0..255): the exact mean/std of any subset without reading the images;
  .json      the (relative path, size, mtime_ns) of each row and of the unreadable files;
             written last, so it marks a complete cache.
Images stream into the .npy batch by batch with plain writes (no memory map), so resident
memory stays a few batches whatever the size of the folder. Files are written under
temporary names and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from absl import logging

from comatch_jax import atomic_files
from comatch_jax.data.dataset import import_tensorflow, pixel_sums

DEFAULT_CACHE_SUBDIR = ".comatch_cache"
# Bump when the decoding or the cache layout changes, so that old caches are rebuilt.
_CACHE_FORMAT = 2
_DECODE_BATCH = 256
_DECODE_LOG_EVERY = 20_000  # images
_TEMP_PID = re.compile(r"\.tmp-(\d+)")

Entry = tuple[str, int, int]  # (path relative to the root, size in bytes, mtime_ns)


@dataclasses.dataclass(frozen=True, eq=False)
class CachedPart:
    """One part of a folder as cached: images (uint8 memmap [N, S, S, 3]), their entries in
    row order, per-row pixel sums (int64 [N, 2, 3], dataset.pixel_sums), the entries left out
    as unreadable, and whether the cache was reused as it was (else it was just built)."""

    images: np.ndarray
    entries: tuple[Entry, ...]
    row_sums: np.ndarray
    skipped: tuple[Entry, ...]
    reused: bool = False

    @property
    def paths(self) -> list[str]:
        return [rel for rel, _, _ in self.entries]


def prepare_cache_dir(root: str, cache_dir: str | None) -> str:
    """Creates the cache directory (default `root`/.comatch_cache) and checks it is writable;
    raises PermissionError (one line) if it is not."""
    path = os.path.abspath(cache_dir or os.path.join(root, DEFAULT_CACHE_SUBDIR))
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        open(probe, "wb").close()
        os.remove(probe)
    except OSError as e:
        raise PermissionError(
            f"Cannot write the image cache in {path} ({e.strerror or e}); set "
            "--config.dataset.cache_dir to a writable directory."
        ) from e
    return path


def random_access(images: np.ndarray) -> np.ndarray:
    """`images` (a memmap of the cache) advised MADV_RANDOM (a no-op where absent): training
    reads a few hundred scattered rows a step, and the kernel's default read-around would
    fill the page cache with the neighbouring rows, never used."""
    advice, handle = getattr(mmap, "MADV_RANDOM", None), getattr(images, "_mmap", None)
    if advice is not None and handle is not None and hasattr(handle, "madvise"):
        handle.madvise(advice)
    return images


# -------------------------------------------------------------------------- decoding


def _decode_resize(path: Any, image_size: int) -> Any:
    """One image file as uint8 RGB [S, S, 3] (TensorFlow ops): grayscale and palette images
    become RGB, alpha is dropped (not composited), and the image is resized with antialiasing
    to S x S without keeping its aspect ratio (nothing is cut off); an S x S image passes
    through unchanged."""
    tf = import_tensorflow()
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _decoded_batches(full_paths: list[str], image_size: int) -> Iterator[tuple[np.ndarray, ...]]:
    """(indices, uint8 images) batches in file order, leaving out unreadable files: a file
    that fails fails only its own element (ignore_errors), and the caller names it from the
    gap in the indices."""
    tf = import_tensorflow()
    indices = np.arange(len(full_paths), dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices((indices, [os.fsencode(p) for p in full_paths]))
    ds = ds.map(
        lambda index, path: (index, _decode_resize(path, image_size)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.ignore_errors(log_warning=False).batch(_DECODE_BATCH).prefetch(1)
    yield from ds.as_numpy_iterator()


def _corrupt_image_error(root: str, rel_path: str, image_size: int) -> ValueError:
    """The one-line error for an image TensorFlow cannot decode, with its reason."""
    path = os.path.join(root, rel_path)
    try:
        _decode_resize(os.fsencode(path), image_size)
        reason = "it failed to decode in the tf.data pipeline"
    except Exception as e:  # pylint: disable=broad-except
        message = re.sub(r"\{\{[^}]*\}\}\s*", "", getattr(e, "message", "") or str(e))
        lines = message.split(" [Op:")[0].strip().splitlines()
        reason = lines[0] if lines else type(e).__name__
    return ValueError(
        f"Cannot decode image {path} ({reason}); replace or delete it, or set "
        "--config.dataset.corrupt_policy=skip to leave unreadable images out."
    )


# ------------------------------------------------------------------- .npy streaming


def _npy_header(shape: tuple[int, ...], length: int | None = None) -> bytes:
    """A version-1.0 .npy header for a C-order uint8 array of `shape`, padded with spaces to
    `length` bytes (default: numpy's 64-byte alignment), so it can be rewritten in place."""
    text = "{'descr': '|u1', 'fortran_order': False, 'shape': %r, }" % (tuple(shape),)
    length = length or -(-(10 + len(text) + 1) // 64) * 64
    header = (text + " " * (length - 10 - len(text) - 1) + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def decode_images_to_cache(
    paths: Sequence[str],
    root: str,
    image_size: int,
    cache_path: str,
    corrupt_policy: str,
    *,
    row_sums: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Decodes `paths` (relative to `root`) with tf.data into a uint8 [N, S, S, 3] .npy file.

    Images stream batch by batch into a temporary file renamed to `cache_path` only when
    complete. Unreadable files raise (corrupt_policy 'fail': ValueError naming the first) or
    are left out ('skip'; ValueError if none is left). With a `row_sums` list the
    `pixel_sums` of each batch are appended to it. Returns (read-only memmap of the decoded
    images, indices into `paths` of the files left out).
    """
    if not paths:
        raise ValueError(f"No images to decode into {cache_path}; pass at least one path.")
    num, skipped, start = len(paths), [], time.monotonic()
    row_shape, written, next_log = (image_size, image_size, 3), 0, _DECODE_LOG_EVERY
    header = _npy_header((num, *row_shape))  # rewritten in place for the rows written
    temp, full_paths = f"{cache_path}.tmp-{os.getpid()}", [os.path.join(root, p) for p in paths]
    try:
        with open(temp, "wb") as f:
            f.write(header)
            for indices, batch in _decoded_batches(full_paths, image_size):
                gap = np.setdiff1d(np.arange(written + len(skipped), indices[-1] + 1), indices)
                skipped.extend(int(i) for i in gap)  # files that failed to decode
                if skipped and corrupt_policy == "fail":
                    raise _corrupt_image_error(root, paths[skipped[0]], image_size)
                f.write(memoryview(np.ascontiguousarray(batch, dtype=np.uint8)).cast("B"))
                written += len(batch)
                if row_sums is not None:
                    row_sums.append(pixel_sums(batch))
                if written + len(skipped) >= next_log:  # a large folder takes a while
                    next_log += _DECODE_LOG_EVERY
                    rate = (written + len(skipped)) / (time.monotonic() - start)
                    logging.info(f"Decoded {written + len(skipped)}/{num} images ({rate:.0f}/s).")
            skipped.extend(range(written + len(skipped), num))
            if skipped and corrupt_policy == "fail":
                raise _corrupt_image_error(root, paths[skipped[0]], image_size)
            if not written:
                raise ValueError(
                    f"None of the {num} images could be decoded (first: "
                    f"{os.path.join(root, paths[0])}); check that they are images."
                )
            f.seek(0)
            f.write(_npy_header((written, *row_shape), len(header)))
            f.truncate(len(header) + written * int(np.prod(row_shape)))
        os.replace(temp, cache_path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    seconds = time.monotonic() - start
    logging.info(
        f"Decoded {num - len(skipped)} images ({len(skipped)} unreadable) in {seconds:.0f} s."
    )
    return np.load(cache_path, mmap_mode="r"), skipped


# ------------------------------------------------------------------- the part cache


def _read_cache(stem: str, root: str, image_size: int) -> dict[str, Any] | None:
    """The cache at `stem` if its .json, .npy and .rowstats are complete and consistent and
    belong to (`root`, `image_size`) in this format, else None."""
    try:
        with open(stem + ".json", encoding="utf-8") as f:
            meta = json.load(f)
        if (meta["format"], meta["root"], meta["image_size"]) != (_CACHE_FORMAT, root, image_size):
            return None
        entries = [(str(r), int(s), int(m)) for r, s, m in meta["entries"]]
        skipped = [(str(r), int(s), int(m)) for r, s, m in meta["skipped"]]
        images = np.load(stem + ".npy", mmap_mode="r")
        with open(stem + ".rowstats", "rb") as f:
            sums = np.load(f)
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    if images.dtype != np.uint8 or images.shape != (len(entries), image_size, image_size, 3):
        return None
    if sums.dtype != np.int64 or sums.shape != (len(entries), 2, 3):
        return None
    return {"entries": entries, "skipped": skipped, "images": images, "row_sums": sums}


def _remove_dead_temporaries(cache_dir: str, prefix: str) -> None:
    """Removes the temporary files `prefix`* left by processes that no longer run (a build
    that was killed); those of running processes (another run building the cache) stay."""
    for name in os.listdir(cache_dir):
        found = _TEMP_PID.search(name)
        if not name.startswith(prefix) or not found:
            continue
        try:
            os.kill(int(found.group(1)), 0)
        except (ProcessLookupError, OverflowError):  # no such process: a leftover
            logging.info("Removing the leftover image cache file %s.", name)
            os.remove(os.path.join(cache_dir, name))
        except PermissionError:  # a process of another user
            pass


def update_part_cache(
    root: str,
    part: str,
    entries: Sequence[Entry],
    *,
    image_size: int,
    cache_dir: str,
    corrupt_policy: str,
) -> CachedPart:
    """The images of `entries` (sorted (path relative to `root`, size, mtime_ns)) from the
    cache of `part` in `cache_dir` (existing, writable: `prepare_cache_dir`) when it holds
    exactly these files with these sizes and mtimes, else decoded into a new cache.

    Files cached as unreadable stay left out; with corrupt_policy 'fail' the first raises
    ValueError naming it, as a new unreadable file does. Raises ValueError (one line) if no
    image of the part can be decoded.
    """
    if not entries:  # nothing to cache (an unlabeled/ the run does not need)
        empty = np.zeros((0, image_size, image_size, 3), np.uint8)
        return CachedPart(empty, (), np.zeros((0, 2, 3), np.int64), ())
    prefix = f"{part}_{image_size}px_"
    # 16 hex digits name `root`'s caches: several roots may share one cache directory.
    stem = os.path.join(cache_dir, prefix + hashlib.sha256(os.fsencode(root)).hexdigest()[:16])
    old = _read_cache(stem, root, image_size)
    if old is not None and sorted(old["entries"] + old["skipped"]) == list(entries):
        if old["skipped"] and corrupt_policy == "fail":
            raise _corrupt_image_error(root, old["skipped"][0][0], image_size)
        logging.info(f"Using the cached {part} images {stem}.npy {old['images'].shape}.")
        images, kept, sums, skipped = old["images"], old["entries"], old["row_sums"], old["skipped"]
        return CachedPart(images, tuple(kept), sums, tuple(skipped), reused=True)
    _remove_dead_temporaries(cache_dir, prefix)
    # No .json while the part is rebuilt: a crash leaves nothing that looks complete.
    if os.path.exists(stem + ".json"):
        os.remove(stem + ".json")
    sums, paths = [], [rel for rel, _, _ in entries]
    images, bad = decode_images_to_cache(
        paths, root, image_size, stem + ".npy", corrupt_policy, row_sums=sums
    )
    skipped, bad = [entries[i] for i in bad], set(bad)
    kept = [entry for i, entry in enumerate(entries) if i not in bad]
    row_sums = np.concatenate(sums)
    with atomic_files.open_atomic(stem + ".rowstats", "wb") as f:
        np.save(f, row_sums)
    with atomic_files.open_atomic(stem + ".json", encoding="utf-8") as f:
        meta = {"format": _CACHE_FORMAT, "root": root, "image_size": image_size}
        json.dump({**meta, "entries": kept, "skipped": skipped}, f)
    return CachedPart(images, tuple(kept), row_sums, tuple(skipped))
