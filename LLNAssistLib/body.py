"""The patient's body on an axial T2WI: mask and crop box (numpy/scipy only).

Kept apart from model/preprocess.py (which needs torch) because the measurement and editing paths
use it too, and those run in Slicer's GUI process, where torch may not be installed yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Crop:
    j0: int
    j1: int
    i0: int
    i1: int


def body_mask(arr: np.ndarray) -> np.ndarray:
    """Voxels inside the body: above a fraction of a high percentile, largest component, holes filled."""
    a = arr.astype(np.float32)
    hi = float(np.percentile(a, 99.0))
    if hi <= 0:
        return np.zeros(a.shape, bool)
    m = a > 0.2 * hi
    lab, n = ndimage.label(m)
    if n > 1:
        sizes = ndimage.sum_labels(m, lab, index=np.arange(1, n + 1))
        m = lab == (1 + int(np.argmax(sizes)))
    # Fill each slice's holes (dark bone cortex, flow voids, muscle lie inside the body).
    return np.stack([ndimage.binary_fill_holes(s) for s in m])


def body_crop(mask: np.ndarray, spacing_ij: tuple, margin_mm: float = 6.0) -> Crop:
    nz, ny, nx = mask.shape
    if not mask.any():
        return Crop(0, ny, 0, nx)
    proj = mask.any(0)
    jj = np.flatnonzero(proj.any(1))
    ii = np.flatnonzero(proj.any(0))
    mi = int(np.ceil(margin_mm / spacing_ij[0]))
    mj = int(np.ceil(margin_mm / spacing_ij[1]))
    return Crop(max(0, jj[0] - mj), min(ny, jj[-1] + 1 + mj), max(0, ii[0] - mi), min(nx, ii[-1] + 1 + mi))
