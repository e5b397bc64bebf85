"""HTML report that reads like the lateral-node part of a structured rectal MRI report, with key
images (axial key slice, overlay, long and short axis lines). One self-contained file."""

from __future__ import annotations

import base64
import html
import io
from typing import Optional

import numpy as np

from . import conventions as C

_CSS = """
body{font-family:system-ui,Arial,sans-serif;max-width:1100px;margin:1.5em auto;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #bbb;padding:3px 7px;text-align:left}
.notice{background:#fff3cd;border:1px solid #e0c36a;padding:.6em}.pos{color:#a00;font-weight:600}
.summary{font-size:1.1em;background:#eef;padding:.6em}.node{display:flex;gap:1.2em;margin:1em 0}
.node img{width:300px;height:300px;image-rendering:auto;border:1px solid #999}.small{color:#666;font-size:.85em}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", pad_inches=0.02)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _window(sl: np.ndarray, body: Optional[np.ndarray] = None):
    vals = sl[body] if body is not None and body.any() else sl.ravel()
    lo, hi = np.percentile(vals, [1, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def key_image(image: np.ndarray, labels: np.ndarray, node, spacing: tuple, half_width_mm: float = 25.0) -> str:
    """PNG (base64) of the node's key slice, cropped around it, node outline, axis lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = node.axes.key_slice
    sl = image[k].astype(np.float32)
    ci = float(np.mean(node.axes.long_ends_ijk[:, 0]))
    cj = float(np.mean(node.axes.long_ends_ijk[:, 1]))
    hi_, hj = half_width_mm / spacing[0], half_width_mm / spacing[1]
    i0, i1 = int(max(0, ci - hi_)), int(min(sl.shape[1], ci + hi_))
    j0, j1 = int(max(0, cj - hj)), int(min(sl.shape[0], cj + hj))
    crop = sl[j0:j1, i0:i1]
    lo, hi = _window(crop)
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(crop, cmap="gray", vmin=lo, vmax=hi, interpolation="bilinear",
              extent=(i0 - 0.5, i1 - 0.5, j1 - 0.5, j0 - 0.5), aspect=spacing[1] / spacing[0])
    mask = np.zeros(sl.shape, bool)
    kk, jj, ii = node.voxels
    sel = kk == k
    mask[jj[sel], ii[sel]] = True
    colour = np.array(C.LABEL_COLORS[C.LABEL_FROM_STATUS[node.dl_status]]) / 255
    ax.contour(np.arange(sl.shape[1]), np.arange(sl.shape[0]), mask.astype(float), levels=[0.5],
               colors=[colour], linewidths=1.2)
    le, se = node.axes.long_ends_ijk, node.axes.short_ends_ijk
    ax.plot(le[:, 0], le[:, 1], "-", color="#00e5ff", lw=1.4)
    ax.plot(se[:, 0], se[:, 1], "-", color="#ff3df5", lw=1.4)
    ax.set_xlim(i0 - 0.5, i1 - 0.5)
    ax.set_ylim(j1 - 0.5, j0 - 0.5)
    ax.set_axis_off()
    ax.text(0.02, 0.02, f"slice {k}", transform=ax.transAxes, color="w", fontsize=7)
    return _png(fig)


def overview_image(image: np.ndarray, labels: np.ndarray, k: int, spacing: tuple) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    sl = image[k].astype(np.float32)
    lo, hi = _window(sl)
    fig, ax = plt.subplots(figsize=(5, 5 * sl.shape[0] * spacing[1] / (sl.shape[1] * spacing[0])))
    ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, aspect=spacing[1] / spacing[0])
    cols = [(0, 0, 0, 0)] + [tuple(np.array(C.LABEL_COLORS[v]) / 255) + (0.45,) for v in range(1, 6)]
    ax.imshow(np.ma.masked_equal(labels[k], 0), cmap=ListedColormap(cols), vmin=0, vmax=5,
              interpolation="nearest", aspect=spacing[1] / spacing[0])
    ax.set_axis_off()
    ax.text(0.01, 0.5, "R", transform=ax.transAxes, color="w")
    ax.text(0.97, 0.5, "L", transform=ax.transAxes, color="w")
    return _png(fig)


