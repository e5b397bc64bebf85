"""The Slicer extension packs every library file, and the module imports without the Slicer app."""

from __future__ import annotations

import importlib.util
import re

from conftest import REPO


def test_module_cmake_lists_every_library_file_and_the_bundled_model():
    cmake = (REPO / "LLNAssist" / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"\.\./(LLNAssistLib/\S+\.py)", cmake))
    present = {p.relative_to(REPO).as_posix() for p in (REPO / "LLNAssistLib").rglob("*.py")}
    assert present == listed, (present ^ listed)
    for p in (REPO / "Resources" / "models").rglob("*"):
        if p.name in ("model.pt", "manifest.json"):
            assert p.relative_to(REPO).as_posix() in cmake
    top = (REPO / "CMakeLists.txt").read_text()
    assert "add_subdirectory(LLNAssist)" in top and 'EXTENSION_DEPENDS "PyTorch"' in top
    assert "WITH_GENERIC_TESTS" in cmake


def test_module_file_imports_outside_slicer():
    spec = importlib.util.spec_from_file_location("LLNAssistModule", REPO / "LLNAssist" / "LLNAssist.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert hasattr(mod, "LLNAssistLogic") and callable(mod.LLNAssistLogic.process)
