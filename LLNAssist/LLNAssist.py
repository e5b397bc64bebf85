"""LLNAssist 3D Slicer module (minimal: the full module with review, correction and reader study
follows). It locates LLNAssistLib beside this file and runs the library's analysis on a volume."""

from __future__ import annotations

import os
import sys

try:  # the Slicer application; absent when this file is imported by plain Python tests
    import slicer
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleWidget,
    )
except ImportError:  # pragma: no cover - outside Slicer
    slicer = None
    ScriptedLoadableModule = ScriptedLoadableModuleLogic = ScriptedLoadableModuleWidget = object

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)


class LLNAssist(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        from LLNAssistLib import conventions

        parent.title = "LLNAssist"
        parent.categories = ["Segmentation"]
        parent.contributors = ["LLNAssist developers"]
        parent.helpText = ("Lateral lymph node assessment on axial T2-weighted MRI. "
                           + conventions.SYNTHETIC_MODEL_NOTICE)
        parent.acknowledgementText = "Implements seeds 001 (nnU-Net LLN) and 002 (radiomics score)."


class LLNAssistWidget(ScriptedLoadableModuleWidget):
    pass


class LLNAssistLogic(ScriptedLoadableModuleLogic):
    """GUI-free logic: writes the volume to a temporary file and runs `analyze` from the library."""

    def process(self, volume_node, out_dir, device="auto"):
        import tempfile

        from LLNAssistLib.pipeline import AnalysisOptions, analyze

        path = os.path.join(tempfile.mkdtemp(prefix="llnassist-"), "input.nrrd")
        slicer.util.saveNode(volume_node, path)
        return analyze(path, out_dir, AnalysisOptions(device=device))
