"""Click-to-segment a lymph node: from one point the reader places inside a node, find the node
within a small box around it, constrained to a plausible node size. Pure SimpleITK/numpy so it
runs the same in Slicer, on the command line and in tests.

On T2-weighted FSE, lateral nodes sit in bright fat and are darker than it; their inside may hold
brighter spots (fatty hilum, mixed signal). So: threshold half-way between the node's level (low
percentile around the click) and the fat's level (high percentile of the box), fill holes, keep
the component under the click on its slice, cut thin bridges to touching vessels or muscle with
an in-plane opening that grows until the node has a plausible size, then follow the node to the
neighbouring slices while it overlaps the slice before.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import InputError
from .imageio import ras_to_index, to_axial_canonical

ROI_HALF_MM = (20.0, 20.0, 12.0)  # x, y, z half-size of the search box
MAX_EXTENT_MM = 30.0  # the largest lateral nodes are ~25-30 mm long axis
MIN_AREA_MM2 = 3.0
NODE_PATCH_MM = 2.5  # radius around the click that samples the node's own level
MAX_OPENING_PX = 5
MIN_SLICE_OVERLAP = 0.3  # fraction of a neighbouring slice's region that must overlap the previous one


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def _component_at(mask: np.ndarray, j: int, i: int, search_px: int) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask)
    if lab[j, i]:
        return lab == lab[j, i]
    # the click may fall on a bright spot of the node: take the nearest component within reach
    dist, (jj, ii) = ndimage.distance_transform_edt(lab == 0, return_indices=True)
    if dist[j, i] > search_px:
        return np.zeros_like(mask)
    return lab == lab[jj[j, i], ii[j, i]]


def _slice_region(dark: np.ndarray, j: int, i: int, spacing: np.ndarray) -> np.ndarray:
    """The node on the clicked slice: the smallest opening radius that gives a plausible size."""
    search = int(np.ceil(NODE_PATCH_MM / spacing[0]))
    for r in range(0, MAX_OPENING_PX + 1):
        opened = ndimage.binary_opening(dark, _disk(r)) if r else dark
        comp = _component_at(opened, j, i, search)
        if not comp.any():
            break
        if r:
            comp = ndimage.binary_dilation(comp, _disk(r)) & dark  # give back the edge the opening took
        jj, ii = np.nonzero(comp)
        extent = max((ii.max() - ii.min() + 1) * spacing[0], (jj.max() - jj.min() + 1) * spacing[1])
        touches = jj.min() == 0 or ii.min() == 0 or jj.max() == dark.shape[0] - 1 or ii.max() == dark.shape[1] - 1
        if extent <= MAX_EXTENT_MM and not touches:
            return comp
    return np.zeros_like(dark)


def segment_at(image: sitk.Image, ras) -> sitk.Image:
    """A uint8 mask (geometry of `image`) of the node around `ras` (R, A, S in mm)."""
    canon = to_axial_canonical(sitk.Cast(image, sitk.sitkFloat32))
    idx = np.round(ras_to_index(canon, np.asarray(ras, float)[None])[0]).astype(int)  # (i, j, k)
    size = np.array(canon.GetSize())
    if np.any(idx < 0) or np.any(idx >= size):
        raise InputError(f"the point R {ras[0]:.1f}, A {ras[1]:.1f}, S {ras[2]:.1f} lies outside the image; "
                         "click inside the node")
    spacing = np.array(canon.GetSpacing())
    half = np.maximum(1, np.round(np.array(ROI_HALF_MM) / spacing)).astype(int)
    lo = np.maximum(idx - half, 0)
    hi = np.minimum(idx + half + 1, size)
    arr = sitk.GetArrayFromImage(canon)[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
    arr = ndimage.gaussian_filter(arr, sigma=(0, 0.7, 0.7))
    k0, j0, i0 = (int(v) for v in (idx - lo)[::-1])
    pr = max(1, int(round(NODE_PATCH_MM / spacing[0])))
    patch = arr[k0, max(0, j0 - pr):j0 + pr + 1, max(0, i0 - pr):i0 + pr + 1]
    node_level = float(np.percentile(patch, 25))
    fat_level = float(np.percentile(arr[k0], 80))
    if fat_level <= node_level * 1.1:
        raise InputError("no node edge found around that point (no brighter fat around it); click inside a node, "
                         "or draw it with the Segment Editor")
    threshold = (node_level + fat_level) / 2
    dark = arr < threshold
    for z in range(dark.shape[0]):
        dark[z] = ndimage.binary_fill_holes(dark[z])
    out = np.zeros(arr.shape, bool)
    out[k0] = _slice_region(dark[k0], j0, i0, spacing)
    if out[k0].sum() * spacing[0] * spacing[1] < MIN_AREA_MM2:
        raise InputError("no lymph node found at that point (nothing of node size darker than the fat around it); "
                         "click inside the node")
    for step in (-1, 1):  # follow the node through neighbouring slices
        prev = out[k0]
        z = k0 + step
        while 0 <= z < arr.shape[0]:
            lab, n = ndimage.label(dark[z] & ndimage.binary_dilation(prev, _disk(2)))
            if n == 0:
                break
            overlaps = ndimage.sum(prev, lab, index=np.arange(1, n + 1))
            best = int(np.argmax(overlaps)) + 1
            cand = _slice_region(dark[z] & (ndimage.binary_dilation(lab == best, _disk(1))), *(
                np.argwhere(lab == best).mean(0).round().astype(int)), spacing)
            grows_too_much = cand.sum() > 1.5 * prev.sum() + 10
            if not cand.any() or (cand & prev).sum() < MIN_SLICE_OVERLAP * cand.sum() or grows_too_much:
                break
            out[z] = cand
            prev = cand
            z += step
    full = np.zeros(sitk.GetArrayViewFromImage(canon).shape, np.uint8)
    full[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = out
    res = sitk.GetImageFromArray(full)
    res.CopyInformation(canon)
    # back to the input's grid (the canonical image is a permutation/flip of it)
    return sitk.Resample(res, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
