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


def _library_root(here):
    """The folder holding LLNAssistLib: beside this file in the installed extension
    (qt-scripted-modules/), one folder up in a source checkout added with "Add module path"."""
    for folder in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(folder, "LLNAssistLib", "__init__.py")):
            return folder
    return here


_LIB_ROOT = _library_root(_HERE)
if _LIB_ROOT not in sys.path:
    sys.path.insert(0, _LIB_ROOT)

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

# The self-test's analysis needs PyTorch and MONAI; on a build machine it must not install them.
RUN_ANALYSIS_TEST_ENV = "LLNASSIST_TEST_ANALYSIS"


def _path_or_none(path):
    """A parameter-node path, or None when the user has not chosen one (an empty path reads '.')."""
    text = str(path) if path is not None else ""
    return None if text in ("", ".") else text


def _study_location_or_none(text):
    """The study as typed: a file path or a postgresql:// URL, kept as text (a Path would turn
    'postgresql://host/db' into 'postgresql:/host/db')."""
    text = (text or "").strip()
    return text or None


def connectGui(wrapper, gui):
    """wrapper.connectGui(gui) and the tag that disconnects it. Slicer 5.8's connectGui returns
    None (5.10 returns the tag), and disconnectGui(None) disconnects nothing, so each re-entry would
    add another set of bindings: take the tag the wrapper registered instead."""
    before = set(getattr(wrapper, "_parameterGUIs", {}) or {})
    tag = wrapper.connectGui(gui)
    if tag is None:
        added = set(getattr(wrapper, "_parameterGUIs", {}) or {}) - before
        tag = added.pop() if len(added) == 1 else None
    return tag


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
            "internal iliac, obturator and external iliac compartments and of positive/negative nodes, short and "
            "long axes, the radiomics score of Yoo et al. (Sci Rep 2025), correction and click-to-segment, and "
            "reader studies with 1-5 scoring. " + conventions.SYNTHETIC_MODEL_NOTICE)
        parent.acknowledgementText = (
            "Implements the methods of " + conventions.CITE_SEGMENTATION + " (nnU-Net lateral lymph node "
            "segmentation, short axis, size criteria) and " + conventions.CITE_RADIOMICS + " (radiomics score, "
            "reader study). Not for clinical use.")
        # Our lymph-node codes in Slicer's terminology selector and DICOM SEG export.
        slicer.app.connect("startupCompleted()", registerTerminology)


