"""Synthetic pelvic axial T2-weighted FSE phantoms with ground truth.

There is no patient data in this project: the bundled model is trained and evaluated on these.
Anatomy is drawn per slice in the image's own (possibly oblique) frame: x = patient left (+),
y = posterior (+), millimetres from the volume centre; slices run inferior -> superior.
Relative T2 signal follows DESIGN.md: urine > fat > marrow > nodes/rectal wall > muscle > cortex,
flow voids. Negative nodes are small, smooth, homogeneous (sometimes with a fatty hilum); positive
nodes are larger on average, rounder, with an irregular border and/or heterogeneous signal; sizes
overlap so that size alone cannot decide.

Only numpy/scipy here (no SimpleITK), so training can generate phantoms anywhere torch runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from . import conventions as C
from .measure import node_axes

# tissue ids -> relative T2 signal
AIR, FAT, MUSCLE, MARROW, CORTEX, URINE, WALL, RECT_WALL, LUMEN, TUMOUR, VESSEL = range(11)
SIGNAL = np.array([0.0, 0.80, 0.27, 0.60, 0.06, 1.00, 0.30, 0.36, 0.20, 0.44, 0.05], dtype=np.float32)
NODE_SIGNAL = 0.46
SOFT = (FAT, VESSEL)  # where region labels may lie


@dataclass
class PhantomNode:
    node_id: int
    region: str
    side: str
    status: str
    irregular: bool
    heterogeneous: bool
    center_mm: tuple  # (x, y, z) in the phantom frame
    short_axis_design_mm: float


@dataclass
class Phantom:
    image: np.ndarray  # (k, j, i) int16
    labels: np.ndarray  # (k, j, i) uint8, DESIGN.md values
    spacing: tuple  # (si, sj, sk) mm
    origin: np.ndarray  # LPS mm
    direction: np.ndarray  # 3x3, columns = i, j, k axes in LPS
    truth: dict
    nodes: list = field(default_factory=list)

    def to_sitk(self):
        import SimpleITK as sitk

        def mk(arr):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(tuple(float(s) for s in self.spacing))
            img.SetOrigin(tuple(float(o) for o in self.origin))
            img.SetDirection(tuple(float(d) for d in self.direction.ravel()))
            return img

        return mk(self.image), mk(self.labels)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    ang = math.radians(rng.uniform(0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(ang) * k + (1 - math.cos(ang)) * (k @ k)


def _smooth_field(rng, shape, scale_px: float, amp: float) -> np.ndarray:
    """Zero-mean smooth random field with std ~ amp (cheap: coarse noise, then upsampled)."""
    coarse = [max(2, int(round(s / scale_px)) + 2) for s in shape]
    noise = rng.normal(size=coarse).astype(np.float32)
    up = ndimage.zoom(noise, [s / c for s, c in zip(shape, coarse)], order=3)[tuple(slice(0, s) for s in shape)]
    up -= up.mean()
    return (up * (amp / (up.std() + 1e-6))).astype(np.float32)


class _Canvas:
    """Per-slice painting of rotated ellipses on the tissue array, restricted to bounding boxes."""

    def __init__(self, tissue: np.ndarray, sx: float, sy: float):
        self.t = tissue
        nz, ny, nx = tissue.shape
        self.xs = (np.arange(nx) - (nx - 1) / 2) * sx
        self.ys = (np.arange(ny) - (ny - 1) / 2) * sy
        self.sx, self.sy = sx, sy

    def ellipse(self, k, cx, cy, ax, ay, angle=0.0, inside_of=None):
        """Boolean mask (bbox slices, mask) of a rotated ellipse on slice k; None if empty."""
        r = max(ax, ay)
        i0 = np.searchsorted(self.xs, cx - r)
        i1 = np.searchsorted(self.xs, cx + r, side="right")
        j0 = np.searchsorted(self.ys, cy - r)
        j1 = np.searchsorted(self.ys, cy + r, side="right")
        if i1 <= i0 or j1 <= j0:
            return None
        dx = self.xs[i0:i1][None, :] - cx
        dy = self.ys[j0:j1][:, None] - cy
        c, s = math.cos(angle), math.sin(angle)
        u, v = dx * c + dy * s, -dx * s + dy * c
        m = (u / ax) ** 2 + (v / ay) ** 2 <= 1.0
        sl = (k, slice(j0, j1), slice(i0, i1))
        if inside_of is not None:
            m &= np.isin(self.t[sl], inside_of)
        return sl, m

    def paint(self, k, tissue, *args, inside_of=None, **kw):
        e = self.ellipse(k, *args, inside_of=inside_of, **kw)
        if e is not None:
            sl, m = e
            self.t[sl][m] = tissue
        return e

    def ring(self, k, inner, outer, cx, cy, ax, ay, thick, angle=0.0):
        """Bone-like ring: `outer` tissue (cortex) with `inner` (marrow) inside."""
        self.paint(k, outer, cx, cy, ax, ay, angle)
        if ax > thick and ay > thick:
            self.paint(k, inner, cx, cy, ax - thick, ay - thick, angle)


def _anatomy(rng, canvas: _Canvas, nz: int, sz: float, body: tuple):
    """Paints the pelvis; returns per-slice landmark positions used for regions and nodes."""
    bx, by = body
    sw = bx * 0.62 - 26 + rng.uniform(-3, 3)  # medial edge of obturator internus, mm from midline
    jitter = rng.uniform(-4, 4, size=8)
    tumour_k = sorted(rng.integers(0, nz, size=2))
    tumour_angle = rng.uniform(0, 2 * math.pi)
    land = []
    for k in range(nz):
        t = k / max(nz - 1, 1)  # 0 inferior .. 1 superior
        c = canvas
        c.paint(k, FAT, 0, 0, bx, by)
        # gluteal muscles, posterolateral
        for sgn in (-1, 1):
            c.paint(k, MUSCLE, sgn * bx * 0.58, by * 0.42, bx * 0.32, by * 0.38, sgn * 0.5)
        # iliopsoas, anterolateral, larger superiorly
        for sgn in (-1, 1):
            c.paint(k, MUSCLE, sgn * (bx * 0.56), -by * 0.52, 12 + 8 * t, 11 + 4 * t)
        # pelvic bone (ilium/ischium) and, inferiorly, the femoral heads
        for sgn in (-1, 1):
            c.ring(k, MARROW, CORTEX, sgn * (bx * 0.64 + jitter[0]), 2 + jitter[1], 13, 52, 2.5,
                   angle=sgn * 0.25)
            if t < 0.3:
                c.ring(k, MARROW, CORTEX, sgn * (bx * 0.66 + 6), -12, 22, 22, 2.5)
            # obturator internus on the inner sidewall
            c.paint(k, MUSCLE, sgn * (sw + 7), 0 + jitter[2], 7, 44, angle=sgn * 0.25)
        # sacrum (superior) / coccyx (inferior), posterior midline
        c.ring(k, MARROW, CORTEX, 0, by * 0.72, 18 + 30 * t, 12 + 3 * t, 2.5)
        # rectum with a tumour on some slices
        rcx, rcy = jitter[3], by * 0.34
        c.paint(k, RECT_WALL, rcx, rcy, 18, 16)
        c.paint(k, LUMEN, rcx, rcy, 13, 11)
        if tumour_k[0] <= k <= tumour_k[1] + 3:
            tx, ty = rcx + 11 * math.cos(tumour_angle), rcy + 10 * math.sin(tumour_angle)
            c.paint(k, TUMOUR, tx, ty, 10, 7, angle=tumour_angle)
        # bladder, anterior midline, dome in the upper half
        f = max(0.0, 1 - ((t - 0.55) / 0.55) ** 2)
        if f > 0.05:
            c.paint(k, WALL, jitter[4], -by * 0.42, 40 * f + 2, 30 * f + 2)
            c.paint(k, URINE, jitter[4], -by * 0.42, 40 * f, 30 * f)
        # vessels: flow voids along both sidewalls, converging superiorly
        lm = {}
        for sgn, side in ((1, "left"), (-1, "right")):
            ei = (sgn * (sw - 6 - 6 * t), -by * 0.42 + 10 * t + jitter[5])
            ii = (sgn * (sw - 26 + 4 * t), by * 0.18 - 6 * t + jitter[6])
            ob = (sgn * (sw - 3), -by * 0.06 + jitter[7])
            c.paint(k, VESSEL, ei[0], ei[1], 4.0, 4.0)  # external iliac artery
            c.paint(k, VESSEL, ei[0] - sgn * 8, ei[1] + 4, 5.5, 4.5)  # external iliac vein
            c.paint(k, VESSEL, ii[0], ii[1], 3.0, 3.0)  # internal iliac artery
            c.paint(k, VESSEL, ii[0] + sgn * 3, ii[1] + 7, 4.0, 3.5)  # internal iliac vein
            c.paint(k, VESSEL, ob[0], ob[1], 1.6, 1.6)  # obturator vessels
            # Compartments around their vessels, large enough for nodes beside (not on) them.
            lm[side] = {"EI": (ei[0] - sgn * 4, ei[1] + 1, 21.0, 16.0),
                        "OB": (sgn * (sw - 9), -by * 0.02, 8.5, 20.0),
                        "II": (ii[0] + sgn * 1, ii[1] + 4, 18.0, 20.0)}
        land.append(lm)
    return land


def _paint_regions(canvas: _Canvas, labels: np.ndarray, land: list):
    vessels = np.array([FAT, VESSEL])
    for k, lm in enumerate(land):
        for side in ("left", "right"):
            # obturator first so the vessel-centred regions win their overlaps
            for code in ("OB", "II", "EI"):
                cx, cy, ax, ay = lm[side][code]
                e = canvas.ellipse(k, cx, cy, ax, ay, inside_of=vessels)
                if e is not None:
                    sl, m = e
                    labels[sl][m] = C.REGION_LABEL_FROM_CODE[code]


def _node_fraction(canvas, sz, nz, node, rng, sub=5):
    """Partial-volume fraction of a node per voxel (k, j, i) in its bounding box, and its signal."""
    cx, cy, cz = node["center"]
    a, b, c = node["a"], node["b"], node["c"]
    r = max(a, b) * (1 + node["irr_amp"]) + 1
    xs, ys = canvas.xs, canvas.ys
    i0, i1 = np.searchsorted(xs, cx - r), np.searchsorted(xs, cx + r, side="right")
    j0, j1 = np.searchsorted(ys, cy - r), np.searchsorted(ys, cy + r, side="right")
    zc = (np.arange(nz) - (nz - 1) / 2) * sz
    k0 = max(0, int(np.searchsorted(zc, cz - c - sz)))
    k1 = min(nz, int(np.searchsorted(zc, cz + c + sz, side="right")))
    dx = xs[i0:i1][None, None, :] - cx
    dy = ys[j0:j1][None, :, None] - cy
    ca, sa = math.cos(node["angle"]), math.sin(node["angle"])
    u, v = dx * ca + dy * sa, -dx * sa + dy * ca
    theta = np.arctan2(v / b, u / a)
    rad = np.ones_like(theta)
    for m, amp, ph in node["harmonics"]:
        rad = rad + amp * np.cos(m * theta + ph)
    frac = np.zeros((k1 - k0, j1 - j0, i1 - i0), np.float32)
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    for kk in range(k0, k1):
        acc = np.zeros((j1 - j0, i1 - i0), np.float32)
        for o in offsets:
            w = (zc[kk] + o * sz - cz) / c
            if abs(w) >= 1:
                continue
            acc += ((u / a) ** 2 + (v / b) ** 2 <= (rad ** 2) * (1 - w * w))[0]
        frac[kk - k0] = acc / sub
    sl = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
    signal = np.full(frac.shape, NODE_SIGNAL * node["gain"], np.float32)
    if node["heterogeneous"]:
        het = _smooth_field(rng, frac.shape, scale_px=max(1.5, 1.2 / canvas.sx), amp=0.30)
        signal *= 1 + np.clip(het, -0.55, 0.6)
    if node["hilum"]:
        hx, hy = 0.45 * a, 0.0
        hmask = ((u - hx) / (0.35 * a)) ** 2 + ((v - hy) / (0.4 * b)) ** 2 <= 1
        signal[:, hmask[0]] = SIGNAL[FAT]
    return sl, frac, signal


def _design_node(rng, status: str, sz: float) -> dict:
    if status == "negative":
        short = rng.uniform(3.0, 7.0)
        ratio = rng.uniform(1.3, 2.0)
        irregular, heterogeneous = False, False
        hilum = short > 4.5 and rng.random() < 0.3
        zlen = rng.uniform(max(1.3 * sz, 4.5), 10.0)
    else:
        short = rng.uniform(4.0, 14.0)
        ratio = rng.uniform(1.0, 1.35)
        heterogeneous = bool(short < 6.0 or rng.random() < 0.8)
        irregular = bool(rng.random() < 0.7 or not heterogeneous)
        hilum = False
        zlen = rng.uniform(max(1.3 * sz, 5.0), 14.0)
    harmonics = []
    irr_amp = 0.0
    if irregular:
        for m in rng.choice(np.arange(3, 9), size=3, replace=False):
            amp = rng.uniform(0.07, 0.13)
            harmonics.append((int(m), float(amp), float(rng.uniform(0, 2 * math.pi))))
            irr_amp += amp
    else:  # smooth nodes still are not perfect ellipses
        harmonics.append((2, float(rng.uniform(0, 0.03)), float(rng.uniform(0, 2 * math.pi))))
    return {"status": status, "b": short / 2, "a": short * ratio / 2, "c": zlen / 2,
            "angle": rng.uniform(0, math.pi), "harmonics": harmonics, "irr_amp": irr_amp,
            "irregular": irregular, "heterogeneous": heterogeneous, "hilum": hilum,
            "gain": rng.uniform(0.93, 1.07), "short_design": short}


def generate(seed: int, size: int | None = None, slices: int | None = None,
             spacing: float | None = None, n_nodes: int | None = None,
             max_oblique_deg: float = 12.0) -> Phantom:
    """One synthetic case; the same seed always gives the same case."""
    rng = np.random.default_rng(seed)
    n = int(size) if size else int(rng.integers(320, 451))
    nz = int(slices) if slices else int(rng.integers(24, 41))
    # Keep a field of view >= 240 mm so both sidewalls are in view; a small matrix gets bigger pixels.
    lo = max(0.55, 240.0 / n)
    sx = float(spacing) if spacing else float(rng.uniform(lo, max(0.8, lo)))
    sz = float(rng.uniform(3.0, 4.0))
    fov = n * sx
    body = (min(0.47 * fov, rng.uniform(150, 172)), min(0.40 * fov, rng.uniform(100, 118)))
    tissue = np.zeros((nz, n, n), np.uint8)
    canvas = _Canvas(tissue, sx, sx)
    land = _anatomy(rng, canvas, nz, sz, body)
    labels = np.zeros_like(tissue)
    _paint_regions(canvas, labels, land)

    # texture: fat lobules, muscle striation, bias comes later
    img = SIGNAL[tissue]
    img *= 1 + _smooth_field(rng, img.shape, scale_px=6.0 / sx, amp=0.035)

    zc = (np.arange(nz) - (nz - 1) / 2) * sz
    count = int(n_nodes) if n_nodes is not None else int(rng.integers(0, 7))
    designs, placed = [], []
    for _ in range(count):
        status = "positive" if rng.random() < 0.4 else "negative"
        d = _design_node(rng, status, sz)
        for _ in range(300):
            side = ("left", "right")[int(rng.integers(0, 2))]
            code = ("II", "OB", "EI")[int(rng.integers(0, 3))]
            k = int(rng.integers(2, nz - 2))
            cx, cy, ax, ay = land[k][side][code]
            rr = math.sqrt(rng.uniform(0, 1)) * 0.75
            th = rng.uniform(0, 2 * math.pi)
            px, py = cx + rr * ax * math.cos(th), cy + rr * ay * math.sin(th)
            pz = zc[k] + rng.uniform(-0.3, 0.3) * sz
            if any((px - q[0]) ** 2 + (py - q[1]) ** 2 < (d["a"] + q[3] + 4) ** 2 and abs(pz - q[2]) < d["c"] + q[4]
                   for q in placed):
                continue
            e = canvas.ellipse(k, px, py, d["a"] * 1.2 + 1, d["b"] * 1.2 + 1, d["angle"])
            if e is None:
                continue
            sl, m = e
            under = tissue[sl][m]
            if (under == VESSEL).mean() > 0.02 or np.isin(under, (FAT, VESSEL)).mean() < 0.98:
                continue  # nodes lie in fat, beside (not on) the vessels
            if labels[sl][m].size and (labels[sl][m] == C.REGION_LABEL_FROM_CODE[code]).mean() < 0.6:
                continue
            d.update(center=(px, py, pz), side=side, region=code)
            placed.append((px, py, pz, d["a"], d["c"]))
            designs.append(d)
            break

    nodes: list[PhantomNode] = []
    node_masks = []
    for d in designs:
        sl, frac, signal = _node_fraction(canvas, sz, nz, d, rng)
        region = img[sl]
        img[sl] = region * (1 - frac) + signal * frac
        mask = frac >= 0.5
        if not mask.any():
            mask = frac >= frac.max() * 0.5 if frac.max() > 0 else mask
        if not mask.any():
            continue
        full = np.zeros(labels.shape, bool)
        full[sl] = mask
        node_masks.append(full)
        labels[full] = C.LABEL_FROM_STATUS[d["status"]]
        nodes.append(PhantomNode(len(nodes) + 1, d["region"], d["side"], d["status"], d["irregular"],
                                 d["heterogeneous"], d["center"], d["short_design"]))

    # acquisition: blur (PSF), coil bias field, Rician noise, scanner scale
    img = ndimage.gaussian_filter(img, sigma=(0, 0.6, 0.6))
    yy = canvas.ys[None, :, None] / (body[1] + 1)
    xx = canvas.xs[None, None, :] / (body[0] + 1)
    zz = zc[:, None, None] / (abs(zc).max() + 1)
    co = rng.uniform(-0.18, 0.18, size=5)
    bias = np.exp(co[0] * xx + co[1] * yy + co[2] * zz + co[3] * (xx ** 2 + yy ** 2) + co[4] * xx * yy)
    img = img * bias.astype(np.float32)
    sigma = rng.uniform(0.015, 0.04) * SIGNAL[FAT]
    n1 = rng.normal(0, sigma, img.shape).astype(np.float32)
    n2 = rng.normal(0, sigma, img.shape).astype(np.float32)
    img = np.sqrt((img + n1) ** 2 + n2 ** 2)
    scale = rng.uniform(300, 3000)
    image = np.clip(np.round(img * scale), 0, 32767).astype(np.int16)

    direction = _rotation(rng, max_oblique_deg)
    spacing_t = (sx, sx, sz)
    center_idx = (np.array([n, n, nz]) - 1) / 2.0
    table_offset = np.array([0.0, 0.0, rng.uniform(-40, 40)])
    origin = table_offset - direction @ (center_idx * np.array(spacing_t))

    truth_nodes = []
    for node, mask in zip(nodes, node_masks):
        kji = np.argwhere(mask).mean(0)
        ijk = kji[::-1]
        lps = origin + direction @ (ijk * np.array(spacing_t))
        ras = lps * np.array([-1, -1, 1])
        ax = node_axes(mask, spacing_t)
        truth_nodes.append({
            "node_id": node.node_id, "centroid_r": round(float(ras[0]), 3),
            "centroid_a": round(float(ras[1]), 3), "centroid_s": round(float(ras[2]), 3),
            "region": node.region, "side": node.side, "status": node.status,
            "short_axis_mm": round(ax.short_axis_mm, 3), "long_axis_mm": round(ax.long_axis_mm, 3),
            "volume_mm3": round(ax.volume_mm3, 2),
            "irregular_border": node.irregular, "heterogeneous_signal": node.heterogeneous,
        })
    truth = {
        "patient_status": "positive" if any(n.status == "positive" for n in nodes) else "negative",
        "nodes": truth_nodes,
        "seed": int(seed),
        "synthetic": True,
        "geometry": {"size": [n, n, nz], "spacing_mm": list(spacing_t)},
    }
    return Phantom(image, labels, spacing_t, origin, direction, truth, nodes)


def write(ph: Phantom, out_dir, dicom: bool = False, seed: int = 0) -> None:
    """image.nii.gz, labels.nii.gz, truth.json into out_dir (atomically); with `dicom` also
    dicom/, the image as an axial T2 MR series (TE 100 ms, TR 4000 ms) of a phantom patient."""
    import json
    from pathlib import Path

    from .atomic import staged_directory
    from .imageio import write_image

    out_dir = Path(out_dir)
    img, lab = ph.to_sitk()
    with staged_directory(out_dir, marker="truth.json") as stage:
        write_image(img, stage / "image.nii.gz")
        write_image(lab, stage / "labels.nii.gz")
        (stage / "truth.json").write_text(json.dumps(ph.truth, indent=2), encoding="utf-8")
        if dicom:
            from .dicom_write import SeriesSpec, StudySpec, write_mr_series

            write_mr_series(img, stage / "dicom", SeriesSpec("T2 TSE AX (phantom)", 3),
                            StudySpec(patient_id=f"PHANTOM{seed}", seed=f"llnassist-phantom-{seed}"))
