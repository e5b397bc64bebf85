"""Shared fixtures: real files on disk, the real `llnassist` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Seeds >= 900000 are never used for training (training uses 1..300).
UNSEEN_SEED = 910001


def run_cli(*args, check_rc=None, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, "-m", "LLNAssistLib.cli", *map(str, args)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    if check_rc is not None:
        assert p.returncode == check_rc, f"rc {p.returncode}\nstdout:{p.stdout}\nstderr:{p.stderr}"
    return p


@pytest.fixture(scope="session")
def reference_dir():
    """../shared/reference-data beside the checkout (as CI has it)."""
    d = REPO.parent / "shared" / "reference-data"
    if not d.is_dir():
        pytest.fail(f"reference data not found at {d}: link shared/ beside the checkout")
    return d


@pytest.fixture(scope="session")
def small_phantom():
    from LLNAssistLib import phantom

    return phantom.generate(UNSEEN_SEED, size=256, slices=24, n_nodes=4)


@pytest.fixture(scope="session")
def small_case(tmp_path_factory, small_phantom):
    from LLNAssistLib import phantom

    d = tmp_path_factory.mktemp("case")
    phantom.write(small_phantom, d)
    return d


@pytest.fixture(scope="session")
def analyzed(tmp_path_factory, small_case):
    """`llnassist analyze` run once on the unseen phantom (CPU), shared by the output tests."""
    out = tmp_path_factory.mktemp("analyzed") / "out"
    p = run_cli("analyze", small_case / "image.nii.gz", "--out", out, "--device", "cpu", check_rc=0)
    return out, p


def _pg_bin(name: str):
    import glob
    import shutil

    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A real PostgreSQL server (Debian's packages; scripts/test.sh installs them when missing) in a
    temporary folder, on a Unix socket, trust auth; stopped at the end of the session."""
    import socket

    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        if os.environ.get("LLNASSIST_SKIP_POSTGRES") == "1":
            pytest.skip("PostgreSQL server binaries missing and LLNASSIST_SKIP_POSTGRES=1")
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package")
    import shutil
    import tempfile

    # Not under pytest's tmp folder: its parents are private to root and the server runs as postgres.
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
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-w", "-l", str(base / "log"), "-o",
                    f"-k {sock} -p {port} -c listen_addresses='' -c fsync=on", "start"],
                   check=True, capture_output=True)
    try:
        yield {"host": str(sock), "port": port}
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server, request):
    """A fresh, empty database on the test server."""
    import uuid

    import psycopg

    name = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(f"postgresql://postgres@/postgres?host={pg_server['host']}&port={pg_server['port']}",
                         autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@/{name}?host={pg_server['host']}&port={pg_server['port']}"
