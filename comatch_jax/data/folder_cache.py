"""The decode cache of an image folder: each part's images decoded once by tf.data into a
uint8 .npy file, updated incrementally as files are added or removed.

Per (folder root, part, image size) the cache directory holds three files named
`<part>_<S>px_<root key>`:
  .npy       uint8 [N, S, S, 3], the decoded images in sorted path order (read as a memmap);
  .rowstats  int64 [N, 2, 3] (.npy format), per image and channel the sum and sum of squares
             of the pixels (0..255), from which the mean/std of any subset follows exactly;
  .json      the (relative path, size, mtime_ns) of each row, the files left out as
             unreadable, and the format; written last, so it marks a complete cache.
A file whose (path, size, mtime) is in the cache is never decoded again: an update decodes
only the new or changed files and copies the kept rows from the old .npy (plain file reads
and writes, so resident memory stays a few batches whatever the size of the folder).
TensorFlow is imported lazily, for decoding only.
"""

from __future__ import annotations

import dataclasses
import errno
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

from comatch_jax.data._tensorflow import import_tensorflow
from comatch_jax.data.dataset import pixel_sums

CORRUPT_POLICIES = ("fail", "skip")
DEFAULT_CACHE_SUBDIR = ".comatch_cache"
# Bump when the decoding or the cache layout changes, so that old caches are rebuilt.
_CACHE_FORMAT = 2
_DECODE_BATCH = 256
_COPY_ROWS = 256  # rows per read/write when kept rows are copied into an updated cache
_DECODE_LOG_EVERY = 20_000  # images
_TEMP_PID = re.compile(r"\.(?:tmp|new)-(\d+)")

Entry = tuple[str, int, int]  # (path relative to the root, size in bytes, mtime_ns)


@dataclasses.dataclass(frozen=True)
class BuildStats:
    """What one cache update did: the paths it decoded, the rows it copied from the previous
    cache, the cached rows it dropped (files removed or changed), and whether the cache was
    reused untouched."""

    decoded: tuple[str, ...] = ()
    copied: int = 0
    removed: int = 0
    reused: bool = False


@dataclasses.dataclass(frozen=True, eq=False)
class CachedPart:
    """One part of a folder as cached: images (uint8 memmap [N, S, S, 3]), their entries
    (path, size, mtime_ns) in row order, per-row pixel sums (int64 [N, 2, 3], see
    dataset.pixel_sums), the entries left out as unreadable, and the update's BuildStats."""

    images: np.ndarray
    entries: tuple[Entry, ...]
    row_sums: np.ndarray
    skipped: tuple[Entry, ...]
    build: BuildStats

    @property
    def paths(self) -> list[str]:
        return [rel for rel, _, _ in self.entries]


def check_corrupt_policy(corrupt_policy: str) -> None:
    """Raises ValueError (one line) unless `corrupt_policy` is one of CORRUPT_POLICIES."""
    if corrupt_policy not in CORRUPT_POLICIES:
        raise ValueError(
            f"Unknown corrupt_policy {corrupt_policy!r}; set --config.dataset.corrupt_policy "
            f"to one of {', '.join(CORRUPT_POLICIES)}."
        )


def prepare_cache_dir(root: str, cache_dir: str | None) -> str:
    """Creates the cache directory (default `root`/.comatch_cache) and checks it is writable;
    raises PermissionError (one line) if it is not."""
    path = os.path.abspath(cache_dir or os.path.join(root, DEFAULT_CACHE_SUBDIR))
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise PermissionError(
            f"Cannot write the image cache in {path} ({e.strerror or e}); set "
            "--config.dataset.cache_dir to a writable directory."
        ) from e
    return path


# -------------------------------------------------------------------------- decoding


