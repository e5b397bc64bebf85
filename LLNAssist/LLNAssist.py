"""LLNAssist: lateral lymph node assessment on axial T2-weighted MRI, as a 3D Slicer module.

Widget / Logic / Test as in Slicer's scripted-module template. The widget is thin: every
computation is in LLNAssistLib (beside this folder); the analysis runs in a separate process
(`llnassist analyze` under PythonSlicer) so Slicer stays responsive, with progress and Cancel.
Stays Python 3.9 compatible (Slicer 5.8); no `from __future__ import annotations` here because
the parameter node wrapper reads the annotations at class creation.
"""

import os
import pathlib
import sys
from typing import Annotated

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
if _REPO not in sys.path:  # LLNAssistLib lives beside the module folder (source tree and extension)
    sys.path.insert(0, _REPO)

try:  # the Slicer application; absent when this file is imported by plain Python tests
    import ctk
    import qt
    import slicer
    import vtk
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin

    IN_SLICER = hasattr(slicer, "app")
except ImportError:  # pragma: no cover - outside Slicer
    IN_SLICER = False
    ctk = qt = vtk = None
    # Distinct placeholder bases so the classes below still build (and Logic's pure parts import).
    ScriptedLoadableModule = type("ScriptedLoadableModule", (), {})
    ScriptedLoadableModuleLogic = type("ScriptedLoadableModuleLogic", (), {})
    ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (), {})
    VTKObservationMixin = type("VTKObservationMixin", (), {})

if not IN_SLICER:  # stand-ins so this file imports (and its Logic runs) outside the application
    vtkMRMLScalarVolumeNode = vtkMRMLSegmentationNode = vtkMRMLTableNode = object

    def parameterNodeWrapper(cls):
        return cls

    def WithinRange(lo, hi):  # noqa: N802 - Slicer's name
        return None

    def Choice(values):  # noqa: N802 - Slicer's name
        return None

SAMPLE_IMAGE = os.path.join(_REPO, "Resources", "Sample", "LLNPhantom900507", "image.nii.gz")
# Python packages the library needs beyond what Slicer bundles (numpy, SimpleITK, scipy): pip names.
PIP_REQUIREMENTS = {"monai": "monai>=1.3", "skimage": "scikit-image>=0.21", "slicerio": "slicerio>=1.1",
                    "nrrd": "pynrrd>=1.0", "matplotlib": "matplotlib>=3.7"}


def _path_or_none(path):
    """A parameter-node path, or None when the user has not chosen one (an empty path reads '.')."""
    text = str(path) if path is not None else ""
    return None if text in ("", ".") else text


