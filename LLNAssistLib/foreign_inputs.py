"""Inputs the model cannot read, made from phantoms: the same anatomy acquired sagittally or
coronally, as CT-like values, blank and constant volumes. The domain gate's tests and its
calibration (benchmarks/calibrate_domain_gate.py) use them with public non-pelvic images
(PyRadiomics' brain MRI and prostate phantom)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

# Direction matrices (ITK, LPS; columns i, j, k with k the slice normal) of each acquisition plane.
_PLANES = {
    "sagittal": np.column_stack([(0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)]),  # i posterior, j down
    "coronal": np.column_stack([(1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)]),  # i left, j down
}


def acquired_as(image: sitk.Image, plane: str, inplane_mm: float = 0.8, slice_mm: float = 3.6) -> sitk.Image:
    """The volume resampled as a 2D acquisition in another plane (pixels inplane_mm, slices
    slice_mm apart), covering the same physical box."""
    direction = _PLANES[plane]
    size = np.array(image.GetSize())
    corners = np.array([image.TransformIndexToPhysicalPoint([int(c) for c in (x, y, z)])
                        for x in (0, size[0] - 1) for y in (0, size[1] - 1) for z in (0, size[2] - 1)])
    local = corners @ direction  # coordinates along the new axes
    lo, hi = local.min(0), local.max(0)
    spacing = np.array([inplane_mm, inplane_mm, slice_mm])
    new_size = np.maximum(2, np.round((hi - lo) / spacing).astype(int) + 1)
    ref = sitk.Image([int(s) for s in new_size], image.GetPixelID())
    ref.SetSpacing(spacing.tolist())
    ref.SetDirection(direction.ravel().tolist())
    ref.SetOrigin((direction @ lo).tolist())
    return sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, 0.0)


def ct_like(image: sitk.Image) -> sitk.Image:
    """Values as CT Hounsfield units would be: air -1000, soft tissue around 0-100."""
    from .body import body_mask

    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    inside = body_mask(arr)
    hu = np.where(inside, arr / max(float(arr.max()), 1.0) * 200.0 - 100.0, -1000.0).astype(np.int16)
    out = sitk.GetImageFromArray(hu)
    out.CopyInformation(image)
    return out


def filled(image: sitk.Image, value: float) -> sitk.Image:
    """Same geometry, every voxel `value` (0: a blank volume)."""
    out = sitk.Image(image.GetSize(), sitk.sitkInt16)
    out.CopyInformation(image)
    return out + int(value) if value else out
