"""A throwaway local PostgreSQL server (Debian's binaries) on a Unix socket, for the PostgreSQL
tests, the benchmark and single-machine trials of a multi-site set-up. Not for production."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator


def binary(name: str):
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


@contextlib.contextmanager
def temporary_server() -> Iterator[dict]:
    """Yields {"host": socket dir, "port": n}; the server and its files are gone afterwards."""
    initdb, pg_ctl = binary("initdb"), binary("pg_ctl")
    if not initdb or not pg_ctl:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql")
    # Not under a private temp folder: when we are root the server runs as `postgres` and must reach it.
    base = Path(tempfile.mkdtemp(prefix="llnassist-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    as_user: list = []
    if os.geteuid() == 0:  # the server refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(base, 0o755)
        subprocess.run(["chown", "-R", "postgres", str(base)], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-w", "-l", str(base / "log"), "-o",
                        f"-k {sock} -p {port} -c listen_addresses='' -c fsync=on", "start"],
                       check=True, capture_output=True)
        yield {"host": str(sock), "port": port}
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def new_database(server: dict) -> str:
    """Creates an empty database on the server and returns its postgresql:// URL."""
    import psycopg

    name = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(f"postgresql://postgres@/postgres?host={server['host']}&port={server['port']}",
                         autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@/{name}?host={server['host']}&port={server['port']}"
