"""What tests of "never hangs on a special file" share: the special files, and a call run where a hang shows."""
from __future__ import annotations

import os
import threading
from pathlib import Path

SPECIAL_KINDS = ("dev_zero", "fifo", "symlink_to_dev_zero")


def special_file(path: Path, kind: str) -> Path | None:
    """For a kind in SPECIAL_KINDS, the path to read: /dev/zero itself, a FIFO made at ``path``, or a symlink at
    ``path`` to /dev/zero. None for any other kind (the caller makes its own)."""
    if kind == "dev_zero":
        return Path("/dev/zero")
    if kind == "fifo":
        os.mkfifo(path)
        return path
    if kind == "symlink_to_dev_zero":
        path.symlink_to("/dev/zero")
        return path
    return None


def finishes(fn, *args, timeout: float = 10.0):
    """fn(*args) in a daemon thread: (finished within ``timeout``, its result or the exception it raised)."""
    out = {}

    def run():
        try:
            out["v"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            out["v"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), out.get("v")