#
# Module
#
class LLNAssist(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        from LLNAssistLib import conventions

        parent.title = "LLNAssist"
        parent.categories = ["Segmentation"]
        parent.dependencies = []
        parent.contributors = ["LLNAssist developers"]
        parent.helpText = (
            "Lateral lymph node assessment in rectal cancer on axial T2-weighted MRI: U-Net segmentation of the "
            "internal iliac, obturator and external iliac regions and of positive/negative nodes, short and long "
            "axes, the radiomics score of seed 002, correction and click-to-segment, and reader studies with 1-5 "
            "scoring. " + conventions.SYNTHETIC_MODEL_NOTICE)
        parent.acknowledgementText = (
            "Implements the methods of seed 001 (nnU-Net LLN segmentation, short axis) and seed 002 "
            "(radiomics score, reader study). Not for clinical use.")
        # Our lymph-node codes in Slicer's terminology selector and DICOM SEG export.
        slicer.app.connect("startupCompleted()", registerTerminology)


def registerTerminology():
    path = os.path.join(_REPO, "Resources", "Terminology", "LLNAssist.term.json")
    logic = getattr(slicer.modules, "terminologies", None)
    if logic is not None and os.path.isfile(path):
        logic.logic().LoadTerminologyFromFile(path)


#
# Parameter node
#
@parameterNodeWrapper
class LLNAssistParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    modelFolder: pathlib.Path  # ctkPathLineEdit binds to pathlib.Path only
    postTreatment: bool = False
    showRegions: bool = True
    showNegative: bool = True
    showPositive: bool = True
    show3D: bool = False
    outlineOnly: bool = False
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    resultSegmentation: vtkMRMLSegmentationNode
    resultTable: vtkMRMLTableNode
    studyPath: pathlib.Path
    readerId: str = ""


#
# Widget
#
class LLNAssistWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._placeNode = None
        self._session = None
        self._score = None
        self._point = None
        self._recomputeTimer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from LLNAssistLib import conventions
        from LLNAssistLib.model.manifest import DEFAULT_MODEL_ID

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LLNAssist.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LLNAssistLogic()

        self.ui.modelComboBox.addItem(f"{DEFAULT_MODEL_ID} (bundled, synthetic training data)", "")
        self.ui.modelComboBox.addItem("Model folder...", "folder")
        self.ui.syntheticNoticeLabel.text = conventions.SYNTHETIC_MODEL_NOTICE
        self.ui.progressBar.setVisible(False)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.updateGUIFromParameterNode)
        self.ui.nodeTableView.connect("clicked(QModelIndex)", self.onTableClicked)
        self.ui.clickToSegmentButton.connect("toggled(bool)", self.onClickToSegment)
        self.ui.segmentEditorButton.connect("clicked(bool)", self.onSegmentEditor)
        self.ui.recomputeButton.connect("clicked(bool)", self.onRecompute)
        self.ui.markPositiveButton.connect("clicked(bool)", lambda: self.onSetStatus("positive"))
        self.ui.markNegativeButton.connect("clicked(bool)", lambda: self.onSetStatus("negative"))
        self.ui.deleteNodeButton.connect("clicked(bool)", self.onDeleteNode)
        self.ui.saveSceneButton.connect("clicked(bool)", self.onSaveScene)
        for name in ("showRegionsCheckBox", "showNegativeCheckBox", "showPositiveCheckBox", "show3DCheckBox",
                     "outlineCheckBox"):
            getattr(self.ui, name).connect("toggled(bool)", self.onDisplayChanged)
        self.ui.opacitySliderWidget.connect("valueChanged(double)", self.onDisplayChanged)

        # Reader study
        self.ui.startReadingButton.connect("clicked(bool)", self.onStartReading)
        self.ui.placePointButton.connect("toggled(bool)", self.onPlacePoint)
        self.ui.recordRatingButton.connect("clicked(bool)", self.onRecordRating)
        self.ui.submitReadButton.connect("clicked(bool)", self.onSubmitRead)
        for k in range(1, 6):
            button = getattr(self.ui, f"score{k}Button")
            button.connect("clicked(bool)", lambda _checked, k=k: self.onScore(k))
            shortcut = qt.QShortcut(qt.QKeySequence(str(k)), self.parent)
            shortcut.connect("activated()", lambda k=k: self.onScore(k))
        self._caseTimer = qt.QTimer()
        self._caseTimer.setInterval(1000)
        self._caseTimer.connect("timeout()", self.onCaseTimer)

        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()
        if self.logic:
            self.logic.cancel()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        p = self._parameterNode
        if p is None:
            return
        busy = self.logic.running
        self.ui.applyButton.text = "Cancel" if busy else "Analyze"
        self.ui.applyButton.enabled = busy or bool(p.inputVolume)
        self.ui.modelPathLineEdit.setVisible(self.ui.modelComboBox.currentData == "folder")
        has = bool(p.resultSegmentation)
        for name in ("clickToSegmentButton", "segmentEditorButton", "recomputeButton", "markPositiveButton",
                     "markNegativeButton", "deleteNodeButton", "saveSceneButton", "nodeComboBox"):
            getattr(self.ui, name).enabled = has and not busy
        if p.resultTable:
            self.ui.nodeTableView.setMRMLTableNode(p.resultTable)
        if p.resultSegmentation:
            from LLNAssistLib import mrml_bridge

            status = p.resultSegmentation.GetAttribute(mrml_bridge.ATTR_PATIENT_STATUS) or "-"
            self.ui.patientStatusLabel.text = status
            current = self.ui.nodeComboBox.currentText
            self.ui.nodeComboBox.clear()
            for row in mrml_bridge.table_rows(p.resultTable) if p.resultTable else []:
                self.ui.nodeComboBox.addItem(f"Node {row['node_id']}", int(row["node_id"]))
            index = self.ui.nodeComboBox.findText(current)
            if index >= 0:
                self.ui.nodeComboBox.setCurrentIndex(index)

    # -- analysis -------------------------------------------------------------------------------
    def onApplyButton(self):
        if self.logic.running:
            self.logic.cancel()
            self.ui.statusLabel.text = "Cancelled"
            self.ui.progressBar.setVisible(False)
            self.updateGUIFromParameterNode()
            return
        with slicer.util.tryWithErrorDisplay("LLNAssist could not start the analysis.", waitCursor=True):
            if not self.logic.ensureDependencies(askConfirmation=True):
                return
            p = self._parameterNode
            model = _path_or_none(p.modelFolder) if self.ui.modelComboBox.currentData == "folder" else None
            if self.ui.modelComboBox.currentData == "folder" and model is None:
                raise ValueError("Choose the model folder (with model.pt and manifest.json).")
            self.ui.logTextEdit.clear()
            self.ui.progressBar.setVisible(True)
            self.ui.progressBar.value = 0
            self.logic.process(p.inputVolume, model=model, device=p.device, postTreatment=p.postTreatment,
                               waitForCompletion=False, progressCallback=self.onProgress,
                               completedCallback=self.onCompleted)
            self.updateGUIFromParameterNode()

    def onProgress(self, progress, lines):
        for line in lines:
            self.ui.logTextEdit.appendPlainText(line)
        if progress is not None:
            self.ui.progressBar.value = int(round(100 * progress.fraction))
            self.ui.statusLabel.text = progress.label + (f": {progress.detail}" if progress.detail else "")

    def onCompleted(self, results, error):
        self.ui.progressBar.setVisible(False)
        if error:
            self.ui.statusLabel.text = "Failed"
            slicer.util.errorDisplay(error, windowTitle="LLNAssist")
        elif results is not None:
            self.ui.statusLabel.text = f"Done: patient {results.patient_status}"
            self._parameterNode.resultSegmentation = results.segmentation
            self._parameterNode.resultTable = results.table
            self.onDisplayChanged()
            self.observeSegmentation(results.segmentation)
        self.updateGUIFromParameterNode()

    # -- review and correction -------------------------------------------------------------------------
    def onTableClicked(self, index):
        p = self._parameterNode
        if p.resultTable:
            from LLNAssistLib import mrml_bridge

            mrml_bridge.jump_to_node(slicer.mrmlScene, p.resultTable, index.row())

    def onDisplayChanged(self, *args):
        p = self._parameterNode
        if p and p.resultSegmentation:
            self.logic.applyDisplay(p)

    def onClickToSegment(self, active):
        if not active:
            return
        self._placeNode = self._placeNode or slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode",
                                                                                  "LLNAssist click")
        self._placeNode.RemoveAllControlPoints()
        self.addObserver(self._placeNode, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointPlaced)
        slicer.modules.markups.logic().SetActiveList(self._placeNode)
        slicer.modules.markups.logic().StartPlaceMode(False)

    def onPointPlaced(self, caller, event):
        ras = [0.0, 0.0, 0.0]
        caller.GetNthControlPointPositionWorld(caller.GetNumberOfControlPoints() - 1, ras)
        self.removeObserver(caller, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointPlaced)
        caller.RemoveAllControlPoints()
        self.ui.clickToSegmentButton.checked = False
        with slicer.util.tryWithErrorDisplay("Could not segment a node at that point.", waitCursor=True):
            self.logic.clickToSegment(self._parameterNode, ras)
        self.updateGUIFromParameterNode()

    def onSegmentEditor(self):
        p = self._parameterNode
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(p.resultSegmentation)
        editor.setSourceVolumeNode(p.inputVolume)

    def observeSegmentation(self, segmentationNode):
        """Numbers update on each change made in the Segment Editor (debounced)."""
        if self._recomputeTimer is None:
            self._recomputeTimer = qt.QTimer()
            self._recomputeTimer.setSingleShot(True)
            self._recomputeTimer.setInterval(1500)
            self._recomputeTimer.connect("timeout()", self.onRecompute)
        segmentation = segmentationNode.GetSegmentation()
        for event in (slicer.vtkSegmentation.RepresentationModified, slicer.vtkSegmentation.SegmentAdded,
                      slicer.vtkSegmentation.SegmentRemoved):
            self.addObserver(segmentation, event, self.onSegmentationEdited)

    def onSegmentationEdited(self, caller, event):
        if not self.logic.recomputing:
            self._recomputeTimer.start()

    def onRecompute(self):
        with slicer.util.tryWithErrorDisplay("Could not recompute the measurements.", waitCursor=True):
            self.logic.recompute(self._parameterNode)
        self.updateGUIFromParameterNode()

    def onSetStatus(self, status):
        node_id = self.ui.nodeComboBox.currentData
        with slicer.util.tryWithErrorDisplay("Could not change the node's status.", waitCursor=True):
            self.logic.setStatus(self._parameterNode, int(node_id), status)
        self.updateGUIFromParameterNode()

    def onDeleteNode(self):
        node_id = self.ui.nodeComboBox.currentData
        if node_id is None or not slicer.util.confirmYesNoDisplay(f"Delete node {node_id}?"):
            return
        with slicer.util.tryWithErrorDisplay("Could not delete the node.", waitCursor=True):
            self.logic.deleteNode(self._parameterNode, int(node_id))
        self.updateGUIFromParameterNode()

    def onSaveScene(self):
        path = qt.QFileDialog.getSaveFileName(None, "Save case", "", "Medical Reality Bundle (*.mrb)")
        if path:
            with slicer.util.tryWithErrorDisplay("Could not save the case.", waitCursor=True):
                from LLNAssistLib import mrml_bridge

                mrml_bridge.save_mrb(slicer.mrmlScene, path)

    # -- reader study ------------------------------------------------------------------------------------
    def onStartReading(self):
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not open the reader study.", waitCursor=True):
            self._session = self.logic.openReadingSession(_path_or_none(p.studyPath), p.readerId)
            self.showCurrentCase()

    def showCurrentCase(self):
        s = self._session
        self._score, self._point = None, None
        for k in range(1, 6):
            getattr(self.ui, f"score{k}Button").checked = False
        self.ui.commentLineEdit.text = ""
        self.ui.studyProgressLabel.text = s.progress_text() + (f" - {s.waiting}" if s.waiting else "")
        if s.done or s.waiting:
            self._caseTimer.stop()
            return
        self.logic.loadStudyCase(s.current["view"])  # only what this session may show
        self._caseTimer.start()
        self.logic.preloadNext(s.peek_next())

    def onCaseTimer(self):
        if self._session and not self._session.done:
            sec = int(self._session.seconds_on_case())
            self.ui.caseTimerLabel.text = f"{sec // 60}:{sec % 60:02d}"

    def onScore(self, k):
        if not self.ui.studyCollapsibleButton.collapsed and self._session:
            self._score = k
            for j in range(1, 6):
                getattr(self.ui, f"score{j}Button").checked = j == k

    def onPlacePoint(self, active):
        if not active:
            return
        node = self.logic.readerPointNode()
        self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onReaderPoint)
        slicer.modules.markups.logic().SetActiveList(node)
        slicer.modules.markups.logic().StartPlaceMode(False)

    def onReaderPoint(self, caller, event):
        ras = [0.0, 0.0, 0.0]
        caller.GetNthControlPointPositionWorld(caller.GetNumberOfControlPoints() - 1, ras)
        self._point = ras
        self.removeObserver(caller, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onReaderPoint)
        self.ui.placePointButton.checked = False

    def onRecordRating(self):
        with slicer.util.tryWithErrorDisplay("Could not record the rating.", waitCursor=True):
            if self._score is None:
                raise ValueError("Choose a score from 1 to 5 first.")
            call = True if self.ui.callYesRadioButton.checked else (False if self.ui.callNoRadioButton.checked
                                                                     else None)
            self._session.rate(self._score, call=call, point=self._point,
                               most_suspicious=self.ui.mostSuspiciousCheckBox.checked,
                               comment=self.ui.commentLineEdit.text)
            self.ui.statusLabel.text = f"Rating {self._score} recorded"

    def onSubmitRead(self):
        with slicer.util.tryWithErrorDisplay("Could not submit the case.", waitCursor=True):
            if self._score is not None and not self._session.ratings():
                self.onRecordRating()
            self._session.submit()
            self.showCurrentCase()


