"""The domain gate: refuse what the model cannot read instead of giving a confident wrong answer.

Before the model (seconds, from the image and its headers):
- MR only (DICOM Modality); no CT-like values (a large share of voxels at or below -500, as
  Hounsfield units of air).
- Not blank, not constant.
- An axial acquisition: the slice normal within 45 degrees of the head-foot axis (oblique axial is
  what rectal protocols acquire). The slice axis is the one with clearly the coarsest spacing
  (> 1.3 x the others; 2D acquisitions have thick slices), else the file's third axis.
- Geometry of a pelvic T2WI: in-plane pixels 0.2-1.5 mm (nodes of 5 mm need >= 3 pixels across),
  slices 0.5-8 mm apart (thicker slices step over nodes), an in-plane field of view of
  140-500 mm (small-FOV rectal T2 to a whole pelvis), at least 40 mm of head-foot coverage (the
  lateral compartments span 8-10 cm).
- A body shaped like a pelvis on the middle slices: at least 205 mm left to right and wider than
  deep (front-to-back depth <= 0.95 x width), unless it fills a small field of view from side to
  side. Adult hips are 280-420 mm wide and about 0.6-0.85 as deep; a head (150-190 mm, deeper than
  wide) or a limb is refused here.

After the model (from its output):
- the three compartments on both sides, each with a volume in the range calibrated on phantoms;
- at most MAX_NODES nodes, none with a short axis over MAX_NODE_SHORT_AXIS_MM;
- confidence: the mean normalised softmax entropy of the voxels the model called foreground
  below MAX_FOREGROUND_ENTROPY.
The post-model limits are calibrated by benchmarks/calibrate_domain_gate.py (README: figures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import SimpleITK as sitk

from . import conventions as C
from .errors import InputError

# --- before the model ----------------------------------------------------------------------------------
PIXEL_RANGE_MM = (0.2, 1.5)
SLICE_RANGE_MM = (0.5, 8.0)
FOV_RANGE_MM = (140.0, 500.0)
MIN_COVERAGE_MM = 40.0
MIN_BODY_WIDTH_MM = 205.0
MAX_DEPTH_TO_WIDTH = 0.95
CT_VALUE = -500.0
CT_FRACTION = 0.05
# --- after the model (calibrated: see the module docstring) ------------------------------------------------
# 30 unseen phantoms: compartments 30-141 mL, 0-6 nodes, short axis <= 14.4 mm, entropy 0.008-0.027;
# the limits leave a factor of about 3 (compartments) and 2 (entropy) to those extremes.
COMPARTMENT_ML_RANGE = {1: (10.0, 400.0), 2: (10.0, 400.0), 3: (10.0, 400.0)}
MAX_NODES = 15
MAX_NODE_SHORT_AXIS_MM = 35.0
MAX_FOREGROUND_ENTROPY = 0.06

REAL_SCAN_HINT = ("this looks like a real pelvic T2WI, but the bundled model was trained only on synthetic "
                  "phantoms; load a site model (--model)")
FORCE_HINT = "use --force to analyse it anyway (every output is then marked as outside the validated domain)"


class OutOfDomain(InputError):
    """Refused by the gate; `reasons` lists what was wrong."""

    def __init__(self, message: str, reasons: list, stage: str):
        super().__init__(message)
        self.reasons = reasons
        self.stage = stage


@dataclass
class GateResult:
    stage: str  # "input" or "output"
    reasons: list = field(default_factory=list)
    measures: dict = field(default_factory=dict)
    hint: str = ""

    @property
    def ok(self) -> bool:
        return not self.reasons

    def message(self, what: str) -> str:
        return f"{what}: {'; '.join(self.reasons)}; {self.hint or FORCE_HINT}"


def acquisition_axis(image: sitk.Image) -> int:
    """The ITK axis the slices were acquired along."""
    sp = np.array(image.GetSpacing(), float)
    k = int(np.argmax(sp))
    others = np.delete(sp, k)
    return k if sp[k] > 1.3 * others.max() else 2


def check_input(image: sitk.Image, modality: Optional[str] = None, suggestion: str = "",
                canon_body: Optional[tuple] = None) -> GateResult:
    """The checks before the model; `suggestion` names a better series when one is known.
    `canon_body` is (canonical image, body mask) when the caller has them already."""
    from .body import body_mask
    from .dicomseries import plane_of
    from .imageio import to_axial_canonical

    g = GateResult("input")
    m = g.measures
    if modality and modality != "MR":
        g.reasons.append(f"the images are {modality}, not MR")
    arr = sitk.GetArrayViewFromImage(image)
    lo, hi = float(arr.min()), float(arr.max())
    m["value_range"] = [lo, hi]
    if hi == lo:
        g.reasons.append("every voxel is 0 (a blank volume)" if hi == 0 else f"every voxel has the value {hi:g}")
        g.hint = "check the export of the series"
        return g
    ct_share = float(np.mean(arr <= CT_VALUE))
    m["share_below_minus_500"] = round(ct_share, 4)
    if ct_share > CT_FRACTION:
        g.reasons.append(f"{100 * ct_share:.0f} % of voxels are at or below -500 (down to {lo:g}), as CT "
                         "Hounsfield units are; LLNAssist reads MR")
    axis = acquisition_axis(image)
    d = np.array(image.GetDirection(), float).reshape(3, 3)
    normal = d[:, axis] * np.array([-1.0, -1.0, 1.0])  # RAS, for the words
    plane, tilt = plane_of(normal)
    sp = np.array(image.GetSpacing(), float)
    inplane = [i for i in range(3) if i != axis]
    m.update({"plane": plane, "tilt_deg": round(tilt, 1), "slice_mm": round(float(sp[axis]), 3),
              "pixel_mm": [round(float(sp[i]), 3) for i in inplane],
              "fov_mm": round(float(max(sp[i] * image.GetSize()[i] for i in inplane)), 1),
              "coverage_mm": round(float(sp[axis] * image.GetSize()[axis]), 1)})
    if plane != "axial":
        g.reasons.append(f"a {plane} acquisition ({sp[axis]:.1f} mm slices, tilted {tilt:.0f} degrees from axial); "
                         "LLNAssist reads the axial T2-weighted series")
        g.hint = ("give the axial T2 series" + suggestion) if suggestion else \
            "give the axial T2-weighted series of the study"
        return g
    if not all(PIXEL_RANGE_MM[0] <= sp[i] <= PIXEL_RANGE_MM[1] for i in inplane):
        g.reasons.append(f"in-plane pixels of {m['pixel_mm']} mm (a pelvic T2WI has {PIXEL_RANGE_MM[0]}-"
                         f"{PIXEL_RANGE_MM[1]} mm)")
    if not SLICE_RANGE_MM[0] <= sp[axis] <= SLICE_RANGE_MM[1]:
        g.reasons.append(f"slices {sp[axis]:.1f} mm apart (a pelvic T2WI has {SLICE_RANGE_MM[0]}-"
                         f"{SLICE_RANGE_MM[1]} mm)")
    if not FOV_RANGE_MM[0] <= m["fov_mm"] <= FOV_RANGE_MM[1]:
        g.reasons.append(f"a field of view of {m['fov_mm']:.0f} mm (a pelvic T2WI has {FOV_RANGE_MM[0]:.0f}-"
                         f"{FOV_RANGE_MM[1]:.0f} mm)")
    if m["coverage_mm"] < MIN_COVERAGE_MM:
        g.reasons.append(f"only {m['coverage_mm']:.0f} mm covered head to foot (the lateral compartments need "
                         f">= {MIN_COVERAGE_MM:.0f} mm)")
    if g.reasons:
        return g
    if canon_body is None:
        canon = to_axial_canonical(image)
        canon_body = (canon, body_mask(sitk.GetArrayViewFromImage(canon)))
    canon, body = canon_body
    nz = body.shape[0]
    mid = body[nz // 3: max(nz // 3 + 1, 2 * nz // 3)]
    cols = np.flatnonzero(mid.any(axis=(0, 1)))
    rows = np.flatnonzero(mid.any(axis=(0, 2)))
    si, sj = canon.GetSpacing()[:2]
    width = float((cols[-1] - cols[0] + 1) * si) if cols.size else 0.0
    depth = float((rows[-1] - rows[0] + 1) * sj) if rows.size else 0.0
    touches = bool(cols.size and cols[0] == 0 and cols[-1] == body.shape[2] - 1)
    m.update({"body_width_mm": round(width, 1), "body_depth_mm": round(depth, 1),
              "body_touches_both_sides": touches})
    if not touches and (width < MIN_BODY_WIDTH_MM or depth > MAX_DEPTH_TO_WIDTH * width):
        g.reasons.append(f"the body is {width:.0f} mm wide and {depth:.0f} mm deep; a pelvis is at least "
                         f"{MIN_BODY_WIDTH_MM:.0f} mm wide and wider than deep (this looks like a head or a limb)")
    return g


def compartment_volumes(lab_canon: np.ndarray, left: np.ndarray, voxel_ml: float) -> dict:
    """{(region label, side): mL} of the model's compartments."""
    out = {}
    for r in C.REGION_LABELS:
        is_r = lab_canon == r
        for side in C.SIDES:
            out[(r, side)] = float(np.count_nonzero(is_r & (left == (side == "left")))) * voxel_ml
    return out


