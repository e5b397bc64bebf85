"""A browser reading station for reader studies, on trame-slicer (Slicer's own slice views,
rendered on the server): the same `ReadingSession` and MRML bridge as the Slicer module, so sites
without the Slicer desktop can read, and so the reading flow is exercised by a real browser in the
tests. `llnassist study serve STUDY --reader ID`.

The page shows the current case with only what its session allows (unaided: the image; aided:
also the AI segmentation and the AI's patient call and probability), scores 1-5 with buttons or
keys 1-5, the yes/no call, a comment, and Submit, which records the rating durably and loads the
next case. Reloading the page or restarting the server resumes at the same case.
"""

from __future__ import annotations

import os

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
        self._case_nodes: list = []
        self._point_node = None
        self._point = None
        state = self.server.state
        state.update({"progress": "", "case_id": "", "modality": "", "ai_text": "", "ai_nodes": [], "score": None,
                      "call": None,
                      "comment": "", "message": "", "done": False, "reader": reader, "point_text": ""})
        self.server.controller.submit = self.submit
        self.server.controller.place_point = self.place_point
        self._build_ui()
        self.show_current()

    # -- cases ---------------------------------------------------------------------------------------
    def _clear_case(self) -> None:
        scene = self.slicer_app.scene
        for node in self._case_nodes:
            if node.GetScene() is not None:
                scene.RemoveNode(node)
        self._case_nodes = []

    def show_current(self) -> None:
        """Loads the session's current case, blinded to its session (nothing of the AI when unaided)."""
        from . import mrml_bridge

        s, state = self.session, self.server.state
        self._clear_case()
        self._point_node, self._point = None, None
        state.score, state.call, state.comment, state.point_text = None, None, "", ""
        state.progress = s.progress_text() + (f" - {s.waiting}" if s.waiting else "")
        state.done = s.done or bool(s.waiting)
        state.case_id, state.modality, state.ai_text, state.ai_nodes = "", "", "", []
        if state.done:
            return
        view = s.current["view"]
        if not view.get("image") or not os.path.isfile(view["image"]):
            state.message = f"image of case {view['case_id']} not found: {view.get('image')}"
            return
        scene = self.slicer_app.scene
        before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        volume = mrml_bridge.load_volume(scene, view["image"], name=f"case {view['case_id']}")
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
        self._case_nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())
                            if scene.GetNthNode(i).GetID() not in before]
        self.slicer_app.display_manager.show_volume_in_slice_background(volume)
        self.slicer_app.display_manager.reset_views()
        state.case_id, state.modality = view["case_id"], view["modality"]

    def place_point(self) -> None:
        """Next click in the slice view places a point on the node (as in the Slicer module)."""
        import slicer

        if self._point_node is None:
            self._point_node = self.slicer_app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Reader point")
            self._point_node.CreateDefaultDisplayNodes()
            self._point_node.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._on_point)
            self._case_nodes.append(self._point_node)
        self._point_node.RemoveAllControlPoints()
        self.slicer_app.markups_logic.place_node(self._point_node, False)
        self.server.state.point_text = "click on the node in the image"

    def _on_point(self, node, _event) -> None:
        pos = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(node.GetNumberOfControlPoints() - 1, pos)
        self._point = [round(v, 1) for v in pos]
        with self.server.state as state:
            state.point_text = "point R {:.1f}, A {:.1f}, S {:.1f}".format(*self._point)

    def submit(self, score=None, call=None, comment=None) -> None:
        """The page sends its score, call and comment with the click, so a state update still in
        flight cannot make the server see an older answer."""
        state = self.server.state
        try:
            if score not in (1, 2, 3, 4, 5):
                raise InputError("choose a score from 1 to 5")
            if call not in ("yes", "no"):
                raise InputError("answer the call: LLN metastasis yes or no")
            self.session.rate(int(score), call=call == "yes", most_suspicious=True, comment=comment or "",
                              point=self._point)
            self.session.submit()
        except InputError as exc:
            state.message = str(exc)
            return
        state.message = f"case {state.case_id} submitted"
        self.show_current()

    # -- page ------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        from trame.widgets import client, html
        from trame_vuetify.ui.vuetify3 import SinglePageLayout
        from trame_vuetify.widgets import vuetify3 as v

        with SinglePageLayout(self.server) as layout:
            layout.title.set_text("LLNAssist reader study")
            client.Style("html { overflow-y: auto; }")
            # keys 1-5 score, as in the Slicer module
            client.ClientTriggers(mounted="window.addEventListener('keydown', (e) => { if (e.target.tagName !== "
                                          "'INPUT' && '12345'.includes(e.key)) { score = Number(e.key); } })")
            with layout.toolbar:
                v.VSpacer()
                html.Div("Reader {{ reader }} - {{ progress }}", id="progress", classes="mx-4")
            with layout.content:
                with html.Div(classes="d-flex flex-row", style="height: calc(100vh - 70px)"):
                    with html.Div(id="view", style="flex: 1 1 auto; position: relative"):
                        self.layout_manager.initialize_layout_grid(layout)
                    with v.VCard(style="width: 340px", classes="ma-2 pa-2", v_if="!done"):
                        v.VCardTitle("Case {{ case_id }} ({{ modality }})", id="case-title")
                        html.Div("{{ ai_text }}", id="ai-text", v_if="modality === 'aided'")
                        html.Div("Node {{ n.node_id }}: {{ n.side }} {{ n.region }}, {{ n.dl_status }}, short axis "
                                 "{{ n.short_axis_mm }} mm{{ n.radiomics_probability ? ', radiomics p ' + "
                                 "n.radiomics_probability : '' }}",
                                 v_for="n in ai_nodes", key="n.node_id", classes="ai-node text-caption",
                                 v_if="modality === 'aided'")
                        with html.Div(classes="d-flex flex-row align-center mt-2"):
                            v.VBtn("Place point on node", id="place-point", size="small",
                                   click=self.server.controller.place_point)
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
                        v.VBtn("Submit case", id="submit", color="success",
                               click=(self.server.controller.submit, "[score, call, comment]"))
                        html.Div("{{ message }}", id="message", classes="mt-2")
                    with v.VCard(classes="ma-2 pa-2", v_if="done"):
                        html.Div("{{ progress }}", id="done-text")
        self.ui = layout


def serve(study_location: str, reader: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    try:
        import trame_slicer  # noqa: F401
    except ImportError:
        raise InputError("the browser reader needs trame-slicer; install it with `pip install trame-slicer`") from None
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    app = ReaderApp(study_location, reader)
    app.server.start(host=host, port=port, open_browser=False, show_connection_info=True)
