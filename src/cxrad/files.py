"""Writing files so that a crash never leaves half of one, and reading untrusted files with bounds.

Every file cxrad writes (bundles, checkpoints, the image cache, result tables) goes through ``atomic_open``:
the content goes to a temporary file beside the target, is flushed to disk, and replaces the target in one
rename. Temporary files left by a killed process are named ``.<name>.<random>.tmp`` and removed by
``remove_stale_temporaries``.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from pathlib import Path

TMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once at import: os.umask is process-wide, so toggling it later would race with writer threads
FILE_MODE = 0o666 & ~_read_umask()


@contextlib.contextmanager
def atomic_open(path, durable: bool = True):
    """A binary file handle whose content replaces ``path`` only when the block completes; a crash or an
    error leaves the old file (or none) and no partial one. ``durable=False`` skips the fsync (~4 ms a file
    here): for caches whose reader treats an empty or damaged file after a power loss as a miss."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())  # the data is on disk before the rename makes it visible
        os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def remove_stale_temporaries(folder, older_than_s: float = 0.0) -> int:
    """Delete ``.*.tmp`` files that a killed writer left in ``folder``; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed, now = 0, time.time()
    for p in folder.glob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            if p.is_file() and now - p.stat().st_mtime >= older_than_s:
                p.unlink()
                removed += 1
    return removed


class UnsafeFileError(ValueError):
    """A path that is not a regular file of acceptable size."""


def regular_file_size(path, max_bytes: int) -> int:
    """The size of ``path`` if it is a regular file (after symlinks) of at most ``max_bytes``; raises
    UnsafeFileError otherwise. Devices, FIFOs and sockets are refused before anything is read, so that
    ``/dev/zero`` or a named pipe cannot hang a reader."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UnsafeFileError("file not found") from None
    except OSError as exc:
        raise UnsafeFileError(f"cannot access the file ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UnsafeFileError("is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError("not a regular file (a device, pipe or socket)")
    if st.st_size > max_bytes:
        raise UnsafeFileError(f"file too large ({st.st_size} bytes, limit {max_bytes})")
    return st.st_size


def read_regular_file(path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked before and while reading)."""
    regular_file_size(path, max_bytes)
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew between the check and the read
        raise UnsafeFileError(f"file too large (over {max_bytes} bytes)")
    return data