def registerTerminology():
    from LLNAssistLib import resources

    path = str(resources.terminology_file())
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
    studyLocation: str = ""  # a file path or a postgresql:// URL: plain text, not a Path
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
        self._placeNodes = {}
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
        from LLNAssistLib.model import registry

        for m in registry.installed():  # site models installed with `llnassist models add`
            if m["where"] == "installed":
                trained = "synthetic training data" if m["synthetic"] else (m["training_data"] or "unknown data")
                self.ui.modelComboBox.addItem(f"{m['id']} ({m['kind']}, {trained})", m["id"])
        self.ui.modelComboBox.addItem("Model folder...", "folder")
        self.ui.syntheticNoticeLabel.text = conventions.SYNTHETIC_MODEL_NOTICE
        self.ui.progressBar.setVisible(False)
        if self.logic.environmentText:
            self.ui.environmentLabel.text = self.logic.environmentText

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", lambda _checked: self.onApplyButton())
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.updateGUIFromParameterNode)
        self.ui.nodeTableView.connect("clicked(QModelIndex)", self.onTableClicked)
        self.ui.clickToSegmentButton.connect("toggled(bool)", self.onClickToSegment)
        self.ui.segmentEditorButton.connect("clicked(bool)", self.onSegmentEditor)
        self.ui.recomputeButton.connect("clicked(bool)", self.onRecompute)
        self.ui.markPositiveButton.connect("clicked(bool)", lambda: self.onSetStatus("positive"))
        self.ui.markNegativeButton.connect("clicked(bool)", lambda: self.onSetStatus("negative"))
        self.ui.deleteNodeButton.connect("clicked(bool)", self.onDeleteNode)
        self.ui.saveSceneButton.connect("clicked(bool)", self.onSaveScene)
        self.ui.saveReviewedButton.connect("clicked(bool)", self.onSaveReviewed)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicom)
        for name in ("showRegionsCheckBox", "showNegativeCheckBox", "showPositiveCheckBox", "show3DCheckBox",
                     "outlineCheckBox"):
            getattr(self.ui, name).connect("toggled(bool)", self.onDisplayChanged)
        self.ui.opacitySliderWidget.connect("valueChanged(double)", self.onDisplayChanged)

        # Reader study
        self.ui.startReadingButton.connect("clicked(bool)", self.onStartReading)
        self.ui.studyBrowseButton.connect("clicked(bool)", self.onBrowseStudy)
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
            self.logic.stopPlacement()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
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
        same = (self._parameterNode is not None and inputParameterNode is not None
                and self._parameterNode.parameterNode is inputParameterNode.parameterNode)
        if same and self._parameterNodeGuiTag is not None:
            return  # already bound to this node: binding again would double every connection
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = connectGui(self._parameterNode, self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        p = self._parameterNode
        if p is None:
            return
        busy = self.logic.running
        self.ui.applyButton.text = ("Cancelling..." if self.logic.cancelling else "Cancel") if busy else "Analyze"
        self.ui.applyButton.enabled = (busy and not self.logic.cancelling) or (not busy and bool(p.inputVolume))
        self.ui.modelPathLineEdit.setVisible(self.ui.modelComboBox.currentData == "folder")
        has = bool(p.resultSegmentation)
        for name in ("clickToSegmentButton", "segmentEditorButton", "recomputeButton", "markPositiveButton",
                     "markNegativeButton", "deleteNodeButton", "saveSceneButton", "saveReviewedButton",
                     "exportDicomButton", "nodeComboBox"):
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
    def onApplyButton(self, force=False):
        if self.logic.running:
            self.logic.cancel()  # returns at once; onCompleted follows when the process tree is gone
            self.ui.statusLabel.text = "Cancelling..."
            self.updateGUIFromParameterNode()
            return
        with slicer.util.tryWithErrorDisplay("LLNAssist could not start the analysis.", waitCursor=True):
            if not self.logic.ensureDependencies(askConfirmation=True):
                return
            self.ui.environmentLabel.text = self.logic.environmentText
            p = self._parameterNode
            choice = self.ui.modelComboBox.currentData
            model = _path_or_none(p.modelFolder) if choice == "folder" else (choice or None)
            if self.ui.modelComboBox.currentData == "folder" and model is None:
                raise ValueError("Choose the model folder (with model.pt and manifest.json).")
            self.ui.logTextEdit.clear()
            self.ui.progressBar.setVisible(True)
            self.ui.progressBar.value = 0
            self.logic.process(p.inputVolume, model=model, device=p.device, postTreatment=p.postTreatment,
                               waitForCompletion=False, progressCallback=self.onProgress,
                               completedCallback=self.onCompleted, force=force)
            self.updateGUIFromParameterNode()

    def onProgress(self, progress, lines):
        for line in lines:
            self.ui.logTextEdit.appendPlainText(line)
        if progress is not None:
            self.ui.progressBar.value = int(round(100 * progress.fraction))
            self.ui.statusLabel.text = progress.label + (f": {progress.detail}" if progress.detail else "")

    def onCompleted(self, results, error):
        self.ui.progressBar.setVisible(False)
        from LLNAssistLib import mrml_bridge, runner

        if error and runner.refused_by_domain_gate(error):
            self.ui.statusLabel.text = "Refused: outside what the model can read"
            if slicer.util.confirmYesNoDisplay(
                    error[len("error: "):] + "\n\nAnalyse anyway? Every result will be marked as outside the "
                    "model's validated domain.", windowTitle="LLNAssist"):
                self.onApplyButton(force=True)
                return
        elif error:
            self.ui.statusLabel.text = "Failed"
            slicer.util.errorDisplay(error, windowTitle="LLNAssist")
        elif results is None:
            self.ui.statusLabel.text = "Cancelled"
        else:
            self.ui.statusLabel.text = f"Done: patient {results.patient_status}"
            notice = results.segmentation.GetAttribute(mrml_bridge.ATTR_OUT_OF_DOMAIN)
            if notice:
                self.ui.statusLabel.text += " (OUTSIDE THE VALIDATED DOMAIN)"
                slicer.util.warningDisplay(notice, windowTitle="LLNAssist")
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

    def _placePoint(self, active, nodeName, callback, otherButton, clear):
        """Place one point while the button is down; releasing the button ends place mode."""
        from LLNAssistLib import mrml_bridge

        node = self._placeNodes.get(nodeName)
        if not active:
            if node is not None:
                self.removeObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, callback)
            self.logic.stopPlacement()
            return
        otherButton.checked = False  # one place mode at a time
        # a node kept from before a scene clear is gone from the scene: make a new one
        node = self._placeNodes[nodeName] = mrml_bridge.placement_node(slicer.mrmlScene, node, nodeName)
        if clear:
            node.RemoveAllControlPoints()
        self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, callback)
        mrml_bridge.start_placement(slicer.mrmlScene, node)

    def _placedPoint(self, caller, callback, button):
        ras = [0.0, 0.0, 0.0]
        caller.GetNthControlPointPositionWorld(caller.GetNumberOfControlPoints() - 1, ras)
        self.removeObserver(caller, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, callback)
        button.checked = False  # also ends place mode (toggled)
        return ras

    def onClickToSegment(self, active):
        self._placePoint(active, "LLNAssist click", self.onPointPlaced, self.ui.placePointButton, clear=True)

    def onPointPlaced(self, caller, event):
        ras = self._placedPoint(caller, self.onPointPlaced, self.ui.clickToSegmentButton)
        caller.RemoveAllControlPoints()
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
        from LLNAssistLib import mrml_bridge

        segmentation = segmentationNode.GetSegmentation()
        # the source labelmap only: 3D surfaces made for display are not edits
        for event in mrml_bridge.edit_events():
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

    def _askReaderId(self, title, label):
        """The reader id typed into a dialog (the parameter node's as default), or None when cancelled or blank."""
        reader = qt.QInputDialog.getText(None, title, label, qt.QLineEdit.Normal, self._parameterNode.readerId)
        return reader.strip() if reader and reader.strip() else None

    def onSaveReviewed(self):
        p = self._parameterNode
        reader = self._askReaderId("Save as reviewed", "Reviewed by (your reader id):")
        if not reader:
            return
        folder = qt.QFileDialog.getExistingDirectory(None, "Folder for the reviewed case")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Could not save the reviewed case.", waitCursor=True):
            saved = self.logic.saveReviewedCase(p, folder, reader)
            slicer.util.infoDisplay(f"Saved as reviewed by {saved['reviewed_by']}:\n{saved['mrb']}\n{saved['labels']}\n"
                                    "List it in the CASES.csv of `llnassist dataset export`.")

    def onExportDicom(self):
        p = self._parameterNode
        reader = self._askReaderId("Export to DICOM", "Corrected and confirmed by (your reader id):")
        if not reader:
            return
        with slicer.util.tryWithErrorDisplay("Could not export the result to DICOM.", waitCursor=True):
            info = self.logic.exportDicom(p, reader)
            slicer.util.infoDisplay(f"SEG ({info['seg']['segments']} segments) and structured report added to the "
                                    "DICOM database. Send them to PACS from the DICOM module.")

    # -- reader study ------------------------------------------------------------------------------------
    def onBrowseStudy(self):
        path = qt.QFileDialog.getOpenFileName(None, "Reader study", "", "Reader study (*.sqlite *.db);;All files (*)")
        if path:
            self._parameterNode.studyLocation = path

    def onStartReading(self):
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not open the reader study.", waitCursor=True):
            self._session = self.logic.openReadingSession(_study_location_or_none(p.studyLocation), p.readerId)
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
        self._placePoint(active, "Reader points", self.onReaderPoint, self.ui.clickToSegmentButton, clear=False)

    def onReaderPoint(self, caller, event):
        self._point = self._placedPoint(caller, self.onReaderPoint, self.ui.placePointButton)

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
        self._workDir = None
        self._volume = None
        self.recomputing = False
        self._study = None
        self.environmentText = ""  # what is installed and whether a GPU is usable, once checked

    def getParameterNode(self):
        return LLNAssistParameterNode(super().getParameterNode())

    @property
    def running(self):
        return self._process is not None and self._process.running

    @property
    def cancelling(self):
        return self.running and self._process.cancelled

    # -- set-up ------------------------------------------------------------------------------------
    def ensureDependencies(self, askConfirmation=True, forEdit=False):
        """First use: installs what is missing, in ranges this Slicer's Python can use (see
        LLNAssistLib/slicer_deps.py): torch through the PyTorch extension (CUDA or CPU build for
        this machine) unless a usable one is installed, which is then kept and pinned; the rest
        with pip. Then checks what got installed and records it in environmentText. Edits need
        only scikit-image (forEdit=True), never torch."""
        from LLNAssistLib import runner, slicer_deps

        plan = slicer_deps.plan(for_edit=forEdit)
        if plan.problem:
            raise RuntimeError(plan.problem)
        if plan.needed:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                    f"LLNAssist needs these Python packages: {plan.summary()}. Install them now? This takes a few "
                    "minutes and needs an internet connection once.", windowTitle="LLNAssist"):
                return False
            if plan.install_torch:
                try:
                    import PyTorchUtils
                except ImportError:
                    raise RuntimeError("Install the PyTorch extension from the Extensions Manager, restart Slicer "
                                       "and try again.") from None
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=plan.torch_requirement)
                if torch is None:
                    raise RuntimeError("PyTorch could not be installed; see the PyTorch Util module.")
                plan = slicer_deps.plan(for_edit=forEdit)  # pin the torch that is now installed
            if plan.pip:
                slicer.util.pip_install(plan.pip)
            problems = slicer_deps.verify() if not forEdit else []
            if problems:
                raise RuntimeError("; ".join(problems))
        if not forEdit and not self.environmentText:
            info = slicer_deps.probe(runner.python_executable())
            self.environmentText = slicer_deps.describe(info) + (f" {plan.warning}." if plan.warning else "")
        return True

    # -- analysis ------------------------------------------------------------------------------------
    def process(self, inputVolume, outputFolder=None, model=None, device="auto", postTreatment=False,
                waitForCompletion=False, progressCallback=None, completedCallback=None, force=False):
        """Runs `llnassist analyze` on the volume in a separate process and loads the results into
        the scene. With waitForCompletion the call blocks and returns the SceneResults."""
        from LLNAssistLib import mrml_bridge, runner

        if inputVolume is None:
            raise ValueError("Select an input volume.")
        if self.running:
            raise RuntimeError("An analysis is already running; wait for it or cancel it.")
        runner.remove_stale_work_dirs()  # folders left by a Slicer that was closed mid-analysis
        work = self._workDir = runner.new_work_dir()
        image = os.path.join(work, "input.nrrd")
        # exported, not saved: saveNode would repoint the user's volume at this temporary file
        mrml_bridge.export_volume(inputVolume, image)
        self._outDir = outputFolder or os.path.join(work, "results")
        self._volume = inputVolume
        # PyRadiomics does not build on Slicer's Python 3.12: the native engine gives the same score.
        engine = "auto"
        cmd = runner.analyze_command(image, self._outDir, model=model, device=device, post_treatment=postTreatment,
                                     radiomics_engine=engine, force=force)
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
        self._removeWorkDir()
        if completedCallback:
            completedCallback(results, error)
        elif error:
            raise RuntimeError(error)
        return results

    def _removeWorkDir(self):
        import shutil

        if self._workDir:  # the results are in the scene now (or there are none)
            shutil.rmtree(self._workDir, ignore_errors=True)
            self._workDir = None

    def cancel(self):
        """Returns at once; the polling timer keeps running until the process tree has ended,
        then _finish removes the temporary folder."""
        if self.running:
            self._process.cancel()

    def stopPlacement(self):
        from LLNAssistLib import mrml_bridge

        mrml_bridge.stop_placement(slicer.mrmlScene)

    # -- correction ------------------------------------------------------------------------------------
    def _edit(self, fn, p, *args):
        # edits run here, in Slicer's process: they need scikit-image, never torch
        if not self.ensureDependencies(askConfirmation=True, forEdit=True):
            raise RuntimeError("The edit needs scikit-image; it was not installed.")
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

    def saveReviewedCase(self, p, folder, reader):
        """Marks the corrected case reviewed by `reader` and writes case.mrb + labels.nii.gz."""
        from LLNAssistLib import mrml_bridge

        if not p.inputVolume or not p.resultSegmentation:
            raise ValueError("Analyse the case (and correct it) before saving it as reviewed.")
        return mrml_bridge.save_reviewed_case(slicer.mrmlScene, p.inputVolume, p.resultSegmentation, folder, reader)

    def exportDicom(self, p, reader):
        """The corrected result as SEG + SR (reader as observer) into Slicer's DICOM database. They
        reference the series the volume was loaded from, so it must come from the database."""
        import shutil
        import tempfile

        from DICOMLib import DICOMUtils

        from LLNAssistLib import mrml_bridge

        if not p.inputVolume or not p.resultSegmentation:
            raise ValueError("Analyse the case (and correct it) before exporting it.")
        uids = (p.inputVolume.GetAttribute("DICOM.instanceUIDs") or "").split()
        files = [slicer.dicomDatabase.fileForInstance(u) for u in uids] if slicer.dicomDatabase else []
        if not uids or not all(files):
            raise ValueError("The SEG and SR reference the images they were made on: load the series from Slicer's "
                             "DICOM database (DICOM module), analyse it, then export.")
        folder = tempfile.mkdtemp(prefix="llnassist-dicom-")
        try:
            info = mrml_bridge.export_dicom(slicer.mrmlScene, p.inputVolume, p.resultSegmentation, files, folder,
                                            reader, post_treatment=p.postTreatment)
            DICOMUtils.importDicom(folder, copyFiles=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return info

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

        # only the previous case's data: scene.Clear(0) would also reset this module's parameter
        # node (study, reader id, display settings)
        mrml_bridge.clear_case(slicer.mrmlScene)
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



#
# Test
#
class LLNAssistTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test, or the ctest registered by CMakeLists.txt).

    Always: the installed extension is complete (library importable from the module, bundled
    model with a matching sha256, terminology, sample). The analysis of the bundled synthetic
    sample through Logic (separate process, checked against its truth.json) needs PyTorch and
    MONAI: it runs when LLNASSIST_TEST_ANALYSIS=1, or from Reload and Test with the packages
    already installed; a build machine without them never installs anything."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LLNAssist_installation()
        if self._analysisWanted():
            self.setUp()
            self.test_LLNAssist_sample()
        else:
            self.delayDisplay(f"Analysis test skipped (set {RUN_ANALYSIS_TEST_ENV}=1 to run it)")

    @staticmethod
    def _analysisWanted():
        flag = os.environ.get(RUN_ANALYSIS_TEST_ENV)
        if flag is not None:
            return flag == "1"
        from LLNAssistLib import slicer_deps

        interactive = not slicer.app.commandOptions().noMainWindow
        return interactive and not slicer_deps.plan().needed

    def test_LLNAssist_installation(self):
        from LLNAssistLib import resources
        from LLNAssistLib.model import manifest

        self.delayDisplay("Checking the installed extension")
        model_dir = manifest.resolve_model_dir(None)
        manifest.verified_weights_path(model_dir, manifest.read_manifest(model_dir))  # sha256
        self.assertTrue(resources.terminology_file().is_file())
        self.assertTrue((resources.sample_dir() / "image.nii.gz").is_file())
        self.assertTrue(os.path.isfile(os.path.join(_HERE, "Resources", "UI", "LLNAssist.ui")))

    def test_LLNAssist_sample(self):
        import json

        from LLNAssistLib import conventions, mrml_bridge, resources

        self.delayDisplay("Loading the bundled synthetic sample")
        sample = resources.sample_dir()
        volume = slicer.util.loadVolume(str(sample / "image.nii.gz"))
        logic = LLNAssistLogic()
        # LLNASSIST_TEST_ANALYSIS=1 is the consent to install; interactively the user is asked
        self.assertTrue(logic.ensureDependencies(askConfirmation=os.environ.get(RUN_ANALYSIS_TEST_ENV) != "1"))
        self.delayDisplay("Analysing (separate process)")
        results = logic.process(volume, device="cpu", waitForCompletion=True)
        # the user's volume still points at its own file (it was exported, not saved)
        self.assertEqual(os.path.normcase(os.path.normpath(volume.GetStorageNode().GetFileName())),
                         os.path.normcase(os.path.normpath(str(sample / "image.nii.gz"))))
        rows = mrml_bridge.table_rows(results.table)
        truth = json.loads((sample / "truth.json").read_text())
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
