"""The Slicer extension packs every library file, and the module imports without the Slicer app."""

from __future__ import annotations

import importlib.util
import re

from conftest import REPO


def test_module_cmake_lists_every_library_file_and_the_bundled_data():
    """A file missing from LLNAssist/CMakeLists.txt is missing from the installed extension."""
    cmake = (REPO / "LLNAssist" / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s+(LLNAssistLib/\S+\.py)$", cmake, re.M))
    present = {p.relative_to(REPO).as_posix() for p in (REPO / "LLNAssistLib").rglob("*.py")}
    assert present == listed, (present ^ listed)
    data = [p for sub in ("models", "Terminology", "Sample") for p in (REPO / "Resources" / sub).rglob("*")
            if p.is_file() and p.name != "train.log"]
    assert data
    for p in data:
        assert re.search(rf"^\s+{re.escape(p.relative_to(REPO).as_posix())}$", cmake, re.M), p
    assert not re.search(r"^\s+\.\./", cmake, re.M)  # the trap: a listed "../x" lands outside the install
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "add_subdirectory(LLNAssist)" in top and 'EXTENSION_DEPENDS "PyTorch"' in top
    assert "WITH_GENERIC_TESTS" in cmake and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake


def test_module_file_imports_outside_slicer():
    spec = importlib.util.spec_from_file_location("LLNAssistModule", REPO / "LLNAssist" / "LLNAssist.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert hasattr(mod, "LLNAssistLogic") and callable(mod.LLNAssistLogic.process)


def _ui_names() -> dict:
    import xml.etree.ElementTree as ET

    root = ET.parse(REPO / "LLNAssist" / "Resources" / "UI" / "LLNAssist.ui").getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def test_every_ui_name_the_widget_uses_exists_in_the_ui_file():
    src = (REPO / "LLNAssist" / "LLNAssist.py").read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", src))
    # names built in loops: getattr(self.ui, f"score{k}Button") and the display check boxes
    used |= {f"score{k}Button" for k in range(1, 6)} if 'f"score{k}Button"' in src else set()
    used |= set(re.findall(r'"(\w+CheckBox)"', src))
    names = _ui_names()
    assert used and not (used - set(names)), used - set(names)


def test_ui_parameter_bindings_match_the_parameter_node_and_custom_widgets_are_declared():
    import xml.etree.ElementTree as ET

    src = (REPO / "LLNAssist" / "LLNAssist.py").read_text(encoding="utf-8")
    block = src.split("class LLNAssistParameterNode:")[1].split("\n\n\n")[0]
    fields = set(re.findall(r"^\s{4}(\w+):", block, re.M))
    root = ET.parse(REPO / "LLNAssist" / "Resources" / "UI" / "LLNAssist.ui").getroot()
    bound = {p.find("string").text for p in root.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound and bound <= fields, bound - fields
    # Slicer's GUI connectors bind only these widget/type pairs (slicer/parameterNodeWrapper/guiConnectors.py)
    allowed = {"QCheckBox": ("bool",), "ctkPathLineEdit": ("pathlib.Path",), "QComboBox": ("Annotated[str, Choice",),
               "ctkSliderWidget": ("Annotated[float, WithinRange",), "qMRMLNodeComboBox": ("vtkMRML",),
               "QLineEdit": ("str",)}
    for w in root.iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                name = prop.find("string").text
                annotation = re.search(rf"^\s{{4}}{name}:\s*([^=\n]+)", block, re.M).group(1).strip()
                assert annotation.startswith(allowed[w.get("class")]), (w.get("name"), annotation)
    declared = {c.find("class").text for c in root.iter("customwidget")}
    used_classes = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used_classes if c.startswith(("ctk", "qMRML"))} <= declared


def test_module_resources_are_listed_in_cmake():
    cmake = (REPO / "LLNAssist" / "CMakeLists.txt").read_text(encoding="utf-8")
    for p in (REPO / "LLNAssist" / "Resources").rglob("*"):
        if p.is_file():
            rel = p.relative_to(REPO / "LLNAssist").as_posix().replace("LLNAssist.", "${MODULE_NAME}.")
            assert rel in cmake, p


def test_slicer_side_code_parses_as_python_3_9():
    """Slicer 5.8 bundles Python 3.9: the module and the library must parse with its grammar."""
    import ast

    files = list((REPO / "LLNAssistLib").rglob("*.py")) + [REPO / "LLNAssist" / "LLNAssist.py"]
    for p in files:
        ast.parse(p.read_text(encoding="utf-8"), filename=str(p), feature_version=(3, 9))


def _module():
    spec = importlib.util.spec_from_file_location("LLNAssistModule", REPO / "LLNAssist" / "LLNAssist.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Wrapper58:
    """What Slicer 5.8.1's parameterNodeWrapper does (wrapper.py: _connectGui registers the
    connectors under a new tag in _parameterGUIs but returns None; disconnectGui(tag) removes them)."""

    def __init__(self):
        self._parameterGUIs = {}
        self._nextParameterGUIsTag = 0

    def _register(self, gui):
        tag = self._nextParameterGUIsTag
        self._nextParameterGUIsTag += 1
        self._parameterGUIs[tag] = gui
        return tag

    def connectGui(self, gui):
        self._register(gui)

    def disconnectGui(self, tag):
        self._parameterGUIs.pop(tag, None)


class _Wrapper510(_Wrapper58):
    """Slicer 5.10 and later return the tag."""

    def connectGui(self, gui):
        return self._register(gui)


def test_gui_bindings_can_be_removed_on_slicer_5_8_and_later():
    mod = _module()
    for cls in (_Wrapper58, _Wrapper510):
        w = cls()
        for _ in range(3):  # enter / exit three times
            tag = mod.connectGui(w, "ui")
            assert tag is not None
            w.disconnectGui(tag)
        assert w._parameterGUIs == {}, cls.__name__


def test_module_finds_the_library_beside_it_when_installed_and_one_up_in_a_checkout(tmp_path):
    mod = _module()
    installed = tmp_path / "qt-scripted-modules"
    (installed / "LLNAssistLib").mkdir(parents=True)
    (installed / "LLNAssistLib" / "__init__.py").write_text("")
    assert mod._library_root(str(installed)) == str(installed)
    assert mod._library_root(str(REPO / "LLNAssist")) == str(REPO)


def test_a_postgresql_study_url_survives_the_study_field():
    import pathlib

    mod = _module()
    url = "postgresql://reader@db.site.org:5432/lln_study"
    assert str(pathlib.Path(url)) != url  # what binding the field to a Path did
    assert mod._study_location_or_none(f"  {url} ") == url
    assert mod._study_location_or_none("   ") is None
    block = (REPO / "LLNAssist" / "LLNAssist.py").read_text(encoding="utf-8").split("class LLNAssistParameterNode:")[1]
    assert re.search(r"^\s{4}studyLocation: str\b", block, re.M)
