"""Node instances from a label map: status, region, side, axes, morphology proxies, size criteria.

Works on a canonical (slices along k, LPS-ordered) copy of the label map, so measurement is on the
acquired slices; positions are reported in RAS millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.measure import regionprops

from . import conventions as C
from .imageio import index_to_ras, to_axial_canonical
from .measure import NodeAxes, node_axes

# Components smaller than this are speckle, not nodes (a 3 mm node is ~30-40 mm^3).
MIN_NODE_VOLUME_MM3 = 10.0
# Shell around a node in which the region label is voted (DESIGN.md: "thin shell").
SHELL_MM = 3.0
# Morphology proxies and their thresholds (calibrated on phantom truth, see README "Node criteria"):
# border irregularity = 1 - solidity (area / convex-hull area) on the key slice, sub-pixel outline;
# signal heterogeneity = coefficient of variation of the signal inside the node on the key slice,
# rim pixels excluded.
IRREGULARITY_THRESHOLD = 0.09
HETEROGENEITY_THRESHOLD = 0.12


@dataclass
class Node:
    node_id: int
    side: str
    region: str
    dl_status: str
    axes: NodeAxes
    centroid_ras: np.ndarray
    n_voxels: int
    positive_fraction: float
    border_irregularity: float = float("nan")
    signal_heterogeneity: float = float("nan")
    criteria: dict = field(default_factory=dict)
    radiomics: dict = field(default_factory=dict)
    # (k, j, i) index arrays of the node's voxels in the canonical grid
    voxels: tuple = field(default=(), repr=False)
    instance: int = 0  # the component / segment number this node was measured from

    @property
    def short_axis_mm(self) -> float:
        return self.axes.short_axis_mm

    @property
    def long_axis_mm(self) -> float:
        return self.axes.long_axis_mm

    @property
    def size_positive(self) -> bool:
        return bool(self.criteria.get("size_positive", False))

    def row(self) -> dict:
        r = self.radiomics
        return {
            "node_id": self.node_id, "side": self.side, "region": self.region, "dl_status": self.dl_status,
            "short_axis_mm": round(self.axes.short_axis_mm, 2), "long_axis_mm": round(self.axes.long_axis_mm, 2),
            "volume_mm3": round(self.axes.volume_mm3, 1),
            "centroid_r": round(float(self.centroid_ras[0]), 2), "centroid_a": round(float(self.centroid_ras[1]), 2),
            "centroid_s": round(float(self.centroid_ras[2]), 2),
            "radiomics_score": "" if r.get("radiomics_score") is None else round(r["radiomics_score"], 4),
            "radiomics_probability": "" if r.get("radiomics_probability") is None
            else round(r["radiomics_probability"], 4),
            "size_positive": self.size_positive,
        }


def size_criterion(short_axis_mm: float, region: str, post_treatment: bool) -> tuple[bool, str]:
    """(meets the cut-off, which cut-off) per DESIGN.md."""
    if post_treatment and region in C.RESTAGING_SHORT_AXIS_MM:
        cut = C.RESTAGING_SHORT_AXIS_MM[region]
        return short_axis_mm > cut, f"restaging {C.REGION_NAME[region].lower()} > {cut:g} mm"
    return short_axis_mm >= C.PRIMARY_SHORT_AXIS_MM, f"short axis ≥ {C.PRIMARY_SHORT_AXIS_MM:g} mm"


def midline_r(body: Optional[np.ndarray], regions: np.ndarray, canon: sitk.Image, k: int) -> float:
    """R coordinate of the mid-sagittal plane on slice k: centre of the body's left-right extent,
    else the mean of the region voxels (both sides are labelled), else 0 (scanner isocentre)."""
    for mask in (body, regions):
        if mask is None:
            continue
        jj, ii = np.nonzero(mask[k])
        if len(ii) == 0:
            continue
        ijk = np.column_stack([ii, jj, np.full(len(ii), k)])
        r = index_to_ras(canon, ijk)[:, 0]
        return float((r.min() + r.max()) / 2) if mask is body else float(r.mean())
    return 0.0


def border_irregularity(mask2d: np.ndarray) -> float:
    props = regionprops(mask2d.astype(np.uint8))
    if not props:
        return float("nan")
    p = max(props, key=lambda q: q.area)
    if p.area < 4:
        return 0.0
    return float(1.0 - p.solidity)


def signal_heterogeneity(image2d: np.ndarray, mask2d: np.ndarray) -> float:
    """Coefficient of variation inside the node on its key slice, one rim pixel excluded: the
    slices at a node's ends and its rim mix with fat (partial volume), which is not heterogeneity."""
    core = ndimage.binary_erosion(mask2d)
    vals = image2d[core] if core.sum() >= 6 else image2d[mask2d]
    vals = vals.astype(np.float64)
    if vals.size < 3 or vals.mean() <= 0:
        return float("nan")
    return float(vals.std() / vals.mean())


