"""The project's own implementation of exactly the radiomics features the scores of Yoo et al. (Sci Rep 2025) use.

For 3D Slicer >= 5.10 (Python 3.12), where PyRadiomics does not build. Definitions follow
PyRadiomics (features named as there) so the score is the same either way; tests compare the two
to 1e-6 relative. Numpy only, vectorised with shifted arrays over the 26-neighbourhood.

Conventions matching PyRadiomics: fixed bin count discretisation of the voxels inside the mask
(numpy histogram edges, last edge + 1, numpy.digitize); 13 GLCM directions at distance 1, symmetric
matrices, absent grey levels and empty directions dropped, features averaged over directions; NGTDM
and GLDM over the 26 neighbours inside the mask (GLDM alpha 0; an NGTDM voxel without such
neighbours counts with a zero difference); shape from voxel-centre coordinates
with the covariance divided by N.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from . import conventions as C

FEATURES = (
    "original_glcm_InverseVariance", "original_glcm_MCC", "original_ngtdm_Coarseness",
    "original_ngtdm_Complexity", "original_shape_Elongation", "original_gldm_DependenceEntropy",
    "original_gldm_LargeDependenceHighGrayLevelEmphasis",
)
_EPS = np.spacing(1)
_HALF = [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dz, dy, dx) > (0, 0, 0)]
_ALL = _HALF + [(-dz, -dy, -dx) for dz, dy, dx in _HALF]


def discretise(values: np.ndarray, bin_count: int = C.RADIOMICS_BIN_COUNT) -> np.ndarray:
    edges = np.histogram(values, bin_count)[1]
    edges[-1] += 1
    return np.digitize(values, edges)


def _neighbour(arr_padded: np.ndarray, off) -> np.ndarray:
    """The padded array shifted so element v holds the value at v + off (unpadded shape)."""
    dz, dy, dx = off
    z, y, x = (s - 2 for s in arr_padded.shape)
    return arr_padded[1 + dz:1 + dz + z, 1 + dy:1 + dy + y, 1 + dx:1 + dx + x]


def _glcm_features(g: np.ndarray, m: np.ndarray, levels: np.ndarray) -> tuple[float, float]:
    ng = int(g.max())
    gp, mp = np.pad(g, 1), np.pad(m, 1)
    iv, mcc = [], []
    lv = levels.astype(float)
    diff = np.abs(lv[:, None] - lv[None, :])
    with np.errstate(divide="ignore"):
        inv_d2 = np.where(diff > 0, 1.0 / diff ** 2, 0.0)
    for off in _HALF:
        both = m & _neighbour(mp, off)
        a = g[both] - 1
        b = _neighbour(gp, off)[both] - 1
        if a.size == 0:
            continue  # empty direction: dropped
        p = np.bincount(a * ng + b, minlength=ng * ng).reshape(ng, ng).astype(float)
        p = p + p.T
        p = p[np.ix_(levels - 1, levels - 1)]
        p /= p.sum()
        iv.append(float((p * inv_d2).sum()))
        if len(levels) < 2:
            mcc.append(1.0)
            continue
        px = p.sum(1)
        py = p.sum(0)
        q = (p / (px[:, None] * py[None, :] + _EPS)) @ p.T
        ev = np.linalg.eigvals(q)
        ev.sort()
        mcc.append(float(np.sqrt(ev[-2]).real))
    return float(np.nanmean(iv)), float(np.nanmean(mcc))


def _neighbour_stats(g: np.ndarray, m: np.ndarray):
    """Per voxel: sum and count of in-mask neighbour grey levels, and the number of equal neighbours."""
    gp, mp = np.pad(g, 1), np.pad(m, 1)
    total = np.zeros(g.shape, float)
    count = np.zeros(g.shape, np.int64)
    same = np.zeros(g.shape, np.int64)
    for off in _ALL:
        nm = _neighbour(mp, off)
        ng_ = _neighbour(gp, off)
        total += np.where(nm, ng_, 0)
        count += nm
        same += nm & (ng_ == g)
    return total, count, same


def _ngtdm_features(g, m, total, count) -> tuple[float, float]:
    # A voxel without in-mask neighbours still counts in n_i, with |i - A_i| taken as 0 (as PyRadiomics).
    gv = g[m]
    cnt = count[m]
    s = np.where(cnt > 0, np.abs(gv - total[m] / np.maximum(cnt, 1)), 0.0)
    ng = int(g.max())
    n_i = np.bincount(gv, minlength=ng + 1)[1:].astype(float)
    s_i = np.bincount(gv, weights=s, minlength=ng + 1)[1:]
    keep = n_i > 0
    n_i, s_i, i = n_i[keep], s_i[keep], np.arange(1, ng + 1, dtype=float)[keep]
    nvp = n_i.sum()
    p_i = n_i / nvp
    ps = p_i * s_i
    sc = ps.sum()
    coarseness = 1.0 / sc if sc != 0 else 1e6
    complexity = float((np.abs(i[:, None] - i[None, :]) * (ps[:, None] + ps[None, :])
                        / (p_i[:, None] + p_i[None, :])).sum() / nvp)
    return float(coarseness), complexity


def _gldm_features(g, m, same) -> tuple[float, float]:
    gv = g[m].astype(np.int64)
    dep = same[m] + 1
    ng, nd = int(gv.max()), 27
    p = np.bincount((gv - 1) * nd + (dep - 1), minlength=ng * nd).reshape(ng, nd).astype(float)
    nz = p.sum()
    pn = p / nz
    entropy = float(-(pn * np.log2(pn + _EPS)).sum())
    i = np.arange(1, ng + 1, dtype=float)[:, None]
    j = np.arange(1, nd + 1, dtype=float)[None, :]
    ldhgle = float((p * i ** 2 * j ** 2).sum() / nz)
    return entropy, ldhgle


def _elongation(m: np.ndarray, spacing_zyx) -> float:
    coords = np.argwhere(m).astype(float) * np.asarray(spacing_zyx, float)[None, :]
    coords -= coords.mean(0)
    coords /= np.sqrt(len(coords))
    ev = np.linalg.eigvals(coords.T @ coords)
    ev[(ev < 0) & (ev > -1e-10)] = 0
    ev.sort()
    if ev[2] == 0:
        return float("nan")
    return float(np.sqrt(ev[1] / ev[2]))


def features(image: sitk.Image, mask: sitk.Image, label: int = 1,
             bin_count: int = C.RADIOMICS_BIN_COUNT) -> dict:
    """The seven features (PyRadiomics names) of the voxels where mask == label."""
    img = sitk.GetArrayFromImage(image).astype(np.float64)
    m = sitk.GetArrayFromImage(mask) == label
    if not m.any():
        raise ValueError("empty mask")
    zz, yy, xx = np.nonzero(m)
    box = (slice(zz.min(), zz.max() + 1), slice(yy.min(), yy.max() + 1), slice(xx.min(), xx.max() + 1))
    m = m[box]
    g = np.zeros(m.shape, np.int64)
    g[m] = discretise(img[box][m], bin_count)
    levels = np.unique(g[m])
    iv, mcc = _glcm_features(g, m, levels)
    total, count, same = _neighbour_stats(g, m)
    coarse, complexity = _ngtdm_features(g, m, total, count)
    entropy, ldhgle = _gldm_features(g, m, same)
    return {
        "original_glcm_InverseVariance": iv, "original_glcm_MCC": mcc,
        "original_ngtdm_Coarseness": coarse, "original_ngtdm_Complexity": complexity,
        "original_shape_Elongation": _elongation(m, image.GetSpacing()[::-1]),
        "original_gldm_DependenceEntropy": entropy,
        "original_gldm_LargeDependenceHighGrayLevelEmphasis": ldhgle,
    }
