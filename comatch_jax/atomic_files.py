"""Files written whole or not at all: a temporary name in the same directory, then a rename.

A command that fails (an error, Ctrl-C, a full disk) while writing never leaves a partial
file under the final name that looks valid: the rename (`os.replace`, atomic on POSIX within
one file system) happens only after the content is complete and flushed to disk. A file of
the same name written before stays as it was until then. No TensorFlow, numpy only.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Any, Callable, Iterator


@contextlib.contextmanager
def open_atomic(path: str, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Like `open(path, mode)` for writing ("w" or "wb"), but the content appears at `path`
    only when the `with` block ends without an exception; otherwise the temporary file is
    removed and `path` is untouched. Creates missing parent directories. Raises OSError as
    `open` does.
    """
    with _renamed_when_done(path, ".tmp") as (handle, _):
        with os.fdopen(handle, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_atomic(path: str, write: Callable[[str], Any]) -> Any:
    """Calls `write(temp_path)` (e.g. a library's savefig) on a temporary file next to `path`
    that keeps `path`'s extension, then renames it to `path`; on any exception the temporary
    file is removed and `path` is untouched. Returns what `write` returns."""
    _, extension = os.path.splitext(path)
    with _renamed_when_done(path, f".tmp{extension}") as (handle, temp):
        os.close(handle)
        return write(temp)


@contextlib.contextmanager
def _renamed_when_done(path: str, suffix: str) -> Iterator[tuple[int, str]]:
    """(open OS handle, name) of a new temporary file next to `path` (parents made); when
    the block ends normally the file gets open()'s usual mode and replaces `path`; on any
    exception it is removed and the exception goes on. An OSError of the file system (a parent
    that is a file, a directory at `path`, no permission) names `path` in one line."""
    if path.endswith(os.sep):
        raise IsADirectoryError(f"Cannot write {path}: it names a directory, not a file.")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        handle, temp = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(path)}.", suffix=suffix
        )
    except OSError as error:
        raise _cannot_write(path, error) from error
    try:
        yield handle, temp
        os.chmod(temp, 0o666 & ~_umask())
        try:
            os.replace(temp, path)
        except OSError as error:
            raise _cannot_write(path, error) from error
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise


def make_directory(path: str, what: str = "directory") -> None:
    """`os.makedirs(path, exist_ok=True)` whose OSError (a file at `path` or above it, no
    permission) is one line naming `what` and `path`."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise _cannot_write(path, error, what) from error


def _cannot_write(path: str, error: OSError, what: str = "") -> OSError:
    """`error` as one line that names the file (or, with `what`, the directory) to be
    written, not the temporary one, and the file that stands where a directory must be."""
    blocking = os.path.abspath(path) if what else os.path.dirname(os.path.abspath(path))
    while blocking != os.path.dirname(blocking) and not os.path.lexists(blocking):
        blocking = os.path.dirname(blocking)
    if os.path.lexists(blocking) and not os.path.isdir(blocking):
        why = "it" if blocking == os.path.abspath(path) else blocking
        why += " is a file, not a directory"
    else:
        why = (error.strerror or str(error)).lower()
    if what:
        return type(error)(f"Cannot create the {what} {path}: {why}.")
    return type(error)(f"Cannot write {path}: {why}.")


def _umask() -> int:
    """The process's umask (mkstemp creates files 0600; written files get open()'s mode)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