#
# Logic
#
class LLNAssistLogic(ScriptedLoadableModuleLogic):
    """Usable without the widget: `process(volume, waitForCompletion=True)` returns the results."""

    def __init__(self):
        if IN_SLICER:
            ScriptedLoadableModuleLogic.__init__(self)
        self._process = None
        self._timer = None
        self._outDir = None
        self._volume = None
        self.recomputing = False
        self._study = None
        self._pointNode = None

    def getParameterNode(self):
        return LLNAssistParameterNode(super().getParameterNode())

    @property
    def running(self):
        return self._process is not None and self._process.running

    # -- set-up ------------------------------------------------------------------------------------
    @staticmethod
    def missingPackages():
        import importlib.util

        missing = [pip for mod, pip in PIP_REQUIREMENTS.items() if importlib.util.find_spec(mod) is None]
        torch_missing = importlib.util.find_spec("torch") is None
        return missing, torch_missing

    def ensureDependencies(self, askConfirmation=True):
        """First use: installs torch (PyTorch extension) and the pip packages, after the user agrees."""
        missing, torch_missing = self.missingPackages()
        if not missing and not torch_missing:
            return True
        what = ", ".join((["torch (PyTorch extension)"] if torch_missing else []) + missing)
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                f"LLNAssist needs these Python packages: {what}. Install them now? This takes a few minutes "
                "and needs an internet connection once.", windowTitle="LLNAssist"):
            return False
        if torch_missing:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError("Install the PyTorch extension from the Extensions Manager, restart Slicer and "
                                   "try again.") from None
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise RuntimeError("PyTorch could not be installed; see the PyTorch Util module.")
        if missing:
            slicer.util.pip_install(" ".join(missing))
        return True

    # -- analysis ------------------------------------------------------------------------------------
    def process(self, inputVolume, outputFolder=None, model=None, device="auto", postTreatment=False,
                waitForCompletion=False, progressCallback=None, completedCallback=None):
        """Runs `llnassist analyze` on the volume in a separate process and loads the results into
        the scene. With waitForCompletion the call blocks and returns the SceneResults."""
        import tempfile

        from LLNAssistLib import runner

        if inputVolume is None:
            raise ValueError("Select an input volume.")
        if self.running:
            raise RuntimeError("An analysis is already running; wait for it or cancel it.")
        work = tempfile.mkdtemp(prefix="llnassist-")
        image = os.path.join(work, "input.nrrd")
        if not slicer.util.saveNode(inputVolume, image):
            raise RuntimeError(f"Could not write the volume to {image}.")
        self._outDir = outputFolder or os.path.join(work, "results")
        self._volume = inputVolume
        # PyRadiomics does not build on Slicer's Python 3.12: the native engine gives the same score.
        engine = "auto"
        cmd = runner.analyze_command(image, self._outDir, model=model, device=device, post_treatment=postTreatment,
                                     radiomics_engine=engine)
        self._process = runner.AnalysisProcess(cmd).start()
        if waitForCompletion:
            self._process.wait()
            return self._finish(None, completedCallback)
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", lambda: self._poll(progressCallback, completedCallback))
        self._timer.start()
        return self._process

    def _poll(self, progressCallback, completedCallback):
        n_before = len(self._process.log)
        events = self._process.poll()
        if progressCallback:
            progressCallback(events[-1] if events else None, self._process.log[n_before:])
        if not self._process.running:
            self._timer.stop()
            self._finish(progressCallback, completedCallback)

    def _finish(self, progressCallback, completedCallback):
        proc = self._process
        results, error = None, ""
        if proc.cancelled:
            error = ""
        elif proc.returncode != 0:
            error = proc.error or "The analysis failed; see the log."
        else:
            from LLNAssistLib import mrml_bridge

            results = mrml_bridge.load_results(slicer.mrmlScene, self._outDir, self._volume)
            p = self.getParameterNode()
            p.resultSegmentation, p.resultTable = results.segmentation, results.table
        if completedCallback:
            completedCallback(results, error)
        elif error:
            raise RuntimeError(error)
        return results

    def cancel(self):
        if self.running:
            self._process.cancel()
            if self._timer:
                self._timer.stop()

    # -- correction ------------------------------------------------------------------------------------
    def _edit(self, fn, p, *args):

        self.recomputing = True
        try:
            out = fn(slicer.mrmlScene, p.inputVolume, p.resultSegmentation, *args,
                     post_treatment=p.postTreatment)
            results = out[1] if isinstance(out, tuple) else out
            p.resultTable = results.table
            self.applyDisplay(p)
            return out
        finally:
            self.recomputing = False

    def applyDisplay(self, p):
        """The parameter node's display choices applied to the result segmentation."""
        from LLNAssistLib import mrml_bridge

        mrml_bridge.set_display(p.resultSegmentation, p.showRegions, p.showNegative, p.showPositive, p.show3D,
                                p.outlineOnly, p.opacity)

    def recompute(self, p):
        from LLNAssistLib import mrml_bridge

        return self._edit(mrml_bridge.recompute, p)

    def clickToSegment(self, p, ras):
        from LLNAssistLib import mrml_bridge

        return self._edit(mrml_bridge.click_to_segment, p, ras)

    def setStatus(self, p, nodeId, status):
        from LLNAssistLib import mrml_bridge

        return self._edit(mrml_bridge.set_status, p, nodeId, status)

    def deleteNode(self, p, nodeId):
        from LLNAssistLib import mrml_bridge

        return self._edit(mrml_bridge.delete_node, p, nodeId)

    # -- reader study ------------------------------------------------------------------------------------
    def openReadingSession(self, studyPath, readerId):
        from LLNAssistLib.readerstudy import Study
        from LLNAssistLib.readerstudy.session import ReadingSession

        if not studyPath or not readerId:
            raise ValueError("Choose the study file and enter your reader id.")
        if self._study is not None:
            self._study.close()
        self._study = Study.open(studyPath)
        return ReadingSession(self._study, readerId.strip())

    def loadStudyCase(self, view):
        """Clears the scene and loads the case with only what the session shows (blinding)."""
        from LLNAssistLib import mrml_bridge

        slicer.mrmlScene.Clear(0)
        self._pointNode = None
        volume = slicer.util.loadVolume(view["image"])
        if view["modality"] == "aided" and view.get("ai", {}).get("segmentation"):
            mrml_bridge.load_results(slicer.mrmlScene, os.path.dirname(view["ai"]["segmentation"]), volume)
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        return volume

    def preloadNext(self, nextCase):
        """Reads the next case's image into the OS file cache so it opens at once."""
        if nextCase and nextCase.get("image") and os.path.isfile(nextCase["image"]):
            with open(nextCase["image"], "rb") as f:
                while f.read(1 << 22):
                    pass

    def readerPointNode(self):
        if self._pointNode is None or self._pointNode.GetScene() is None:
            self._pointNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Reader points")
        return self._pointNode


