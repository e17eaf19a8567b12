"""A throwaway PostgreSQL server for tests: Debian's postgresql (``apt-get install postgresql``; `.ci/run`
installs it), a fresh cluster in a temporary folder, listening on a free loopback port only, stopped and
deleted afterwards. PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user."""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres(folder: Path | None = None):
    """Yield the SQLAlchemy URL (psycopg 3) of a new, empty database ``screening`` whose cluster lives in
    ``folder`` (as root: a new folder under the system's temporary folder, which the postgres user can reach);
    skip the test with the reason when PostgreSQL or psycopg is not installed."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'cxrad[serve]')")
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql, as root; .ci/run does)")
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
        as_user = ["runuser", "-u", "postgres", "--"]
    if as_user or folder is None:  # pytest's own temporary folders are private to root
        folder = Path(tempfile.mkdtemp(prefix="cxrad-pg-"))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if as_user:
        shutil.chown(folder, "postgres", "postgres")
    os.chmod(folder, 0o700)
    data, port = folder / "data", _free_port()

    def run(*cmd):
        done = subprocess.run([*as_user, *map(str, cmd)], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{Path(str(cmd[0])).name} failed: {(done.stderr or done.stdout).strip()[-800:]}")
        return done

    run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    run(bindir / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "-t", "60", "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "screening")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/screening"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
