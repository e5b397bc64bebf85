"""Long axis, short axis and volume of a node mask (DESIGN.md definition).

Per acquired slice: the long axis is the largest in-plane diameter (Feret diameter of the node's
sub-voxel contour) and the short axis the longest chord perpendicular to it. The node's axes are
those of the slice whose short axis is largest. In-plane distances use the pixel spacing; direction
cosines are orthonormal, so an oblique plane does not change in-plane lengths, and endpoints are
mapped to RAS with the full geometry.

Arrays are numpy (k, j, i) = (slice, row, column), as SimpleITK's GetArrayFromImage returns them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy.spatial import ConvexHull, QhullError
from skimage.measure import find_contours

_CHORD_SAMPLES = 256


@dataclass
class SliceAxes:
    long_mm: float
    short_mm: float
    long_ends: np.ndarray  # 2 x 2 (i, j) continuous pixel coordinates
    short_ends: np.ndarray


@dataclass
class NodeAxes:
    short_axis_mm: float
    long_axis_mm: float
    volume_mm3: float
    key_slice: int
    # 2 x 3 continuous ITK indices (i, j, k) of the line ends on the key slice.
    short_ends_ijk: np.ndarray = field(repr=False)
    long_ends_ijk: np.ndarray = field(repr=False)


def _contour_segments(mask2d: np.ndarray, sx: float, sy: float) -> list[np.ndarray]:
    """Sub-pixel outlines (0.5 iso-line of the binary mask) in millimetres, (x, y) per point."""
    padded = np.pad(mask2d.astype(np.float32), 1)
    out = []
    for c in find_contours(padded, 0.5):
        rows, cols = c[:, 0] - 1.0, c[:, 1] - 1.0
        out.append(np.column_stack([cols * sx, rows * sy]))
    return out


def _feret(points: np.ndarray) -> tuple[float, np.ndarray]:
    try:
        hull = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):
        hull = points
    d2 = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(-1)
    a, b = np.unravel_index(int(np.argmax(d2)), d2.shape)
    return float(np.sqrt(d2[a, b])), np.stack([hull[a], hull[b]])


def slice_axes(mask2d: np.ndarray, spacing_xy: Sequence[float]) -> Optional[SliceAxes]:
    """Axes of one slice's mask; spacing is (column spacing, row spacing) in mm."""
    if not mask2d.any():
        return None
    sx, sy = float(spacing_xy[0]), float(spacing_xy[1])
    contours = _contour_segments(mask2d, sx, sy)
    pts = np.concatenate(contours)
    long_mm, long_ends = _feret(pts)
    u = (long_ends[1] - long_ends[0]) / max(long_mm, 1e-12)
    n = np.array([-u[1], u[0]])
    # Segments of every outline, in (a along long axis, b across it).
    a1, a2, b1, b2 = [], [], [], []
    for c in contours:
        a, b = c @ u, c @ n
        a1.append(a[:-1]), a2.append(a[1:]), b1.append(b[:-1]), b2.append(b[1:])
    a1, a2, b1, b2 = (np.concatenate(x) for x in (a1, a2, b1, b2))
    lo, hi = min(a1.min(), a2.min()), max(a1.max(), a2.max())
    grid = np.linspace(lo, hi, _CHORD_SAMPLES)[:, None]
    da = a2 - a1
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (grid - a1) / da
    ok = (t >= 0) & (t <= 1) & (np.abs(da) > 1e-12)
    bb = b1 + np.where(ok, t, 0) * (b2 - b1)
    bmax = np.where(ok, bb, -np.inf).max(1)
    bmin = np.where(ok, bb, np.inf).min(1)
    chord = np.where(np.isfinite(bmax) & np.isfinite(bmin), bmax - bmin, 0.0)
    best = int(np.argmax(chord))
    short_mm = float(chord[best])
    a0 = float(grid[best, 0])
    short_ends = np.stack([a0 * u + bmin[best] * n, a0 * u + bmax[best] * n]) if short_mm > 0 else \
        np.stack([long_ends.mean(0)] * 2)
    to_px = np.array([sx, sy])
    return SliceAxes(long_mm, short_mm, long_ends / to_px, short_ends / to_px)


def node_axes(mask: np.ndarray, spacing: Sequence[float]) -> NodeAxes:
    """Axes and volume of a 3D node mask, array (k, j, i), spacing (si, sj, sk) in mm, slices along k."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("empty mask")
    sx, sy, sz = (float(s) for s in spacing)
    best: Optional[tuple[int, SliceAxes]] = None
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        ax = slice_axes(mask[k], (sx, sy))
        if ax is None:
            continue
        if best is None or (ax.short_mm, ax.long_mm) > (best[1].short_mm, best[1].long_mm):
            best = (int(k), ax)
    assert best is not None
    k, ax = best
    kk = np.full((2, 1), float(k))
    return NodeAxes(
        short_axis_mm=ax.short_mm,
        long_axis_mm=ax.long_mm,
        volume_mm3=float(mask.sum()) * sx * sy * sz,
        key_slice=k,
        short_ends_ijk=np.hstack([ax.short_ends, kk]),
        long_ends_ijk=np.hstack([ax.long_ends, kk]),
    )


def measure_labelmap(labels: np.ndarray, spacing: Sequence[float]) -> list[dict]:
    """One row per non-zero label value: label, short_axis_mm, long_axis_mm, volume_mm3."""
    rows = []
    for value in np.unique(labels):
        if value == 0:
            continue
        ax = node_axes(labels == value, spacing)
        rows.append({"label": int(value), "short_axis_mm": ax.short_axis_mm,
                     "long_axis_mm": ax.long_axis_mm, "volume_mm3": ax.volume_mm3})
    return rows
