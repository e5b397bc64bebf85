"""Array-level preprocessing shared by training and inference (numpy/torch only, no SimpleITK).

Arrays are (k, j, i) with slices along k. The model sees in-plane resampled slices at the model's
pixel spacing, z-scored over the body, as 2.5D stacks (the slice and its two neighbours).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..body import body_crop, body_mask


def normalise(arr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    vals = arr[mask] if mask.any() else arr.ravel()
    vals = vals.astype(np.float64)
    mu, sd = float(vals.mean()), float(vals.std())
    out = (arr.astype(np.float32) - mu) / max(sd, 1e-6)
    return np.clip(out, -5, 5)


def inplane_shape(shape_ji: tuple, spacing_ij: tuple, target: float) -> tuple:
    ny, nx = shape_ji
    return (max(8, int(round(ny * spacing_ij[1] / target))), max(8, int(round(nx * spacing_ij[0] / target))))


def resample_inplane(vol: torch.Tensor, out_hw: tuple, labels: bool = False) -> torch.Tensor:
    """(Z, H, W) or (Z, C, H, W) tensor to a new in-plane size; nearest for labels, bilinear otherwise."""
    x = vol if vol.dim() == 4 else vol[:, None]
    if labels:
        y = F.interpolate(x.float(), size=out_hw, mode="nearest-exact").to(vol.dtype)
    else:
        y = F.interpolate(x.float(), size=out_hw, mode="bilinear", align_corners=False)
    return y if vol.dim() == 4 else y[:, 0]


def stack25d(vol: torch.Tensor, context: int = 1) -> torch.Tensor:
    """(Z, H, W) -> (Z, 2*context+1, H, W): each slice with its neighbours (edges replicated)."""
    z = vol.shape[0]
    idx = torch.arange(z)[:, None] + torch.arange(-context, context + 1)[None, :]
    idx = idx.clamp(0, z - 1)
    return vol[idx]


def prepare(arr: np.ndarray, spacing: tuple, target_spacing: float):
    """Image array (k, j, i) -> (normalised resampled tensor (Z, H', W'), crop, crop shape)."""
    mask = body_mask(arr)
    crop = body_crop(mask, spacing[:2])
    sub = arr[:, crop.j0:crop.j1, crop.i0:crop.i1]
    norm = normalise(sub, mask[:, crop.j0:crop.j1, crop.i0:crop.i1])
    out_hw = inplane_shape(sub.shape[1:], spacing[:2], target_spacing)
    t = resample_inplane(torch.from_numpy(norm), out_hw)
    return t, crop, sub.shape
