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
def atomic_open(path):
    """A binary file handle whose content replaces ``path`` only when the block completes; a crash or an
    error leaves the old file (or none) and no partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
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


def remove_stale_temporaries(folder, older_than_s: float = 0.0, recursive: bool = False) -> int:
    """Delete ``.*.tmp`` files that a killed writer left in ``folder`` (and its sub-folders when
    ``recursive``), if unmodified for ``older_than_s`` seconds; returns how many. In a folder that other
    processes write at the same time, give an age far above any write's duration: a younger temporary may be
    a live writer's."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed, now = 0, time.time()
    for root, dirs, names in os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]:
        for name in names:
            if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
                continue
            p = os.path.join(root, name)
            with contextlib.suppress(OSError):
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode) and now - st.st_mtime >= older_than_s:
                    os.unlink(p)
                    removed += 1
    return removed


class FolderBusyError(OSError):
    """Another process holds the lock on a folder."""


@contextlib.contextmanager
def folder_lock(folder, wait: bool = True):
    """Hold an exclusive lock on ``folder`` (flock on the folder itself, no lock file) while writing into it,
    so that two writers never interleave and a temporary found under the lock is a dead writer's. With
    ``wait=False``, a folder another process holds raises FolderBusyError at once. The kernel drops the lock
    when its holder dies, so a killed writer never leaves the folder locked. Where flock is unavailable
    (Windows) this does not lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise FolderBusyError(f"{folder} is in use by another process") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def path_text(path) -> str:
    """A path as text that can always be written as UTF-8: a name that is not valid UTF-8 (bytes the file
    system allows) keeps its valid parts and shows each other byte as ``\\xNN``; any other name is unchanged."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def walk_files(root):
    """(files, unreadable folders with their reason) under ``root``, sorted, walked with an explicit stack so
    that a tree of any depth cannot exhaust the recursion limit. Symlinks to folders are listed as entries but
    never followed (no loops); symlinks to files are kept (readers check what they point at)."""
    files, unreadable, stack = [], [], [os.fspath(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            unreadable.append((folder, f"cannot list this folder ({exc.strerror or type(exc).__name__})"))
            continue
        subfolders = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                if not is_dir and entry.is_symlink() and os.path.isdir(entry.path):
                    continue  # a symlink to a folder: not followed, and not a file
            except OSError:
                is_dir = False
            (subfolders if is_dir else files).append(entry.path)
        stack.extend(reversed(subfolders))
    return sorted(files, key=lambda f: Path(f).parts), unreadable  # the order of sorted(Path.rglob(...))


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


def open_regular_file(path, max_bytes: int):
    """A binary file object for a regular file of at most ``max_bytes``. Checked by path first (a device is
    never opened: opening some has side effects), then on the open descriptor (a path swapped for a FIFO in
    between cannot block: it is opened non-blocking and refused)."""
    regular_file_size(path, max_bytes)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UnsafeFileError("file not found") from None
    except OSError as exc:
        raise UnsafeFileError(f"cannot open the file ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError("not a regular file (a device, pipe or socket)")
        if st.st_size > max_bytes:
            raise UnsafeFileError(f"file too large ({st.st_size} bytes, limit {max_bytes})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked before and while reading)."""
    with open_regular_file(path, max_bytes) as fh:
        size = os.fstat(fh.fileno()).st_size
        data = fh.read(min(size, max_bytes) + 1)  # (a read buffer as large as the cap would be allocated whole)
        if len(data) > size and len(data) <= max_bytes:  # it grew since: read on, to the cap
            data += fh.read(max_bytes + 1 - len(data))
    if len(data) > max_bytes:  # it grew between the check and the read
        raise UnsafeFileError(f"file too large (over {max_bytes} bytes)")
    return data
