"""One reader's browser reading station, on trame-slicer (Slicer's own slice views, rendered on
the server): the same `ReadingSession` and MRML bridge as the Slicer module. It runs as a worker
process of the reading server (`readingserver.py`), which signs readers in and starts one station
per signed-in reader: the reader is fixed when the process starts, never taken from the page, and
the station listens on 127.0.0.1 with a random wslink key that only the reading server knows.

The page shows the current case with only what its session allows (unaided: the image; aided:
also the AI segmentation and the AI's patient call and probability), scores 1-5 with buttons or
keys 1-5, the yes/no call, a comment, several nodes per read (a point on the image, or an AI node
on aided reads), and Submit, which records the read durably and loads the next case. Reloading the
page or restarting the server resumes at the same case.
"""

from __future__ import annotations

import os
import sys
import threading

from .errors import InputError


class ReaderApp:
    def __init__(self, study_location: str, reader: str, server=None):
        from trame.app import get_server
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        from .readerstudy import Study
        from .readerstudy.session import ReadingSession

        self.server = server or get_server(client_type="vue3")
        self.study = Study.open(study_location)
        self.session = ReadingSession(self.study, reader)
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout("Axial Only")
        self._point_node = None
        self._point = None
        self._lock = threading.Lock()
        # What the server decides on. The page may write any state variable (trame syncs them both
        # ways), so these are kept here, never read back from the state.
        self._read_seq = 0
        self._image_ready = False
        self._ai_ids: list = []
        state = self.server.state
        state.update({"progress": "", "case_id": "", "modality": "", "ai_text": "", "ai_nodes": [], "score": None,
                      "call": None, "comment": "", "message": "", "done": False, "reader": reader,
                      "point_text": "", "read_seq": 0, "image_ready": False, "saved_nodes": [], "ai_choice": None,
                      "ai_node_ids": []})
        # Stable trigger names: the page (and the load benchmark's websocket clients) call them by name.
        self.server.trigger("llnassist_submit")(self.submit)
        self.server.trigger("llnassist_add_node")(self.add_node)
        self.server.trigger("llnassist_place_point")(self.place_point)
        self._build_ui()
        self.show_current()

    # -- cases ---------------------------------------------------------------------------------------
    def _clear_case(self) -> None:
        """Removes the previous case's data and resets every slice view's layers, so nothing of an
        aided case (segmentation, its colour table, a foreground or label layer) reaches the next
        one; colour tables themselves stay in the scene."""
        from . import mrml_bridge

        scene = self.slicer_app.scene
        mrml_bridge.clear_case(scene)
        for comp in mrml_bridge._nodes(scene, "vtkMRMLSliceCompositeNode"):
            comp.SetBackgroundVolumeID(None)
            comp.SetForegroundVolumeID(None)
            comp.SetLabelVolumeID(None)
            comp.SetForegroundOpacity(0.0)
        self._point_node, self._point = None, None

    def show_current(self) -> None:
        """Loads the session's current case, blinded to its session (nothing of the AI when unaided),
        and resets the answers: the page clears its own copy when read_seq changes."""
        from . import mrml_bridge

        s, state = self.session, self.server.state
        self._clear_case()
        self._read_seq += 1
        self._image_ready, self._ai_ids = False, []
        state.read_seq = self._read_seq
        state.score, state.call, state.comment, state.point_text, state.ai_choice = None, None, "", "", None
        state.dirty("score", "call", "comment", "ai_choice")  # pushed even if the server's copy was unchanged
        state.saved_nodes, state.image_ready = [], False
        state.progress = s.progress_text() + (f" - {s.waiting}" if s.waiting else "")
        state.done = s.done or bool(s.waiting)
        state.case_id, state.modality, state.ai_text, state.ai_nodes, state.ai_node_ids = "", "", "", [], []
        if state.done:
            return
        view = s.current["view"]
        state.case_id, state.modality = view["case_id"], view["modality"]
        state.saved_nodes = self._saved_nodes()
        if not view.get("image") or not os.path.isfile(view["image"]):
            state.message = (f"the image of case {view['case_id']} is missing; tell the study coordinator (nothing "
                             "can be submitted for this case)")
            return
        scene = self.slicer_app.scene
        try:
            volume = mrml_bridge.load_volume(scene, view["image"], name=f"case {view['case_id']}")
        except InputError as exc:
            state.message = f"the image of case {view['case_id']} cannot be shown ({exc}); tell the study coordinator"
            return
        display = volume.GetDisplayNode()
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
        display.AutoWindowLevelOn()
        ai = view.get("ai") or {}
        if view["modality"] == "aided":
            if ai.get("segmentation") and os.path.isfile(ai["segmentation"]):
                mrml_bridge.load_results(scene, os.path.dirname(ai["segmentation"]), volume)
            prob = ai.get("probability")
            state.ai_text = (f"AI: patient {ai.get('status', '?')}"
                             + (f", radiomics probability {prob:.2f}" if prob is not None else ""))
            state.ai_nodes = [{k: str(n.get(k, "")) for k in ("node_id", "side", "region", "dl_status",
                                                               "short_axis_mm", "radiomics_probability")}
                              for n in ai.get("nodes", [])]
            self._ai_ids = [n["node_id"] for n in state.ai_nodes]
            state.ai_node_ids = list(self._ai_ids)
        self.slicer_app.display_manager.show_volume_in_slice_background(volume)
        self.slicer_app.display_manager.reset_views()
        self._image_ready = state.image_ready = True
        state.message = ""

    def _saved_nodes(self) -> list:
        c = self.session.current
        if not c or "read_id" not in c:
            return []
        return [{"key": r["node_key"], "text": (f"AI node {r['node']}" if r["node"] else
                                                "point R {:.1f}, A {:.1f}, S {:.1f}".format(*r["point"])
                                                if r["point"] else "patient") + f": score {r['rating']}"}
                for r in self.session.ratings()]

    def place_point(self) -> None:
        """Next click in the slice view places a point on the node (as in the Slicer module)."""
        import slicer

        if not self._image_ready:
            return
        if self._point_node is None:
            self._point_node = self.slicer_app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Reader point")
            self._point_node.CreateDefaultDisplayNodes()
            self._point_node.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._on_point)
        self._point_node.RemoveAllControlPoints()
        self.slicer_app.markups_logic.place_node(self._point_node, False)
        self.server.state.point_text = "click on the node in the image"

    def _on_point(self, node, _event) -> None:
        pos = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(node.GetNumberOfControlPoints() - 1, pos)
        self._point = [round(v, 1) for v in pos]
        with self.server.state as state:
            state.point_text = "point R {:.1f}, A {:.1f}, S {:.1f}".format(*self._point)

    def _check(self, score, read_seq, ai_choice) -> str:
        """What the server requires before anything is recorded, whatever the page sent."""
        if read_seq != self._read_seq:
            raise InputError("this answer was for an earlier case; answer the case shown")
        if self.session.done or self.session.waiting or not self._image_ready:
            raise InputError("no case image is shown; nothing can be recorded")
        if isinstance(score, bool) or score not in (1, 2, 3, 4, 5):
            raise InputError("choose a score from 1 to 5")
        if ai_choice and str(ai_choice) not in self._ai_ids:  # empty on unaided reads
            raise InputError("that AI node is not part of this case")
        return str(ai_choice) if ai_choice else None

    def add_node(self, score=None, comment=None, read_seq=None, ai_choice=None) -> None:
        """Records one more node of this read (a placed point or an AI node) with its score; the node
        rated with Submit is the most suspicious one and carries the call."""
        state = self.server.state
        with self._lock:
            try:
                node = self._check(score, read_seq, ai_choice)
                if node is None and self._point is None:
                    raise InputError("place a point on the node (or choose an AI node) before adding it")
                self.session.rate(int(score), node=node, point=None if node else self._point,
                                  comment=comment or "")
            except InputError as exc:
                state.message = str(exc)
                return
            state.saved_nodes = self._saved_nodes()
            state.message = f"node saved ({len(state.saved_nodes)} in this case); rate the next one or submit"
            self._point = None
            if self._point_node is not None:
                self._point_node.RemoveAllControlPoints()
            state.score, state.point_text, state.ai_choice = None, "", None
            state.dirty("score", "ai_choice")

    def submit(self, score=None, call=None, comment=None, read_seq=None, ai_choice=None) -> None:
        """The page sends its answers with the click (a state update still in flight cannot make the
        server see an older answer) and the case they are for (read_seq)."""
        state = self.server.state
        with self._lock:
            try:
                node = self._check(score, read_seq, ai_choice)
                if call not in ("yes", "no"):
                    raise InputError("answer the call: LLN metastasis yes or no")
                self.session.rate(int(score), call=call == "yes", most_suspicious=True, comment=comment or "",
                                  node=node, point=None if node else self._point)
                self.session.submit()
            except InputError as exc:
                state.message = str(exc)
                return
            done_case = state.case_id
            self.show_current()
            state.message = f"case {done_case} submitted"

    # -- page ------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        from trame.widgets import client, html
        from trame_vuetify.ui.vuetify3 import SinglePageLayout
        from trame_vuetify.widgets import vuetify3 as v

        answers = "[score, call, comment, read_seq, ai_choice]"
        with SinglePageLayout(self.server) as layout:
            layout.title.set_text("LLNAssist reader study")
            client.Style("html { overflow-y: auto; }")
            # keys 1-5 score, as in the Slicer module
            client.ClientTriggers(mounted="window.addEventListener('keydown', (e) => { if (e.target.tagName !== "
                                          "'INPUT' && '12345'.includes(e.key)) { score = Number(e.key); } })")
            # A new case clears the page's own answers, whatever the server's copy holds.
            client.ClientStateChange(value="read_seq", change="score = null; call = null; comment = ''; "
                                                              "ai_choice = null")
            with layout.toolbar:
                v.VSpacer()
                html.Div("Reader {{ reader }} - {{ progress }}", id="progress", classes="mx-4")
                html.A("Sign out", href="/signout", id="sign-out", classes="mx-2 text-caption")
            with layout.content:
                with html.Div(classes="d-flex flex-row", style="height: calc(100vh - 70px)"):
                    with html.Div(id="view", style="flex: 1 1 auto; position: relative"):
                        self.layout_manager.initialize_layout_grid(layout)
                    with v.VCard(style="width: 360px", classes="ma-2 pa-2", v_if="!done"):
                        v.VCardTitle("Case {{ case_id }} ({{ modality }})", id="case-title")
                        html.Div("{{ ai_text }}", id="ai-text", v_if="modality === 'aided'")
                        html.Div("Node {{ n.node_id }}: {{ n.side }} {{ n.region }}, {{ n.dl_status }}, short axis "
                                 "{{ n.short_axis_mm }} mm{{ n.radiomics_probability ? ', radiomics p ' + "
                                 "n.radiomics_probability : '' }}",
                                 v_for="n in ai_nodes", key="n.node_id", classes="ai-node text-caption",
                                 v_if="modality === 'aided'")
                        v.VSelect(v_model=("ai_choice",), items=("ai_node_ids",), label="AI node (optional)",
                                  id="ai-choice", clearable=True, density="compact", classes="mt-2",
                                  v_if="modality === 'aided' && ai_node_ids.length")
                        with html.Div(classes="d-flex flex-row align-center mt-2"):
                            v.VBtn("Place point on node", id="place-point", size="small", disabled=("!image_ready",),
                                   click="trigger('llnassist_place_point')")
                            html.Div("{{ point_text }}", id="point-text", classes="mx-2 text-caption")
                        html.Div("Score (keys 1-5)", classes="mt-2")
                        with html.Div(classes="d-flex flex-row"):
                            for k in range(1, 6):
                                v.VBtn(str(k), id=f"score-{k}", click=f"score = {k}", classes="mx-1", size="small",
                                       min_width=40, color=(f"score === {k} ? 'primary' : undefined",))
                        html.Div("LLN metastasis", classes="mt-2")
                        with html.Div(classes="d-flex flex-row"):
                            v.VBtn("Yes", id="call-yes", click="call = 'yes'", classes="mx-1",
                                   color=("call === 'yes' ? 'primary' : undefined",))
                            v.VBtn("No", id="call-no", click="call = 'no'", classes="mx-1",
                                   color=("call === 'no' ? 'primary' : undefined",))
                        v.VTextField(v_model=("comment",), label="Comment", id="comment", classes="mt-2")
                        html.Div("Nodes saved in this case:", classes="text-caption", v_if="saved_nodes.length")
                        html.Div("{{ n.text }}", v_for="n in saved_nodes", key="n.key",
                                 classes="saved-node text-caption")
                        with html.Div(classes="d-flex flex-row mt-2"):
                            v.VBtn("Add node", id="add-node", size="small", classes="mr-2",
                                   disabled=("!image_ready || !score",),
                                   click="trigger('llnassist_add_node', [score, comment, read_seq, ai_choice])")
                            v.VBtn("Submit case", id="submit", color="success",
                                   disabled=("!image_ready || !score || !call",),
                                   click=f"trigger('llnassist_submit', {answers})")
                        html.Div("Submit rates the most suspicious node with the call; Add node saves another node "
                                 "first.", classes="text-caption mt-1")
                        html.Div("{{ message }}", id="message", classes="mt-2")
                    with v.VCard(classes="ma-2 pa-2", v_if="done"):
                        html.Div("{{ progress }}", id="done-text")
        self.ui = layout


def _exit_with_parent() -> None:
    """The reading server holds our stdin open; when it goes (even killed), so do we."""
    def watch():
        try:
            sys.stdin.buffer.read()
        finally:
            os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def run_worker(study_location: str, reader: str, port: int, auth_key_file: str) -> None:
    """A reader's station: 127.0.0.1 only, wslink key from a file the reading server wrote (trame's
    own default key is never accepted)."""
    try:
        import trame_slicer  # noqa: F401
    except ImportError:
        raise InputError("the browser reader needs trame-slicer; install it with `pip install trame-slicer`") from None
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    with open(auth_key_file, encoding="utf-8") as f:
        if len(f.read().strip()) < 32:
            raise InputError("the station's key file is too short; the reading server starts stations itself")
    _exit_with_parent()
    sys.argv = [sys.argv[0], "--authKeyFile", auth_key_file]  # trame reads its options from the command line
    app = ReaderApp(study_location, reader)
    app.server.start(host="127.0.0.1", port=port, open_browser=False, show_connection_info=False)
