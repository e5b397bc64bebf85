"""Geometry is kept exactly through every reader and the canonical reorientation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from LLNAssistLib.errors import InputError
from LLNAssistLib.imageio import from_canonical, index_to_ras, read_image, slice_axis, to_axial_canonical


def oblique(deg=14.0):
    axis = np.array([0.5, -0.3, 0.8])
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(deg)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def volume(direction=None, shape=(12, 40, 30)):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 3000, size=shape).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.55, 0.8, 3.6))
    img.SetOrigin((-101.25, 37.5, -12.0))
    img.SetDirection(tuple((oblique() if direction is None else direction).ravel()))
    return img, arr


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_file_round_trip_keeps_geometry_and_values(tmp_path, suffix):
    img, arr = volume()
    sitk.WriteImage(img, str(tmp_path / f"v{suffix}"))
    back = read_image(tmp_path / f"v{suffix}")
    assert np.array_equal(sitk.GetArrayFromImage(back), arr)
    tol = 1e-5 if suffix.startswith(".nii") else 1e-9  # NIfTI stores float32 geometry
    assert np.allclose(back.GetSpacing(), img.GetSpacing(), atol=tol)
    assert np.allclose(back.GetOrigin(), img.GetOrigin(), atol=tol * 100)
    assert np.allclose(back.GetDirection(), img.GetDirection(), atol=tol)


def test_canonical_round_trip_of_a_permuted_volume():
    # slices stored along the first axis: direction columns permuted (i is superior)
    d = oblique()[:, [2, 0, 1]]
    img, arr = volume(direction=d)
    assert slice_axis(img) == 0
    canon = to_axial_canonical(img)
    assert slice_axis(canon) == 2
    # every voxel keeps its physical position
    p0 = img.TransformIndexToPhysicalPoint((3, 5, 7))
    idx = canon.TransformPhysicalPointToIndex(p0)
    assert canon[idx] == img[3, 5, 7]
    back = from_canonical(sitk.GetArrayFromImage(canon), canon, img)
    assert np.array_equal(sitk.GetArrayFromImage(back), arr)
    assert back.GetDirection() == img.GetDirection() and back.GetOrigin() == img.GetOrigin()


def test_index_to_ras_matches_itk():
    img, _ = volume()
    ijk = np.array([[0, 0, 0], [3.5, 7.25, 2.0], [29, 39, 11]])
    ras = index_to_ras(img, ijk)
    for row, r in zip(ijk, ras):
        lps = img.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in row))
        assert np.allclose(r, [-lps[0], -lps[1], lps[2]], atol=1e-9)


def write_dicom_series(folder, img, description, uid, orientation_axial=True):
    folder.mkdir(parents=True, exist_ok=True)
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    d = np.array(img.GetDirection()).reshape(3, 3)
    for k in range(img.GetSize()[2]):
        s = img[:, :, k]
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "MR", "0008|103e": description, "0020|000e": uid, "0020|000d": "1.2.826.0.1.3680043.8.498.1",
            "0008|0018": f"{uid}.{k + 1}", "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in pos),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*d[:, 0], *d[:, 1])),
            "0028|0030": f"{img.GetSpacing()[1]:.6f}\\{img.GetSpacing()[0]:.6f}",
            "0018|0050": f"{img.GetSpacing()[2]:.6f}",
        }
        for key, val in tags.items():
            s.SetMetaData(key, val)
        w.SetFileName(str(folder / f"{uid[-3:]}_{k:03d}.dcm"))
        w.Execute(s)


def test_dicom_folder_picks_the_axial_t2_series(tmp_path):
    img, arr = volume(direction=oblique(8.0))
    other, _ = volume(direction=oblique(8.0), shape=(6, 40, 30))
    write_dicom_series(tmp_path / "study", img, "T2 TSE AX", "1.2.826.0.1.3680043.8.498.101")
    write_dicom_series(tmp_path / "study", other, "DWI b800", "1.2.826.0.1.3680043.8.498.202")
    got = read_image(tmp_path / "study")
    assert got.GetSize() == img.GetSize()
    assert np.array_equal(sitk.GetArrayFromImage(got), arr)
    assert np.allclose(got.GetSpacing(), img.GetSpacing(), atol=1e-4)
    assert np.allclose(got.GetDirection(), img.GetDirection(), atol=1e-5)
    assert np.allclose(got.GetOrigin(), img.GetOrigin(), atol=1e-3)
    # the option chooses another series
    chosen = read_image(tmp_path / "study", series="1.2.826.0.1.3680043.8.498.202")
    assert chosen.GetSize() == other.GetSize()
    with pytest.raises(InputError, match="not in"):
        read_image(tmp_path / "study", series="9.9.9")


def test_dicom_folder_with_two_axial_t2_series_asks_to_choose(tmp_path):
    img, _ = volume(direction=np.eye(3))
    write_dicom_series(tmp_path / "s", img, "T2 AX", "1.2.826.0.1.3680043.8.498.301")
    write_dicom_series(tmp_path / "s", img, "T2 AX repeat", "1.2.826.0.1.3680043.8.498.302")
    with pytest.raises(InputError, match="--series"):
        read_image(tmp_path / "s")
