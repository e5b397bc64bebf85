"""Long/short axis against analytic shapes: rotated ellipses, non-square pixels, oblique geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from LLNAssistLib.measure import node_axes, slice_axes


def ellipse_mask(shape, spacing_xy, a_mm, b_mm, angle, centre_px=None):
    ny, nx = shape
    sx, sy = spacing_xy
    cy, cx = centre_px if centre_px else ((ny - 1) / 2 + 0.3, (nx - 1) / 2 - 0.2)
    y, x = np.mgrid[0:ny, 0:nx]
    X, Y = (x - cx) * sx, (y - cy) * sy
    u = X * math.cos(angle) + Y * math.sin(angle)
    v = -X * math.sin(angle) + Y * math.cos(angle)
    return (u / a_mm) ** 2 + (v / b_mm) ** 2 <= 1


@pytest.mark.parametrize("angle_deg", [0, 17, 45, 73, 120])
@pytest.mark.parametrize("spacing", [(0.5, 0.5), (0.4, 0.7), (0.8, 0.55)])
def test_rotated_ellipse_axes_match_analytic_diameters(angle_deg, spacing):
    a, b = 7.0, 4.0  # semi-axes: long 14 mm, short 8 mm
    m = ellipse_mask((160, 160), spacing, a, b, math.radians(angle_deg))
    ax = slice_axes(m, spacing)
    tol = math.hypot(*spacing)  # digitisation: within one pixel diagonal
    assert ax.long_mm == pytest.approx(2 * a, abs=tol)
    assert ax.short_mm == pytest.approx(2 * b, abs=tol)
    # the long axis direction follows the ellipse's major axis (mod 180 deg)
    d = (ax.long_ends[1] - ax.long_ends[0]) * np.array(spacing)
    got = math.degrees(math.atan2(d[1], d[0])) % 180
    diff = min(abs(got - angle_deg % 180), 180 - abs(got - angle_deg % 180))
    assert diff < 10  # a digitised outline lets the Feret pair tilt a few degrees


def test_short_axis_is_perpendicular_chord_not_caliper_width():
    # An L-shaped (concave) region: longest perpendicular chord is shorter than the caliper width.
    m = np.zeros((100, 100), bool)
    m[20:80, 20:30] = True  # vertical bar 60 x 10 px
    m[70:80, 20:60] = True  # foot 10 x 40 px
    ax = slice_axes(m, (1.0, 1.0))
    d = ax.short_ends[1] - ax.short_ends[0]
    l_ = ax.long_ends[1] - ax.long_ends[0]
    assert abs(np.dot(d, l_)) / (np.linalg.norm(d) * np.linalg.norm(l_)) < 0.02
    assert ax.long_mm == pytest.approx(math.hypot(60, 40), abs=1.5)
    # both chord ends lie on the outline: the midpoint of the chord lies in or next to the mask
    mid = np.round(ax.short_ends.mean(0)).astype(int)
    assert m[max(mid[1] - 1, 0):mid[1] + 2, max(mid[0] - 1, 0):mid[0] + 2].any()


def test_ellipsoid_key_slice_is_the_widest_and_volume_is_analytic():
    sx, sy, sz = 0.6, 0.6, 3.0
    a, b, c = 6.0, 4.5, 5.0  # semi-axes mm (in-plane long/short, through-plane)
    nz, ny, nx = 9, 80, 80
    z = (np.arange(nz) - (nz - 1) / 2) * sz
    y, x = np.mgrid[0:ny, 0:nx]
    X, Y = (x - 39.5) * sx, (y - 39.5) * sy
    m = np.stack([(X / a) ** 2 + (Y / b) ** 2 <= 1 - (zz / c) ** 2 for zz in z])
    ax = node_axes(m, (sx, sy, sz))
    assert ax.key_slice == nz // 2
    assert ax.short_axis_mm == pytest.approx(2 * b, abs=math.hypot(sx, sy))
    assert ax.long_axis_mm == pytest.approx(2 * a, abs=math.hypot(sx, sy))
    # volume of the voxelised ellipsoid with 3 mm slices: the disc-stack integral, not 4/3 pi abc
    disc = sum(math.pi * a * b * max(0.0, 1 - (zz / c) ** 2) * sz for zz in z)
    assert ax.volume_mm3 == pytest.approx(disc, rel=0.03)


def test_measure_cli_on_oblique_anisotropic_file(tmp_path):
    from conftest import run_cli

    sx, sy, sz = 0.45, 0.7, 3.5
    ny, nx, nz = 120, 90, 5
    y, x = np.mgrid[0:ny, 0:nx]
    X, Y = (x - 44.5) * sx, (y - 59.5) * sy
    lab = np.zeros((nz, ny, nx), np.uint8)
    ang = math.radians(30)
    u, v = X * math.cos(ang) + Y * math.sin(ang), -X * math.sin(ang) + Y * math.cos(ang)
    lab[2][(u / 9.0) ** 2 + (v / 5.0) ** 2 <= 1] = 4  # 18 x 10 mm ellipse on one slice
    lab[1][(X + 8) ** 2 + (Y - 15) ** 2 <= 3.0 ** 2] = 5  # 6 mm disc
    img = sitk.GetImageFromArray(lab)
    img.SetSpacing((sx, sy, sz))
    # oblique: 20 degrees about an axis tilted from S
    axis = np.array([0.3, 0.2, 0.93])
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(3) + math.sin(0.35) * k + (1 - math.cos(0.35)) * k @ k
    img.SetDirection(tuple(r.ravel()))
    img.SetOrigin((12.0, -40.0, 80.0))
    sitk.WriteImage(img, str(tmp_path / "lab.nrrd"))
    p = run_cli("measure", tmp_path / "lab.nrrd", "--out", tmp_path / "m.csv", check_rc=0)
    rows = [ln.split(",") for ln in (tmp_path / "m.csv").read_text(encoding="utf-8").strip().splitlines()]
    assert rows[0] == ["label", "short_axis_mm", "long_axis_mm", "volume_mm3"]
    got = {int(r[0]): [float(v) for v in r[1:]] for r in rows[1:]}
    tol = math.hypot(sx, sy)
    assert got[4][0] == pytest.approx(10.0, abs=tol) and got[4][1] == pytest.approx(18.0, abs=tol)
    assert got[5][0] == pytest.approx(6.0, abs=tol) and got[5][1] == pytest.approx(6.0, abs=tol)
    assert got[4][2] == pytest.approx((lab == 4).sum() * sx * sy * sz)
    assert p.stderr == ""
