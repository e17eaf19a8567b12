"""The spool: where a received film waits, durably, until its result is recorded. The spool is the queue.

A film is acknowledged (C-STORE success, HTTP 202) only after ``Spool.put`` returns: its bytes went to a
temporary file that was fsynced, renamed into ``queue/`` and the folder fsynced, so a crash or a power cut
after the acknowledgement cannot lose it. The file name carries what the node knows about the film at receipt
(``ID~RECEIVED_NS~SOURCE~CALLING_AE_HEX.EXT``), so that one rename is the one commit point and nothing else
must be written in step. On start the node replays every file in ``queue/``; a file is removed only after its
result is in the database. A put that would take the spool past its size cap, or the disk below its reserve,
raises ``SpoolFull`` and writes nothing: the sender is told to retry later (C-STORE 0xA700, HTTP 503).

``Outbox`` keeps the result objects (Structured Reports, Secondary Captures) that wait to be sent, written the
same way.
"""
from __future__ import annotations

import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

SOURCES = ("dicom", "http", "stow")
EXTENSIONS = ("dcm", "png", "jpg")
NAME = re.compile(r"^(?P<id>[0-9a-f]{32})~(?P<ns>\d{1,20})~(?P<source>[a-z]{1,8})~(?P<ae>(?:[0-9a-f]{2}){0,16})"
                  r"\.(?P<ext>[a-z]{3})$")


class SpoolFull(Exception):
    """The spool cannot take this film now (size cap or disk reserve); nothing was written."""


@dataclass(frozen=True)
class Entry:
    """One spooled film."""

    path: Path
    id: str
    received_ns: int
    source: str
    calling_ae: str | None
    ext: str
    size: int = 0

    @property
    def received_at(self) -> datetime:
        return datetime.fromtimestamp(self.received_ns / 1e9, timezone.utc).replace(tzinfo=None)

    @classmethod
    def from_path(cls, path: Path) -> "Entry | None":
        m = NAME.match(path.name)
        if not m or m["source"] not in SOURCES or m["ext"] not in EXTENSIONS:
            return None
        try:
            size = path.stat().st_size
        except OSError:
            return None
        ae = bytes.fromhex(m["ae"]).decode("ascii", "replace") if m["ae"] else None
        return cls(path, m["id"], int(m["ns"]), m["source"], ae, m["ext"], size)


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write(folder: Path, tmp_folder: Path, name: str, data: bytes) -> Path:
    """``data`` as ``folder/name``: written to ``tmp_folder``, fsynced, renamed into place, folder fsynced."""
    tmp = tmp_folder / f"{name}.{secrets.token_hex(6)}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        target = folder / name
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(folder)
    return target


def durable_write_many(folder: Path, tmp_folder: Path, items: dict[str, bytes], pool) -> list[Path]:
    """``durable_write`` of several files at once: written, fsynced in parallel (the disk commits them
    together: 16 files cost about one fsync, not 16), renamed, and the folder fsynced once."""
    written: list[tuple[Path, Path, int]] = []
    try:
        for name, data in items.items():
            tmp = tmp_folder / f"{name}.{secrets.token_hex(6)}.part"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            written.append((tmp, folder / name, fd))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        list(pool.map(os.fsync, [fd for _, _, fd in written]))
    except BaseException:
        for tmp, _, fd in written:
            os.close(fd)
            tmp.unlink(missing_ok=True)
        raise
    for _, _, fd in written:
        os.close(fd)
    for tmp, target, _ in written:
        os.replace(tmp, target)
    fsync_folder(folder)
    return [target for _, target, _ in written]


class Spool:
    """``ROOT/queue`` (spooled films) and ``ROOT/tmp`` (writes in progress, cleared on start)."""

    def __init__(self, root, max_bytes: int, min_free_bytes: int = 0):
        self.root = Path(root)
        self.queue, self.tmp = self.root / "queue", self.root / "tmp"
        for folder in (self.queue, self.tmp):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for part in self.tmp.iterdir():  # a write a crash interrupted was never acknowledged
            part.unlink(missing_ok=True)
        self.max_bytes, self.min_free_bytes = int(max_bytes), int(min_free_bytes)
        self._lock = threading.Lock()
        self._sizes: dict[Path, int] = {}
        self._ids: dict[str, int] = {}  # film id -> spooled files with it (a film sent twice has two)
        for e in self.entries():
            self._track(e.path, e.id, e.size)
        self._used = sum(self._sizes.values())

    def _track(self, path: Path, film_id: str, size: int) -> None:
        self._sizes[path] = size
        self._ids[film_id] = self._ids.get(film_id, 0) + 1

    # ------------------------------------------------------------------------------------------- writing
    def put(self, film_id: str, data: bytes, source: str, ext: str, calling_ae: str | None = None) -> Entry:
        """Write one film durably and return its entry; raises SpoolFull (and writes nothing) when full."""
        if source not in SOURCES or ext not in EXTENSIONS or not re.fullmatch(r"[0-9a-f]{32}", film_id):
            raise ValueError("bad spool entry")
        size = len(data)
        with self._lock:
            if self._used + size > self.max_bytes:
                raise SpoolFull(f"the spool is full ({self._used} of {self.max_bytes} bytes)")
            if self.free_bytes() - size < self.min_free_bytes:
                raise SpoolFull("the disk is nearly full")
            self._used += size  # reserved now, so that writers in parallel cannot overshoot together
        ae = (calling_ae or "").strip().encode("ascii", "replace")[:16].hex()
        ns = time.time_ns()
        name = f"{film_id}~{ns}~{source}~{ae}.{ext}"
        try:
            path = durable_write(self.queue, self.tmp, name, data)
        except BaseException:
            with self._lock:
                self._used -= size
            raise
        with self._lock:
            self._track(path, film_id, size)
        return Entry(path, film_id, ns, source, calling_ae.strip() if calling_ae else None, ext, size)

    def remove(self, entry: Entry) -> None:
        """Drop a film whose result is recorded (a file that comes back after a crash is replayed and found
        already recorded, so the folder need not be fsynced here)."""
        entry.path.unlink(missing_ok=True)
        with self._lock:
            if entry.path in self._sizes:
                self._used -= self._sizes.pop(entry.path)
                left = self._ids.pop(entry.id, 1) - 1
                if left:
                    self._ids[entry.id] = left

    # ------------------------------------------------------------------------------------------- reading
    def entries(self) -> list[Entry]:
        """Every spooled film, oldest first (the replay order)."""
        found = (Entry.from_path(p) for p in self.queue.iterdir())
        return sorted((e for e in found if e is not None), key=lambda e: (e.received_ns, e.id))

    def holds(self, film_id: str) -> bool:
        with self._lock:
            return film_id in self._ids

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    @property
    def depth(self) -> int:
        with self._lock:
            return len(self._sizes)

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used


class Outbox:
    """Result objects waiting to be sent: ``ROOT/outbox/NAME``, written durably, removed once sent."""

    def __init__(self, root):
        self.folder, self.tmp = Path(root) / "outbox", Path(root) / "tmp"
        for folder in (self.folder, self.tmp):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._pool = None

    def put(self, name: str, data: bytes) -> Path:
        return durable_write(self.folder, self.tmp, name, data)

    def put_many(self, items: dict[str, bytes]) -> list[Path]:
        if not items:
            return []
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(8, thread_name_prefix="cxrad-fsync")
        return durable_write_many(self.folder, self.tmp, items, self._pool)

    def path(self, name: str) -> Path:
        return self.folder / name

    def remove(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def names(self) -> set[str]:
        return {p.name for p in self.folder.iterdir()}
