"""The extension as the Extensions Manager installs it.

Slicer's extension build copies each module's scripts and resources into the build tree's
qt-scripted-modules/ and installs only that folder (SlicerMacroBuildScriptedModule.cmake calls
ctkMacroCompilePythonScript with NO_INSTALL_SUBDIR). Testing/SlicerStandIn/ re-implements those
variables and macros; here the real CMakeLists.txt is configured, built and installed with them,
and the INSTALLED module is imported with nothing of the checkout importable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO

STAND_IN = REPO / "Testing" / "SlicerStandIn"
QT_SCRIPTED = Path("lib") / "Slicer-5.8" / "qt-scripted-modules"


def _cmake(*args, cwd=None):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake not found: install Debian's cmake (the packaging test must run, not skip)")
    p = subprocess.run([cmake, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _configure_build_install(source: Path, work: Path) -> Path:
    build, install = work / "build", work / "install"
    _cmake("-S", source, "-B", build, f"-DSlicer_DIR={STAND_IN}", f"-DPython3_EXECUTABLE={sys.executable}")
    _cmake("--build", build)
    _cmake("--install", build, "--prefix", install)
    return install


@pytest.fixture(scope="module")
def extension(tmp_path_factory):
    work = tmp_path_factory.mktemp("extension")
    install = _configure_build_install(REPO, work)
    return work / "build", install, install / QT_SCRIPTED


def _installed_python(code: str, *paths, cwd, args=()) -> subprocess.CompletedProcess:
    """Python without site processing (no .pth files, so no editable install of the checkout),
    with only the given folders and this environment's site-packages on the path."""
    site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), *sorted(site)])
    return subprocess.run([sys.executable, "-S", "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=900)


def test_the_stand_in_reproduces_the_trap_of_relative_parent_paths(tmp_path):
    """A module listing '../Lib/x.py' (what LLNAssist did) gets x.py copied beside
    qt-scripted-modules, not into it, and the installed extension lacks it."""
    src = tmp_path / "src"
    (src / "Mod").mkdir(parents=True)
    (src / "Lib").mkdir()
    (src / "Lib" / "x.py").write_text("X = 1\n")
    (src / "Mod" / "Mod.py").write_text("import x\n")
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\nproject(Toy NONE)\nfind_package(Slicer REQUIRED)\n"
        "include(${Slicer_USE_FILE})\nadd_subdirectory(Mod)\n")
    (src / "Mod" / "CMakeLists.txt").write_text(
        "slicerMacroBuildScriptedModule(NAME Mod SCRIPTS Mod.py ../Lib/x.py)\n")
    install = _configure_build_install(src, tmp_path)
    installed = sorted(p.relative_to(install).as_posix() for p in install.rglob("*.py"))
    assert installed == [(QT_SCRIPTED / "Mod.py").as_posix()]
    assert (tmp_path / "build" / "lib" / "Slicer-5.8" / "Lib" / "x.py").is_file()  # beside, not inside


def test_installed_tree_holds_the_library_model_terminology_sample_and_ui(extension):
    from LLNAssistLib.model import manifest as M

    _build, install, qsm = extension
    # only qt-scripted-modules is installed, as in a real extension package
    assert {p.relative_to(install).as_posix() for p in install.iterdir()} == {"lib"}
    want = {p.relative_to(REPO).as_posix() for p in (REPO / "LLNAssistLib").rglob("*.py")}
    got = {p.relative_to(qsm).as_posix() for p in (qsm / "LLNAssistLib").rglob("*.py")}
    assert got == want
    assert (qsm / "LLNAssist.py").is_file()
    for rel in ("Resources/UI/LLNAssist.ui", "Resources/Icons/LLNAssist.png",
                "Resources/Terminology/LLNAssist.term.json", "Resources/Sample/LLNPhantom900507/image.nii.gz",
                "Resources/Sample/LLNPhantom900507/truth.json"):
        assert (qsm / rel).is_file(), rel
    model = qsm / "Resources" / "models" / M.DEFAULT_MODEL_ID
    man = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
    assert M.sha256_file(model / man["weights"]) == man["sha256"]


_IMPORT_INSTALLED = r"""
import importlib, json, os, sys
module = importlib.import_module("LLNAssist")  # the installed module file, outside the Slicer app
import LLNAssistLib
from LLNAssistLib import resources
from LLNAssistLib.model import manifest as M
model = M.resolve_model_dir(None)
weights = M.verified_weights_path(model, M.read_manifest(model))  # sha256 checked
here = os.path.dirname(module.__file__)
print(json.dumps({
    "module": module.__file__, "library": LLNAssistLib.__file__, "weights": str(weights),
    "terminology": str(resources.terminology_file()), "sample": str(resources.sample_dir()),
    "ui": os.path.join(here, "Resources", "UI", "LLNAssist.ui"),
    "loaded": sorted(m.__file__ for m in list(sys.modules.values())
                     if m.__name__.split(".")[0] in ("LLNAssist", "LLNAssistLib") and getattr(m, "__file__", None)),
    "has_test": hasattr(module, "LLNAssistTest"),
}))
"""


def test_installed_module_imports_with_nothing_of_the_checkout_importable(extension, tmp_path):
    _build, _install, qsm = extension
    # without the installed folder, the library cannot be imported at all (the checkout is not reachable)
    bare = _installed_python("import LLNAssistLib", cwd=tmp_path)
    assert bare.returncode != 0 and "No module named 'LLNAssistLib'" in bare.stderr
    p = _installed_python(_IMPORT_INSTALLED, qsm, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    root = str(qsm.resolve())
    for key in ("module", "library", "weights", "terminology", "sample", "ui"):
        assert str(Path(got[key]).resolve()).startswith(root), (key, got[key])
        assert Path(got[key]).exists(), key
    assert got["loaded"] and all(str(Path(f).resolve()).startswith(root) for f in got["loaded"])
    assert not any(str(REPO) in f for f in got["loaded"])
    assert got["has_test"]


def test_the_self_test_is_registered_as_a_ctest(extension):
    build, _install, _qsm = extension
    ctest = shutil.which("ctest")
    p = subprocess.run([ctest, "--test-dir", str(build), "-N"], capture_output=True, text=True, timeout=120)
    assert "py_LLNAssist" in p.stdout, p.stdout
    p = subprocess.run([ctest, "--test-dir", str(build), "-R", "py_LLNAssist", "-V"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "test_LLNAssist_installation" in p.stdout, p.stdout + p.stderr


_ANALYSE_INSTALLED = r"""
import json, sys, time
from LLNAssistLib import resources, runner
sample = resources.sample_dir()
out = sys.argv[1]
proc = runner.AnalysisProcess(runner.analyze_command(str(sample / "image.nii.gz"), out, device="cpu",
                                                     radiomics_engine="native", python=sys.executable)).start()
proc.wait(timeout=900)
print(json.dumps({"rc": proc.returncode, "error": proc.error, "runner": runner.__file__}))
"""


def test_the_installed_extension_analyses_its_sample_as_the_module_does(extension, tmp_path):
    """The module's Logic runs `python -m LLNAssistLib.cli analyze` from the installed tree."""
    _build, _install, qsm = extension
    out = tmp_path / "out"
    p = _installed_python(_ANALYSE_INSTALLED, qsm, cwd=tmp_path, args=[out])
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["rc"] == 0, got
    assert str(Path(got["runner"]).resolve()).startswith(str(qsm.resolve()))
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    truth = json.loads((qsm / "Resources" / "Sample" / "LLNPhantom900507" / "truth.json").read_text(encoding="utf-8"))
    assert summary["patient_status"] == truth["patient_status"]
    assert summary["n_nodes"] == len(truth["nodes"])
    man_path = qsm / "Resources" / "models" / summary["model"]["id"] / "manifest.json"
    man = json.loads(man_path.read_text(encoding="utf-8"))
    assert summary["model"]["sha256"] == man["sha256"]
