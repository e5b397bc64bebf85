"""Shared fixtures: real files on disk, the real `llnassist` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The tests' own pseudonym key and library log (the CLI subprocesses inherit them), not the user's.
_SESSION_DIR = Path(__import__("tempfile").mkdtemp(prefix="lln-tests-"))
os.environ.setdefault("LLNASSIST_PSEUDONYM_KEY", str(_SESSION_DIR / "pseudonym.key"))
os.environ.setdefault("LLNASSIST_LOG", str(_SESSION_DIR / "llnassist.log"))
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


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server (Debian's packages; scripts/test.sh installs them when missing) in a
    temporary folder, on a Unix socket; stopped at the end of the session."""
    from LLNAssistLib.readerstudy import pgserver

    if not pgserver.binary("initdb"):
        if os.environ.get("LLNASSIST_SKIP_POSTGRES") == "1":
            pytest.skip("PostgreSQL server binaries missing and LLNASSIST_SKIP_POSTGRES=1")
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package")
    with pgserver.temporary_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the test server."""
    from LLNAssistLib.readerstudy import pgserver

    return pgserver.new_database(pg_server)


@pytest.fixture
def loaded(analyzed, small_case):
    """The analysed phantom loaded into a fresh slicer-core scene: (scene, volume, results, out)."""
    from LLNAssistLib import mrml_bridge as B

    out, _ = analyzed
    scene = B.new_scene()
    vol = B.load_volume(scene, small_case / "image.nii.gz")
    res = B.load_results(scene, out, vol)
    return scene, vol, res, out


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A real PACS: Debian's Orthanc with the DICOMweb plugin on localhost (its own storage folder and
    a test user), as the PostgreSQL tests start their server; stopped at the end of the session."""
    from pacs import Orthanc

    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()
