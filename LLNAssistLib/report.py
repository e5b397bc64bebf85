"""HTML report that reads like the lateral lymph node part of a structured rectal MRI report:
a header (pseudonymous patient reference, study date, series), the findings per side in the words
of a report, the node table, and a key image per node. One self-contained file.

Key images are PNGs of the key slice with the node outline (from Slicer's slice view, or
matplotlib where that cannot run) and the pixel positions of each axis' end points; the axis
lines and their length labels are drawn over the image as SVG, with each label placed where it
fits inside the image and clear of the other label.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import conventions as C

LONG_COLOUR, SHORT_COLOUR = "#00e5ff", "#ff3df5"  # cyan, magenta
KEY_PX = 300
_FONT_PX = 13
_CHAR_PX = 7.2  # average advance of the label font at _FONT_PX (digits, space, "mm")

_CSS = """
body{font-family:system-ui,Arial,sans-serif;max-width:1100px;margin:1.5em auto;color:#222}
h1{font-size:1.4em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #bbb;padding:3px 7px;text-align:left}
.notice{background:#fff3cd;border:1px solid #e0c36a;padding:.6em}.pos{color:#a00;font-weight:600}
.domain{background:#f8d7da;border:2px solid #a00;padding:.6em;font-weight:600}
.header td,.header th{border:none;padding:1px 10px 1px 0}.findings p{margin:.35em 0}
.summary{font-size:1.1em;background:#eef;padding:.6em}.node{display:flex;gap:1.2em;margin:1em 0}
svg.key{border:1px solid #999;background:#000;flex:none}.small{color:#666;font-size:.85em}
svg.key text{font:600 13px system-ui,Arial,sans-serif;paint-order:stroke;stroke:#000;stroke-width:3px}
"""


@dataclass
class KeyImage:
    png: str  # base64
    width: int
    height: int
    long_px: Optional[list] = None  # [[x, y], [x, y]] from the top-left corner
    short_px: Optional[list] = None


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _window(sl: np.ndarray, body: Optional[np.ndarray] = None):
    vals = sl[body] if body is not None and body.any() else sl.ravel()
    lo, hi = np.percentile(vals, [1, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def key_image(image: np.ndarray, labels: np.ndarray, node, spacing: tuple, half_width_mm: float = 25.0) -> KeyImage:
    """matplotlib key image: the key slice, 2 x half_width_mm square around the node, its outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = node.axes.key_slice
    sl = image[k].astype(np.float32)
    ci = float(np.mean(node.axes.long_ends_ijk[:, 0]))
    cj = float(np.mean(node.axes.long_ends_ijk[:, 1]))
    hi_, hj = half_width_mm / spacing[0], half_width_mm / spacing[1]
    x0, x1, y0, y1 = ci - hi_, ci + hi_, cj - hj, cj + hj
    crop = sl[int(max(0, y0)):int(min(sl.shape[0], y1)), int(max(0, x0)):int(min(sl.shape[1], x1))]
    lo, hi = _window(crop if crop.size else sl)
    fig = plt.figure(figsize=(KEY_PX / 100, KEY_PX / 100), dpi=100, facecolor="black")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_facecolor("black")
    ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, interpolation="bilinear", aspect="auto",
              extent=(-0.5, sl.shape[1] - 0.5, sl.shape[0] - 0.5, -0.5))
    mask = np.zeros(sl.shape, bool)
    kk, jj, ii = node.voxels
    sel = kk == k
    mask[jj[sel], ii[sel]] = True
    colour = np.array(C.LABEL_COLORS[C.LABEL_FROM_STATUS[node.dl_status]]) / 255
    ax.contour(np.arange(sl.shape[1]), np.arange(sl.shape[0]), mask.astype(float), levels=[0.5],
               colors=[colour], linewidths=1.4)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_axis_off()

    def px(ends):
        return [[(e[0] - x0) / (x1 - x0) * KEY_PX, (e[1] - y0) / (y1 - y0) * KEY_PX] for e in ends]

    return KeyImage(_png(fig), KEY_PX, KEY_PX, px(node.axes.long_ends_ijk), px(node.axes.short_ends_ijk))


def overview_image(image: np.ndarray, labels: np.ndarray, k: int, spacing: tuple) -> KeyImage:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    sl = image[k].astype(np.float32)
    lo, hi = _window(sl)
    w = 2 * KEY_PX
    h = int(round(w * sl.shape[0] * spacing[1] / (sl.shape[1] * spacing[0])))
    fig = plt.figure(figsize=(w / 100, h / 100), dpi=100, facecolor="black")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, aspect="auto")
    cols = [(0, 0, 0, 0)] + [tuple(np.array(C.LABEL_COLORS[v]) / 255) + (0.45,) for v in range(1, 6)]
    ax.imshow(np.ma.masked_equal(labels[k], 0), cmap=ListedColormap(cols), vmin=0, vmax=5,
              interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    return KeyImage(_png(fig), w, h)


# --- labels that stay inside the image -------------------------------------------------------------------
def _box(x: float, y: float, text: str, anchor: str) -> tuple:
    w = _CHAR_PX * len(text)
    left = {"start": x, "middle": x - w / 2, "end": x - w}[anchor]
    return (left, y - _FONT_PX * 0.8, left + w, y + _FONT_PX * 0.25)


def _inside(b, width, height, margin=2.0) -> bool:
    return b[0] >= margin and b[1] >= margin and b[2] <= width - margin and b[3] <= height - margin


def _overlap(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def place_labels(lines: list, width: int, height: int) -> list:
    """For each (ends_px, text): (x, y, anchor) of its label, beside an end of the line or its
    middle, inside the image and not over an earlier label; clamped inside as a last resort."""
    placed, boxes = [], []
    for ends, text in lines:
        (xa, ya), (xb, yb) = ends
        dx, dy = xb - xa, yb - ya
        n = max(np.hypot(dx, dy), 1e-6)
        ux, uy = dx / n, dy / n
        px_, py_ = -uy, ux  # perpendicular
        mx, my = (xa + xb) / 2, (ya + yb) / 2
        candidates = []
        for (x, y), s in (((xb, yb), 1), ((xa, ya), -1)):
            ex, ey = x + s * ux * 8, y + s * uy * 8 + _FONT_PX * 0.3
            candidates.append((ex, ey, "start" if s * ux >= 0 else "end"))
        for s in (1, -1):
            candidates.append((mx + s * px_ * 12, my + s * py_ * 12 + _FONT_PX * 0.3,
                               "start" if s * px_ >= 0 else "end"))
        for y in (_FONT_PX + 4, height - 6):
            candidates.append((width / 2, y, "middle"))
        choice = next((c for c in candidates if _inside(_box(c[0], c[1], text, c[2]), width, height)
                       and not any(_overlap(_box(c[0], c[1], text, c[2]), b) for b in boxes)), None)
        if choice is None:
            b = _box(candidates[0][0], candidates[0][1], text, "start")
            x = min(max(b[0], 2.0), width - 2.0 - (b[2] - b[0]))
            y = min(max(candidates[0][1], _FONT_PX), height - 4.0)
            choice = (x, y, "start")
        boxes.append(_box(*choice[:2], text, choice[2]))
        placed.append(choice)
    return placed


def svg_key_image(key: KeyImage, node_id: int, long_mm: float, short_mm: float, display_px: int = KEY_PX) -> str:
    e = html.escape
    parts = [f"<svg class='key' id='key-{node_id}' viewBox='0 0 {key.width} {key.height}' width='{display_px}' "
             f"height='{int(round(display_px * key.height / key.width))}' role='img' "
             f"aria-label='node {node_id} key image'>",
             f"<image href='data:image/png;base64,{key.png}' x='0' y='0' width='{key.width}' height='{key.height}'/>"]
    lines = []
    for cls, ends, mm, colour in (("long", key.long_px, long_mm, LONG_COLOUR),
                                  ("short", key.short_px, short_mm, SHORT_COLOUR)):
        if ends is None:
            continue
        (x1, y1), (x2, y2) = ends
        parts.append(f"<line class='axis {cls}' x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' "
                     f"stroke='{colour}' stroke-width='2'/>")
        lines.append((ends, f"{mm:.1f} mm", cls, colour))
    for (x, y, anchor), (_ends, text, cls, colour) in zip(place_labels([(a, b) for a, b, _c, _d in lines],
                                                                        key.width, key.height), lines):
        parts.append(f"<text class='axis-label {cls}' x='{x:.1f}' y='{y:.1f}' text-anchor='{anchor}' "
                     f"fill='{colour}'>{e(text)}</text>")
    parts.append("</svg>")
    return "".join(parts)


# --- words -------------------------------------------------------------------------------------------------
def _fmt(x, nd=1):
    return "" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def _ge(text: str) -> str:
    return html.escape(text.replace(">=", "≥").replace("<=", "≤"))


def _compartment(n) -> str:
    return C.REGION_NAME.get(n.region, n.region).lower()


def _met(n) -> list:
    cr = n.criteria
    met = []
    if cr.get("size_positive"):
        met.append(cr["size_rule"])
    if cr.get("malignant_features", 0) >= C.MALIGNANT_FEATURES_NEEDED:
        met.append(f"≥ {C.MALIGNANT_FEATURES_NEEDED} malignant features")
    return met


def _features(n) -> list:
    cr = n.criteria
    return [w for w, k in (("irregular border", "irregular_border"), ("heterogeneous signal", "heterogeneous_signal"))
            if cr.get(k)]


def findings(nodes: list) -> list:
    """Sentences per side and an impression, as a rectal MRI report words the lateral nodes."""
    out = []
    for side in ("right", "left"):
        here = sorted((n for n in nodes if n.side == side), key=lambda n: -n.short_axis_mm)
        if not here:
            out.append(f"<b>{side.capitalize()} lateral compartment:</b> no lymph node detected.")
            continue
        parts = []
        for code in ("II", "OB", "EI"):
            group = [n for n in here if n.region == code]
            name = C.REGION_NAME[code].lower()
            if not group:
                parts.append(f"{name}: none")
                continue
            big = group[0]
            desc = [f"short axis {_fmt(big.short_axis_mm)} mm"] + _features(big)
            met = _met(big)
            criteria = f"meets {_ge('; '.join(met))}" if met else "no criterion met"
            count = f"{len(group)} node{'s' if len(group) > 1 else ''}"
            largest = "largest " if len(group) > 1 else ""
            parts.append(f"{name}: {count}, {largest}{', '.join(desc)} ({criteria}; node {big.node_id})")
        out.append(f"<b>{side.capitalize()} lateral compartment:</b> " + "; ".join(parts) + ".")
    suspicious = [n for n in nodes if n.dl_status == "positive"]
    if suspicious:
        items = ", ".join(f"{n.side} {_compartment(n)} (node {n.node_id}, short axis {_fmt(n.short_axis_mm)} mm)"
                          for n in sorted(suspicious, key=lambda n: -n.short_axis_mm))
        out.append(f"<b>Impression:</b> lateral lymph node{'s' if len(suspicious) > 1 else ''} suspicious for "
                   f"metastasis: {items}.")
    else:
        out.append("<b>Impression:</b> no lateral lymph node suspicious for metastasis.")
    return out


def _radiomics_text(n) -> str:
    rp = n.radiomics.get("radiomics_probability")
    if rp is None:
        return n.radiomics.get("radiomics_note", "not computed")
    verdict = "≥" if n.radiomics.get("radiomics_positive") else "<"
    return (f"{rp:.2f} (score {n.radiomics['radiomics_score']:.2f}, {verdict} cut-off "
            f"{C.RADIOMICS_CUTOFF:g})")


def _flag(value: bool, number, nd=2) -> str:
    shown = _fmt(number, nd)
    return ("yes" if value else "no") + (f" ({shown})" if shown else "")


def build_html(summary: dict, nodes: list, images: dict, overview: Optional[KeyImage],
               slice_names: Optional[dict] = None) -> str:
    """`images`: {node_id: KeyImage}; `slice_names`: {node_id: "image 14 of series 5"}."""
    e = html.escape
    slice_names = slice_names or {}
    post = summary.get("post_treatment", False)
    n_pos = summary["n_positive"]
    src = summary.get("source", {})
    if summary["n_nodes"]:
        line = (f"Lateral lymph nodes: {summary['n_nodes']} detected, {n_pos} suspicious for metastasis by the model; "
                f"largest short axis {summary['max_short_axis_mm']:.1f} mm.")
    else:
        line = "No lateral lymph node detected."
    status = summary["patient_status"]
    line += (f" Lateral lymph node status (model): <span class='{'pos' if status == 'positive' else ''}'>"
             f"{e(status.upper())}</span>.")
    context = ("restaging after neoadjuvant therapy (Lateral Node Consortium cut-offs: internal iliac &gt; 4 mm, "
               "obturator &gt; 6 mm, external iliac ≥ 7 mm)" if post else
               f"primary staging (short axis ≥ {C.PRIMARY_SHORT_AXIS_MM:g} mm, or ≥ "
               f"{C.MALIGNANT_FEATURES_NEEDED} malignant features: irregular border, heterogeneous signal)")
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>LLNAssist report</title><style>{_CSS}</style>"
           "</head><body>", "<h1>Lateral lymph nodes - axial T2-weighted MRI (LLNAssist)</h1>"]
    if summary.get("domain", {}).get("notice"):
        out.append(f"<p class='domain' id='out-of-domain'>{e(summary['domain']['notice'])}. These results are not "
                   "validated and must not be used.</p>")
    if summary.get("notice"):
        out.append(f"<p class='notice'><b>Not for clinical use.</b> {e(summary['notice'])}</p>")
    out.append("<table class='header' id='header'>")
    rows = [("Patient", src.get("patient_name") or src.get("patient_reference") or "not given (volume file)"),
            ("Study date", src.get("study_date") or "not given")]
    if src.get("kind") == "dicom":
        num = f"series {src['series_number']}" if src.get("series_number") is not None else "series"
        rows.append(("Series", f"{num}: {src.get('description') or 'no description'} ({src.get('selected_by')})"))
        rows.append(("Series UID", src.get("series_instance_uid", "")))
    else:
        rows.append(("File", f"{src.get('file', '')} (sha256 {src.get('sha256', '')[:16]}...)"))
    out.extend(f"<tr><th>{e(a)}</th><td>{e(str(b))}</td></tr>" for a, b in rows)
    out.append("</table>")
    out.append(f"<p class='summary' id='summary'>{line}</p>")
    out.append(f"<p class='small'>Staging context: {context}.</p>")
    out.append("<h2>Findings</h2><div class='findings' id='findings'>")
    out.extend(f"<p>{p}</p>" for p in findings(nodes))
    out.append("</div>")
    out.append("<h2>Nodes</h2>")
    if not nodes:
        out.append("<p>No lateral lymph node detected.</p>")
    else:
        out.append("<table id='nodes'><tr><th>Node</th><th>Side</th><th>Compartment</th><th>Short axis (mm)</th>"
                   "<th>Long axis (mm)</th><th>Volume (mm&sup3;)</th><th>Irregular border</th>"
                   "<th>Heterogeneous signal</th><th>Criteria met</th><th>Model call</th>"
                   "<th>Radiomics probability</th><th>Key image</th></tr>")
        for n in nodes:
            cr = n.criteria
            call = "suspicious" if n.dl_status == "positive" else "not suspicious"
            out.append(
                f"<tr><td>{n.node_id}</td><td>{e(n.side)}</td><td>{e(_compartment(n))}</td>"
                f"<td>{_fmt(n.short_axis_mm)}</td><td>{_fmt(n.long_axis_mm)}</td><td>{_fmt(n.axes.volume_mm3, 0)}</td>"
                f"<td>{_flag(cr.get('irregular_border'), n.border_irregularity)}</td>"
                f"<td>{_flag(cr.get('heterogeneous_signal'), n.signal_heterogeneity)}</td>"
                f"<td>{_ge('; '.join(_met(n))) or 'none'}</td>"
                f"<td class='{'pos' if n.dl_status == 'positive' else ''}'>{call}</td>"
                f"<td>{e(_radiomics_text(n))}</td><td>{e(slice_names.get(n.node_id, ''))}</td></tr>")
        out.append("</table>")
        out.append("<p class='small'>Key images: the axial image with the largest short axis; node outline (yellow "
                   "suspicious, blue not suspicious), long axis <span style='color:#0097a7'>cyan</span>, short axis "
                   "<span style='color:#c2185b'>magenta</span>, each labelled with its length. Patient's right on "
                   "the image left.</p>")
        for n in nodes:
            key = images.get(n.node_id)
            if key is None:
                continue
            met = _met(n)
            where = slice_names.get(n.node_id)
            figure = svg_key_image(key, n.node_id, n.long_axis_mm, n.short_axis_mm)
            out.append(
                f"<div class='node' id='node-{n.node_id}'>{figure}"
                f"<div class='caption'><b>Node {n.node_id}</b>: {e(n.side)} {e(_compartment(n))}"
                f"{', ' + e(where) if where else ''}.<br>Short axis {_fmt(n.short_axis_mm)} mm, long axis "
                f"{_fmt(n.long_axis_mm)} mm{', ' + ', '.join(_features(n)) if _features(n) else ''}.<br>"
                f"Criteria met: {_ge('; '.join(met)) if met else 'none'}.<br>Model call: "
                f"{'suspicious' if n.dl_status == 'positive' else 'not suspicious'} for metastasis.<br>"
                f"Radiomics probability {e(_radiomics_text(n))}.</div></div>")
    if overview is not None:
        out.append("<h2>Overview</h2>")
        out.append(f"<img id='overview' alt='overview of the lateral compartments' style='max-width:600px' "
                   f"src='data:image/png;base64,{overview.png}'>")
        out.append("<p class='small'>Compartment outlines: internal iliac red, obturator green, external iliac "
                   "purple. Patient's right on the image left.</p>")
    m = summary["model"]
    v = summary["versions"]
    out.append("<h2>Provenance</h2><table>")
    rows = [("Methods", C.METHODS_NOTE), ("Model", f"{m['id']} {m['version']}"), ("Model sha256", m["sha256"]),
            ("Device", summary.get("device", "")), ("Radiomics", summary.get("radiomics_engine", "")),
            ("Software", ", ".join(f"{k} {val}" for k, val in v.items())),
            ("Timings (s)", ", ".join(f"{k} {val}" for k, val in summary["timings_s"].items()))]
    out.extend(f"<tr><th>{e(a)}</th><td>{e(str(b))}</td></tr>" for a, b in rows)
    out.append("</table></body></html>")
    return "\n".join(out)