#
# Test
#
class LLNAssistTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: loads the bundled synthetic sample, analyses it with Logic
    (waitForCompletion=True) and checks the node table and the segmentation."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LLNAssist_sample()

    def test_LLNAssist_sample(self):
        import json

        from LLNAssistLib import conventions, mrml_bridge

        self.delayDisplay("Loading the bundled synthetic sample")
        volume = slicer.util.loadVolume(SAMPLE_IMAGE)
        logic = LLNAssistLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        self.delayDisplay("Analysing (separate process)")
        results = logic.process(volume, device="cpu", waitForCompletion=True)
        rows = mrml_bridge.table_rows(results.table)
        truth = json.load(open(os.path.join(os.path.dirname(SAMPLE_IMAGE), "truth.json")))
        self.assertEqual(len(rows), len(truth["nodes"]))
        self.assertEqual(results.patient_status, truth["patient_status"])
        self.assertEqual(len(results.lines), 2 * len(rows))
        for row in rows:
            self.assertGreater(float(row["short_axis_mm"]), 0.0)
            self.assertIn(row["dl_status"], ("positive", "negative"))
        names = [results.segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(results.segmentation.GetSegmentation().GetNumberOfSegments())]
        self.assertIn(conventions.region_segment_name("OB", "left"), names)
        self.delayDisplay("Test passed")