def _decode_resize(path: Any, image_size: int) -> Any:
    """Reads and decodes one image file to uint8 RGB [S, S, 3] (TensorFlow ops).

    Grayscale and palette images become RGB; alpha is dropped (not composited). The image is
    resized with antialiasing to S x S without keeping its aspect ratio (no crop, so nothing is
    cut off); an image already S x S passes through unchanged.
    """
    tf = import_tensorflow()
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _decoded_batches(full_paths: list[str], image_size: int) -> Iterator[tuple[np.ndarray, ...]]:
    """Yields (indices, uint8 images) batches in file order, leaving out unreadable files."""
    tf = import_tensorflow()
    indices = np.arange(len(full_paths), dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices((indices, [os.fsencode(p) for p in full_paths]))
    ds = ds.map(
        lambda index, path: (index, _decode_resize(path, image_size)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    # A file that cannot be read or decoded fails only its own element: ignore_errors drops it,
    # and the caller names it from the gap in the indices carried along.
    ds = ds.ignore_errors(log_warning=False).batch(_DECODE_BATCH).prefetch(1)
    yield from ds.as_numpy_iterator()


def _decode_failure(full_path: str, image_size: int) -> str:
    """Why TensorFlow cannot decode `full_path`, in one line."""
    try:
        _decode_resize(os.fsencode(full_path), image_size)
    except Exception as e:  # pylint: disable=broad-except
        message = re.sub(r"\{\{[^}]*\}\}\s*", "", getattr(e, "message", "") or str(e))
        message = message.split(" [Op:")[0].strip().splitlines()
        return message[0] if message else type(e).__name__
    return "it failed to decode in the tf.data pipeline"


def _corrupt_image_error(root: str, rel_path: str, image_size: int) -> ValueError:
    path = os.path.join(root, rel_path)
    return ValueError(
        f"Cannot decode image {path} ({_decode_failure(path, image_size)}); replace or delete "
        "it, or set --config.dataset.corrupt_policy=skip to leave unreadable images out."
    )


# ------------------------------------------------------------------- .npy streaming


def _npy_header(shape: tuple[int, ...], length: int | None = None) -> bytes:
    """A version-1.0 .npy header for a C-order uint8 array of `shape`, padded with spaces to
    `length` bytes (default: numpy's 64-byte alignment)."""
    text = "{'descr': '|u1', 'fortran_order': False, 'shape': %r, }" % (tuple(shape),)
    if length is None:
        length = -(-(10 + len(text) + 1) // 64) * 64
    padding = length - 10 - len(text) - 1
    if padding < 0:
        raise ValueError(f"npy header for {shape} does not fit in {length} bytes")
    header = (text + " " * padding + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


class _NpyRowWriter:
    """Appends uint8 rows to a new .npy file of at most `max_rows` rows with plain writes (no
    memory map: resident memory stays one batch whatever the file size). `close` fixes the
    header to the rows written. Disk space for `max_rows` is reserved up front, so that a full
    disk is reported here, in one line."""

    def __init__(self, path: str, max_rows: int, row_shape: tuple[int, ...]):
        self.path, self.row_shape, self.rows = path, tuple(row_shape), 0
        self._row_bytes = int(np.prod(row_shape))
        self._header = _npy_header((max_rows,) + self.row_shape)
        self._file = open(path, "wb")
        self._file.write(self._header)
        size = len(self._header) + max_rows * self._row_bytes
        if hasattr(os, "posix_fallocate") and size:
            try:
                os.posix_fallocate(self._file.fileno(), 0, size)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    self._file.close()
                    raise OSError(
                        f"No disk space for the {size / 1e9:.1f} GB image cache {path}; free "
                        "space or set --config.dataset.cache_dir to a larger disk."
                    ) from e
                # Other errors: the filesystem cannot preallocate; write without it.

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows {rows.shape[1:]} do not match {self.row_shape}")
        self._file.write(memoryview(rows).cast("B"))
        self.rows += len(rows)

    def close(self) -> None:
        header = _npy_header((self.rows,) + self.row_shape, len(self._header))
        self._file.seek(0)
        self._file.write(header)
        self._file.truncate(len(header) + self.rows * self._row_bytes)
        self._file.close()

    def abort(self) -> None:
        self._file.close()


class _NpyRowReader:
    """Reads row ranges of a uint8 .npy file with plain reads (no memory map, so resident
    memory stays the rows read)."""

    def __init__(self, path: str):
        self._file = open(path, "rb")
        version = np.lib.format.read_magic(self._file)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(self._file)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(self._file)
        self._offset = self._file.tell()
        self._row_shape = tuple(shape[1:])
        self._row_bytes = int(np.prod(self._row_shape))

    def read(self, begin: int, end: int) -> np.ndarray:
        """Rows begin..end-1."""
        size = (end - begin) * self._row_bytes
        data = os.pread(self._file.fileno(), size, self._offset + begin * self._row_bytes)
        if len(data) != size:
            raise OSError(f"{self._file.name} is shorter than its header says; delete it.")
        return np.frombuffer(data, np.uint8).reshape((end - begin,) + self._row_shape)

    def close(self) -> None:
        self._file.close()


# ------------------------------------------------------------------- decoding a list


def decode_images_to_cache(
    paths: Sequence[str],
    root: str,
    image_size: int,
    cache_path: str,
    corrupt_policy: str,
    *,
    row_sums: list[np.ndarray] | None = None,
    require_any: bool = True,
) -> tuple[np.ndarray, list[int]]:
    """Decodes `paths` (relative to `root`) with tf.data into a uint8 [N, S, S, 3] .npy file.

    Images stream batch by batch into a temporary file that is renamed to `cache_path` only
    when complete, so an interrupted build is never used. Unreadable or corrupt files raise
    (corrupt_policy 'fail', ValueError naming the first) or are left out ('skip'; ValueError
    if none is left and `require_any`). If `row_sums` is a list, the `pixel_sums` of each
    decoded batch are appended to it. Returns (read-only memmap of the decoded images, indices
    into `paths` of the files left out).
    """
    check_corrupt_policy(corrupt_policy)
    if not paths:
        raise ValueError(f"No images to decode into {cache_path}; pass at least one path.")
    num = len(paths)
    temp = f"{cache_path}.tmp-{os.getpid()}"
    skipped: list[int] = []
    start = time.monotonic()
    writer = None
    try:
        writer = _NpyRowWriter(temp, num, (image_size, image_size, 3))
        next_log = _DECODE_LOG_EVERY
        for indices, batch in _decoded_batches([os.path.join(root, p) for p in paths], image_size):
            done = writer.rows + len(skipped)
            skipped.extend(int(i) for i in np.setdiff1d(np.arange(done, indices[-1] + 1), indices))
            if skipped and corrupt_policy == "fail":
                raise _corrupt_image_error(root, paths[skipped[0]], image_size)
            writer.write(batch)
            if row_sums is not None:
                row_sums.append(pixel_sums(batch))
            if writer.rows + len(skipped) >= next_log:
                next_log += _DECODE_LOG_EVERY
                rate = (writer.rows + len(skipped)) / max(time.monotonic() - start, 1e-9)
                logging.info(
                    "Decoded %d/%d images into %s (%.0f images/s).",
                    writer.rows + len(skipped),
                    num,
                    cache_path,
                    rate,
                )
        skipped.extend(range(writer.rows + len(skipped), num))
        if skipped and corrupt_policy == "fail":
            raise _corrupt_image_error(root, paths[skipped[0]], image_size)
        if not writer.rows and require_any:
            raise ValueError(
                f"None of the {num} images could be decoded (first: "
                f"{os.path.join(root, paths[0])}); check that they are images."
            )
        writer.close()  # rows were written in order without gaps: the header says how many
        os.replace(temp, cache_path)
    finally:
        if writer is not None:
            writer.abort()
        if os.path.exists(temp):
            os.remove(temp)
    logging.info(
        "Decoded %d images (%d unreadable) into %s in %.0f s.",
        num - len(skipped),
        len(skipped),
        cache_path,
        time.monotonic() - start,
    )
    return np.load(cache_path, mmap_mode="r"), skipped


def random_access(images: np.ndarray) -> np.ndarray:
    """`images` (a read-only np.memmap of the cache) advised for random access; returns it.

    Training reads a few hundred scattered rows a step. With the kernel's default read-around
    every page fault reads neighbouring pages too: measured on the 512,000-image 96 px cache
    (15 GB), 50 steps of 256 random rows pulled ~8 GB into the page cache and the loop ran 20 %
    slower than on a 5,000-image pool (experiments/RESULTS.md, "Image folders at the paper's
    scale"). MADV_RANDOM (Python's mmap.madvise; Linux and macOS, a no-op where absent) reads
    only the pages a row covers. Sequential readers (the incremental update's copy) keep the
    default (as do the labeled and validation parts, which are read whole).
    """
    advice = getattr(mmap, "MADV_RANDOM", None)
    handle = getattr(images, "_mmap", None)  # np.memmap keeps its mmap.mmap here
    if advice is not None and handle is not None and hasattr(handle, "madvise"):
        handle.madvise(advice)
    return images


# ------------------------------------------------------------------- the part cache


def root_key(root: str) -> str:
    """16 hex digits naming `root`'s caches (several roots may share one cache directory)."""
    return hashlib.sha256(os.fsencode(root)).hexdigest()[:16]


def _read_cache(stem: str, root: str, image_size: int) -> dict[str, Any] | None:
    """The cache at `stem` if its .json, .npy and .rowstats are complete and consistent and
    it belongs to (`root`, `image_size`), else None."""
    try:
        with open(stem + ".json", encoding="utf-8") as f:
            meta = json.load(f)
        if (meta.get("format"), meta.get("root"), meta.get("image_size")) != (
            _CACHE_FORMAT,
            root,
            image_size,
        ):
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


def _process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # It exists but belongs to another user.
        return True
    return True


def _remove_stale_cache_files(cache_dir: str, prefix: str, root: str, keep_stem: str) -> None:
    """Removes this root's other caches named `prefix`* (e.g. of an older format), orphaned
    data files and temporary files of dead processes; the cache `keep_stem` and the caches of
    other roots sharing `cache_dir` are kept."""
    keep = os.path.basename(keep_stem)
    for name in sorted(os.listdir(cache_dir)):
        path = os.path.join(cache_dir, name)
        if not name.startswith(prefix) or not os.path.exists(path):
            continue
        temp = _TEMP_PID.search(name)
        stem = name.rsplit(".", 1)[0]
        if temp:
            stale = [path] if not _process_alive(int(temp.group(1))) else []
        elif stem == keep:
            stale = []
        elif name.endswith(".json"):
            try:
                with open(path, encoding="utf-8") as f:
                    owner = json.load(f).get("root")
            except (OSError, ValueError, AttributeError):
                owner = root
            base = path[: -len(".json")]
            stale = [path, base + ".npy", base + ".rowstats"] if owner == root else []
        elif name.endswith((".npy", ".rowstats")):
            owned = os.path.exists(os.path.join(cache_dir, stem + ".json"))
            stale = [] if owned else [path]
        else:
            stale = []
        for old in stale:
            if os.path.exists(old):
                logging.info("Removing stale image cache file %s.", old)
                os.remove(old)


def _write_json_atomic(path: str, data: dict[str, Any]) -> None:
    temp = f"{path}.tmp-{os.getpid()}"
    with open(temp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(temp, path)


def _copy_rows(writer: _NpyRowWriter, sources: list[str], source: np.ndarray, rows: np.ndarray):
    """Appends rows[i] of file sources[source[i]] for every i, reading runs of consecutive
    rows of one file at once (at most _COPY_ROWS per read)."""
    readers = [
        _NpyRowReader(path) if (source == i).any() else None for i, path in enumerate(sources)
    ]
    try:
        begin, count = 0, len(rows)
        while begin < count:
            end = begin + 1
            while (
                end < count
                and end - begin < _COPY_ROWS
                and source[end] == source[begin]
                and rows[end] == rows[end - 1] + 1
            ):
                end += 1
            writer.write(readers[source[begin]].read(int(rows[begin]), int(rows[end - 1]) + 1))
            begin = end
    finally:
        for reader in readers:
            if reader is not None:
                reader.close()


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
    cache of `part`, decoding only the files the cache does not hold with the same size and
    mtime; rows of files no longer listed are dropped and the kept rows copied, not decoded.
    `cache_dir` is an existing, writable directory (see `prepare_cache_dir`).

    A file cached as unreadable stays left out without being decoded again; with
    corrupt_policy 'fail' it raises ValueError naming it, as any new unreadable file does.
    Raises ValueError (one line) if no image of the part can be decoded.
    """
    check_corrupt_policy(corrupt_policy)
    prefix = f"{part}_{image_size}px_"
    stem = os.path.join(cache_dir, prefix + root_key(root))
    old = _read_cache(stem, root, image_size)
    old_rows = {e[0]: (i, e) for i, e in enumerate(old["entries"])} if old else {}
    old_skipped = set(old["skipped"]) if old else set()
    known_bad = [e for e in entries if e in old_skipped]
    if known_bad and corrupt_policy == "fail":
        raise _corrupt_image_error(root, known_bad[0][0], image_size)
    plan = []  # (0: old row | 1: new row, row) for each listed, not known-bad file
    new_entries: list[Entry] = []
    for entry in entries:
        cached = old_rows.get(entry[0])
        if cached is not None and cached[1] == entry:
            plan.append((0, cached[0]))
        elif entry not in old_skipped:
            plan.append((1, len(new_entries)))
            new_entries.append(entry)
    kept_old = sum(1 for source, _ in plan if source == 0)
    removed = len(old_rows) - kept_old
    if old is not None and not new_entries and not removed:
        if sorted(old_skipped) != known_bad:  # only unreadable files went away
            _write_json_atomic(stem + ".json", _meta(root, image_size, old["entries"], known_bad))
        logging.info("Using the cached %s images %s.npy %s.", part, stem, old["images"].shape)
        return CachedPart(
            images=old["images"],
            entries=tuple(old["entries"]),
            row_sums=old["row_sums"],
            skipped=tuple(known_bad),
            build=BuildStats(reused=True),
        )

    _remove_stale_cache_files(cache_dir, prefix, root, keep_stem=stem)
    pid = os.getpid()
    decoded_path = f"{stem}.new-{pid}.npy"
    merged_path = f"{stem}.npy.tmp-{pid}"
    sums_path = f"{stem}.rowstats.tmp-{pid}"
    start = time.monotonic()
    try:
        new_sums: list[np.ndarray] = []
        skipped_new: list[int] = []
        if new_entries:
            logging.info(
                "Decoding %d %s images to %dx%d into %s.npy (%d cached images kept).",
                len(new_entries),
                part,
                image_size,
                image_size,
                stem,
                kept_old,
            )
            _, skipped_new = decode_images_to_cache(
                [rel for rel, _, _ in new_entries],
                root,
                image_size,
                decoded_path,
                corrupt_policy,
                row_sums=new_sums,
                require_any=kept_old == 0,
            )
        # Rows of the decoded file: the new entries less the unreadable ones, in order.
        skipped_set = set(skipped_new)
        decoded = np.array([i not in skipped_set for i in range(len(new_entries))], bool)
        decoded_row = np.cumsum(decoded, dtype=np.int64) - 1
        final = [
            (source, row if source == 0 else int(decoded_row[row]))
            for source, row in plan
            if source == 0 or row not in skipped_set
        ]
        if not final:
            raise ValueError(
                f"No image of {os.path.join(root, part)} could be decoded; check that the "
                "files are images."
            )
        sources = np.array([s for s, _ in final], np.int8)
        rows = np.array([r for _, r in final], np.int64)
        decoded_entries = [e for i, e in enumerate(new_entries) if i not in skipped_set]
        final_entries = tuple(old["entries"][r] if s == 0 else decoded_entries[r] for s, r in final)
        fresh_sums = np.concatenate(new_sums) if new_sums else np.zeros((0, 2, 3), np.int64)
        row_sums = np.empty((len(final), 2, 3), np.int64)
        if kept_old:
            row_sums[sources == 0] = old["row_sums"][rows[sources == 0]]
        row_sums[sources == 1] = fresh_sums[rows[sources == 1]]
        if kept_old:  # merge the kept rows and the decoded ones in path order
            writer = _NpyRowWriter(merged_path, len(final), (image_size, image_size, 3))
            try:
                _copy_rows(writer, [stem + ".npy", decoded_path], sources, rows)
                writer.close()
            finally:
                writer.abort()
        else:  # everything was decoded, already in path order
            os.replace(decoded_path, merged_path)
        with open(sums_path, "wb") as f:
            np.save(f, row_sums)
        skipped = sorted(known_bad + [new_entries[i] for i in skipped_new])
        # Invalidate the old cache first: a crash between these steps leaves no .json, and the
        # next run rebuilds instead of reading rows that do not match their entries.
        if os.path.exists(stem + ".json"):
            os.remove(stem + ".json")
        os.replace(merged_path, stem + ".npy")
        os.replace(sums_path, stem + ".rowstats")
        _write_json_atomic(stem + ".json", _meta(root, image_size, final_entries, skipped))
    finally:
        for leftover in (decoded_path, merged_path, sums_path):
            if os.path.exists(leftover):
                os.remove(leftover)
    build = BuildStats(
        decoded=tuple(rel for rel, _, _ in new_entries), copied=kept_old, removed=removed
    )
    logging.info(
        "Cached %d %s images in %s.npy: %d decoded, %d copied, %d dropped, %d unreadable "
        "(%.0f s).",
        len(final_entries),
        part,
        stem,
        len(build.decoded) - len(skipped_new),  # the unreadable ones were tried, not decoded
        build.copied,
        build.removed,
        len(skipped),
        time.monotonic() - start,
    )
    return CachedPart(
        np.load(stem + ".npy", mmap_mode="r"), final_entries, row_sums, tuple(skipped), build
    )


def _meta(root: str, image_size: int, entries: Sequence[Entry], skipped: Sequence[Entry]):
    return {
        "format": _CACHE_FORMAT,
        "root": root,
        "image_size": image_size,
        "entries": [list(e) for e in entries],
        "skipped": [list(e) for e in skipped],
    }


def entries_digest(entries: Sequence[Entry]) -> str:
    """sha256 hex over the (path, size, mtime_ns) entries, in the given order."""
    digest = hashlib.sha256()
    for rel, size, mtime in entries:
        digest.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