def check_output(volumes: dict, nodes: list, stats: dict, synthetic_model: bool,
                 max_entropy: Optional[float] = MAX_FOREGROUND_ENTROPY) -> GateResult:
    """The checks after the model: anatomy present and plausible, few plausible nodes, confident.
    The confidence limit is calibrated per model (None: not calibrated, not checked)."""
    g = GateResult("output")
    m = g.measures
    m["compartments_ml"] = {f"{C.REGION_CODE[r]} {s}": round(v, 2) for (r, s), v in volumes.items()}
    for (r, side), v in volumes.items():
        lo, hi = COMPARTMENT_ML_RANGE[r]
        name = f"{C.REGION_NAME[C.REGION_CODE[r]].lower()} compartment ({side})"
        if v == 0:
            g.reasons.append(f"no {name} found")
        elif not lo <= v <= hi:
            g.reasons.append(f"{name} of {v:.1f} mL (expected {lo:g}-{hi:g} mL)")
    m["n_nodes"] = len(nodes)
    if len(nodes) > MAX_NODES:
        g.reasons.append(f"{len(nodes)} nodes found (a plausible count is <= {MAX_NODES})")
    big = max((n.short_axis_mm for n in nodes), default=0.0)
    m["max_short_axis_mm"] = round(big, 2)
    if big > MAX_NODE_SHORT_AXIS_MM:
        g.reasons.append(f"a node of {big:.0f} mm short axis (over {MAX_NODE_SHORT_AXIS_MM:.0f} mm is not a "
                         "lymph node)")
    ent = stats.get("foreground_entropy")
    m["foreground_entropy"] = None if ent is None or math.isnan(ent) else round(float(ent), 4)
    if max_entropy is not None and ent is not None and not math.isnan(ent) and ent > max_entropy:
        g.reasons.append(f"the model is unsure (mean entropy {ent:.2f} > {max_entropy})")
    if g.reasons:
        g.hint = (REAL_SCAN_HINT + ", or " + FORCE_HINT) if synthetic_model else \
            "check that this is an axial T2WI of the pelvis, or " + FORCE_HINT
    return g


def refuse(g: GateResult) -> None:
    what = ("not an image the model can read" if g.stage == "input"
            else "the model's output is not anatomically plausible")
    raise OutOfDomain(g.message(what), g.reasons, g.stage)