def _fmt(x, nd=1):
    return "" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def build_html(summary: dict, nodes: list, images: dict, overview: Optional[str]) -> str:
    e = html.escape
    post = summary.get("post_treatment", False)
    n_pos = summary["n_positive"]
    line = (f"Lateral lymph nodes: {summary['n_nodes']} detected; {n_pos} suspicious for metastasis by the model; "
            f"maximum short axis {summary['max_short_axis_mm']} mm. Patient-level LLN status: "
            f"<span class='{'pos' if summary['patient_status'] == 'positive' else ''}'>"
            f"{e(summary['patient_status'].upper())}</span>.")
    context = ("restaging after neoadjuvant therapy (Lateral Node Consortium cut-offs: internal iliac &gt; 4 mm, "
               "obturator &gt; 6 mm)" if post else
               "primary staging (short axis &ge; 7 mm, or &ge; 2 malignant features: irregular border, "
               "heterogeneous signal)")
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>LLNAssist report</title><style>{_CSS}</style>"
           "</head><body>", "<h1>Lateral lymph nodes - axial T2-weighted MRI (LLNAssist)</h1>",
           f"<p class='notice'><b>Not for clinical use.</b> {e(C.SYNTHETIC_MODEL_NOTICE)}</p>",
           f"<p class='summary'>{line}</p>",
           f"<p class='small'>Staging context: {context}.</p>"]
    out.append("<h2>Nodes</h2>")
    if not nodes:
        out.append("<p>No lateral lymph node detected.</p>")
    else:
        out.append("<table><tr><th>Node</th><th>Side</th><th>Compartment</th><th>Short axis (mm)</th>"
                   "<th>Long axis (mm)</th><th>Volume (mm&sup3;)</th><th>Irregular border</th>"
                   "<th>Heterogeneous signal</th><th>Cut-offs met</th><th>DL status</th>"
                   "<th>Radiomics probability</th></tr>")
        for n in nodes:
            cr = n.criteria
            met = []
            if cr.get("size_positive"):
                met.append(cr["size_rule"])
            if cr.get("malignant_features", 0) >= C.MALIGNANT_FEATURES_NEEDED:
                met.append("&ge; 2 malignant features")
            rp = n.radiomics.get("radiomics_probability")
            rtxt = "" if rp is None else f"{rp:.2f} (score {n.radiomics['radiomics_score']:.2f}" + \
                (", &ge; cut-off -0.47)" if n.radiomics.get("radiomics_positive") else ", &lt; cut-off -0.47)")
            out.append(
                f"<tr><td>{n.node_id}</td><td>{e(n.side)}</td><td>{e(C.REGION_NAME.get(n.region, n.region))}</td>"
                f"<td>{_fmt(n.short_axis_mm)}</td><td>{_fmt(n.long_axis_mm)}</td><td>{_fmt(n.axes.volume_mm3, 0)}</td>"
                f"<td>{'yes' if cr.get('irregular_border') else 'no'} ({_fmt(n.border_irregularity, 2)})</td>"
                f"<td>{'yes' if cr.get('heterogeneous_signal') else 'no'} ({_fmt(n.signal_heterogeneity, 2)})</td>"
                f"<td>{'; '.join(met) or 'none'}</td>"
                f"<td class='{'pos' if n.dl_status == 'positive' else ''}'>{e(n.dl_status)}</td><td>{rtxt}</td></tr>")
        out.append("</table>")
        out.append("<p class='small'>Key images: axial key slice (largest short axis), node outline "
                   "(yellow positive, blue negative), long axis cyan, short axis magenta. "
                   "Patient right on the image left.</p>")
        for n in nodes:
            if n.node_id in images:
                c = C.RADIOMICS_CUTOFF
                out.append(f"<div class='node'><img alt='node {n.node_id} key image' "
                           f"src='data:image/png;base64,{images[n.node_id]}'><div><b>Node {n.node_id}</b>: "
                           f"{e(n.side)} {e(C.REGION_NAME.get(n.region, n.region).lower())}, short axis "
                           f"{_fmt(n.short_axis_mm)} mm, long axis {_fmt(n.long_axis_mm)} mm, "
                           f"{e(n.dl_status)} (model); radiomics cut-off {c}.<br>"
                           f"<span class='small'>Centre RAS ({n.centroid_ras[0]:.1f}, {n.centroid_ras[1]:.1f}, "
                           f"{n.centroid_ras[2]:.1f}) mm, key slice {n.axes.key_slice}.</span></div></div>")
    if overview:
        out.append("<h2>Overview</h2>")
        out.append(f"<img alt='overview' style='max-width:520px' src='data:image/png;base64,{overview}'>")
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