def extract_nodes(labels: sitk.Image, image: Optional[sitk.Image] = None, post_treatment: bool = False,
                  min_volume_mm3: float = MIN_NODE_VOLUME_MM3, body: Optional[np.ndarray] = None,
                  instances: Optional[sitk.Image] = None, statuses: Optional[dict] = None) -> list[Node]:
    """Node instances (connected components of the node labels) with everything but radiomics.
    `body` (canonical grid) may be passed when the caller already has it.

    `instances` (same grid as `labels`, 1..n per node) replaces the connected components when the
    nodes are given one by one (edited segments may touch); `statuses` maps an instance number to
    its status, otherwise the majority node label decides."""
    canon = to_axial_canonical(labels)
    lab = sitk.GetArrayFromImage(canon)
    img = sitk.GetArrayFromImage(to_axial_canonical(image)).astype(np.float32) if image is not None else None
    spacing = canon.GetSpacing()
    voxel_mm3 = float(np.prod(spacing))
    if instances is None:
        node_mask = np.isin(lab, C.NODE_LABELS)
        comp, n = ndimage.label(node_mask, structure=np.ones((3, 3, 3), bool))
    else:
        comp = sitk.GetArrayFromImage(to_axial_canonical(instances)).astype(np.int32)
    region_mask = np.isin(lab, C.REGION_LABELS)
    if body is None and img is not None:
        from .body import body_mask

        body = body_mask(img)
    objects = ndimage.find_objects(comp)
    shell_r = (max(1, int(round(SHELL_MM / spacing[0]))), max(1, int(round(SHELL_MM / spacing[1]))))
    nodes: list[Node] = []
    for idx, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        m = comp[sl] == idx
        nvox = int(m.sum())
        if nvox * voxel_mm3 < min_volume_mm3:
            continue
        vals = lab[sl][m]
        pos = float((vals == C.NODE_POSITIVE).mean())
        status = "positive" if pos >= 0.5 else "negative"
        if statuses and idx in statuses:
            status = statuses[idx]
        # region: majority region label in an in-plane shell of SHELL_MM (same slices +-1)
        pad = (1, shell_r[1] + 1, shell_r[0] + 1)
        big = tuple(slice(max(0, s.start - p), min(dim, s.stop + p)) for s, p, dim in zip(sl, pad, lab.shape))
        mb = comp[big] == idx
        st = np.zeros((3, 2 * shell_r[1] + 1, 2 * shell_r[0] + 1), bool)
        yy, xx = np.mgrid[-shell_r[1]:shell_r[1] + 1, -shell_r[0]:shell_r[0] + 1]
        disk = (yy / shell_r[1]) ** 2 + (xx / shell_r[0]) ** 2 <= 1
        st[1] = disk
        st[0, shell_r[1], shell_r[0]] = st[2, shell_r[1], shell_r[0]] = True
        shell = ndimage.binary_dilation(mb, structure=st) & ~mb
        rv = lab[big][shell]
        rv = rv[np.isin(rv, C.REGION_LABELS)]
        if rv.size:
            region = C.REGION_CODE[int(np.bincount(rv).argmax())]
        else:
            region = _nearest_region(lab, region_mask, comp == idx)
        full_idx = tuple(a + s.start for a, s in zip(np.nonzero(m), sl))
        kji = np.column_stack(full_idx).mean(0)
        centroid = index_to_ras(canon, kji[::-1])[0]
        axes = node_axes(m, spacing)
        offset = np.array([sl[2].start, sl[1].start, sl[0].start])  # (i, j, k) of the bounding box
        axes.short_ends_ijk = axes.short_ends_ijk + offset
        axes.long_ends_ijk = axes.long_ends_ijk + offset
        axes.key_slice += sl[0].start
        mid = midline_r(body, region_mask, canon, axes.key_slice)
        side = "left" if centroid[0] < mid else "right"
        node = Node(0, side, region, status, axes, centroid, nvox, pos, voxels=full_idx, instance=idx)
        node.border_irregularity = border_irregularity(m[axes.key_slice - sl[0].start])
        if img is not None:
            ks = axes.key_slice - sl[0].start
            node.signal_heterogeneity = signal_heterogeneity(img[sl][ks], m[ks])
        node.criteria = criteria(node, post_treatment)
        nodes.append(node)
    # Stable, readable ids: by side, region, then head-to-foot.
    order = {"II": 0, "OB": 1, "EI": 2}
    nodes.sort(key=lambda q: (q.side != "right", order.get(q.region, 3), -q.centroid_ras[2]))
    for i, q in enumerate(nodes, start=1):
        q.node_id = i
    return nodes


def _nearest_region(lab: np.ndarray, region_mask: np.ndarray, node: np.ndarray) -> str:
    if not region_mask.any():
        return "NA"
    _, (kk, jj, ii) = ndimage.distance_transform_edt(~region_mask, return_indices=True)
    k, j, i = (int(round(x)) for x in np.argwhere(node).mean(0))
    return C.REGION_CODE[int(lab[kk[k, j, i], jj[k, j, i], ii[k, j, i]])]


def criteria(node: Node, post_treatment: bool) -> dict:
    size_pos, rule = size_criterion(node.short_axis_mm, node.region, post_treatment)
    irregular = bool(node.border_irregularity >= IRREGULARITY_THRESHOLD)
    het = node.signal_heterogeneity
    heterogeneous = bool(np.isfinite(het) and het >= HETEROGENEITY_THRESHOLD)
    n_features = int(irregular) + int(heterogeneous)
    return {
        "size_positive": bool(size_pos), "size_rule": rule,
        "irregular_border": irregular, "heterogeneous_signal": heterogeneous,
        "malignant_features": n_features,
        "criteria_positive": bool(size_pos or n_features >= C.MALIGNANT_FEATURES_NEEDED),
    }


def patient_status(nodes: list[Node]) -> str:
    return "positive" if any(n.dl_status == "positive" for n in nodes) else "negative"
