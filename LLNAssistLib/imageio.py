"""Volumes in and out with their physical geometry kept exactly; geometry helpers.

Images are carried as SimpleITK images (LPS physical space, as ITK and DICOM); users see RAS.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .errors import InputError

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd")
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def _describe(path: Path) -> str:
    return str(path)


def read_image(path: str | os.PathLike, series: Optional[str] = None, kind: str = "image") -> sitk.Image:
    """Reads a 3D volume (NIfTI, NRRD, MHA), or the axial T2 series of a DICOM folder, DICOMDIR or
    study .zip (dicomseries.py); raises InputError if unusable."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{kind} {_describe(path)} does not exist; check the path")
    from .dicomseries import is_dicom_input, open_series

    if is_dicom_input(path):
        img = open_series(path, series)[2]  # the series chosen by what its headers mean
    else:
        if path.stat().st_size == 0:
            raise InputError(f"{kind} {_describe(path)} is empty (0 bytes); give a NIfTI, NRRD, MHA file "
                             "or a DICOM series folder")
        try:
            with quiet_native_output(2):
                reader = sitk.ImageFileReader()
                reader.SetFileName(str(path))
                reader.ReadImageInformation()
                img = reader.Execute()
        except RuntimeError:
            raise InputError(f"cannot read {kind} {_describe(path)}: not a readable NIfTI/NRRD/MHA volume "
                             "(wrong format, truncated or corrupt); export it again") from None
        _check_complete(path, img, kind)
    return check_volume(img, str(path), kind)


@contextlib.contextmanager
def quiet_native_output(fd: int = 2):
    """Silences what native libraries print on a file descriptor (ITK/MetaIO on stderr for bad
    files, where the user gets our one-line error; VTK's zip writer on stdout for every file)."""
    try:
        import sys

        (sys.stdout if fd == 1 else sys.stderr).flush()
        saved = os.dup(fd)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _check_complete(path: Path, img: sitk.Image, kind: str) -> None:
    """NIfTI payload checks that ITK skips: a truncated .nii.gz reads as zero-filled, and NaN/Inf
    voxels are silently replaced by 0. Both would give a wrong analysis instead of an error."""
    import gzip
    import zlib

    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, zlib.error):
        data = b""
    nbytes = img.GetNumberOfPixels() * img.GetNumberOfComponentsPerPixel() * img.GetSizeOfPixelComponent()
    if len(data) < 348 + nbytes:
        raise InputError(f"{kind} {path} is truncated or corrupt (its data ends early); copy or export it again")
    endian = "<" if int.from_bytes(data[0:4], "little") == 348 else ">"
    datatype = int(np.frombuffer(data[70:72], dtype=endian + "i2")[0])
    offset = int(np.frombuffer(data[108:112], dtype=endian + "f4")[0])
    floats = {16: "f4", 64: "f8"}  # NIfTI DT_FLOAT32, DT_FLOAT64
    if datatype in floats and offset >= 348:
        payload = np.frombuffer(data, dtype=endian + floats[datatype], offset=offset,
                                count=img.GetNumberOfPixels() * img.GetNumberOfComponentsPerPixel())
        bad = int((~np.isfinite(payload)).sum())
        if bad:
            raise InputError(f"{kind} {path} has {bad} non-finite voxels (NaN/Inf); fix or mask them before analysis")


def check_volume(img: sitk.Image, name: str, kind: str = "image") -> sitk.Image:
    dim = img.GetDimension()
    if dim == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
        dim = 3
    if dim != 3:
        raise InputError(f"{kind} {name} is {dim}D {tuple(img.GetSize())}; LLNAssist needs one 3D axial "
                         "volume (extract a single 3D volume first)")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{kind} {name} has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "give a scalar (grey-level) volume")
    if min(img.GetSize()) < 2:
        raise InputError(f"{kind} {name} has size {tuple(img.GetSize())}: a single slice is 2D; give a 3D volume")
    arr = sitk.GetArrayViewFromImage(img)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise InputError(f"{kind} {name} has {n} non-finite voxels (NaN/Inf); fix or mask them before analysis")
    return img


def write_image(img: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), compress)


# --- geometry --------------------------------------------------------------------------------------
def direction_matrix(img: sitk.Image) -> np.ndarray:
    return np.array(img.GetDirection(), dtype=float).reshape(3, 3)


def index_to_lps(img: sitk.Image, ijk: np.ndarray) -> np.ndarray:
    """Continuous (i, j, k) indices (N x 3, ITK order) to LPS millimetres."""
    ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
    d = direction_matrix(img)
    sp = np.array(img.GetSpacing(), dtype=float)
    return np.asarray(img.GetOrigin(), dtype=float) + (ijk * sp) @ d.T


def index_to_ras(img: sitk.Image, ijk: np.ndarray) -> np.ndarray:
    return index_to_lps(img, ijk) * LPS_TO_RAS


def ras_to_index(img: sitk.Image, ras: np.ndarray) -> np.ndarray:
    lps = np.atleast_2d(np.asarray(ras, dtype=float)) * LPS_TO_RAS
    d = direction_matrix(img)
    sp = np.array(img.GetSpacing(), dtype=float)
    return ((lps - np.asarray(img.GetOrigin())) @ d) / sp


def same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=tol, atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=tol, atol=tol * 10)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def slice_axis(img: sitk.Image) -> int:
    """ITK axis (0, 1, 2) whose direction is closest to superior-inferior: the acquired slice axis."""
    d = direction_matrix(img)
    return int(np.argmax(np.abs(d[2, :])))


def to_axial_canonical(img: sitk.Image) -> sitk.Image:
    """Permutes/flips axes (no resampling) so i runs towards patient left, j posterior, k superior
    (closest LPS order): the acquired axial slices are then k = const. Every voxel keeps its physical
    position; an oblique tilt is kept."""
    return sitk.DICOMOrient(img, "LPS")


def from_canonical(arr: np.ndarray, canon: sitk.Image, original: sitk.Image) -> sitk.Image:
    """An array on the canonical grid (see to_axial_canonical) back on the original image's grid."""
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(canon)
    orient = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(original.GetDirection())
    out = sitk.DICOMOrient(img, orient)
    out.CopyInformation(original)
    return out


def ijk_to_lps_matrix(img: sitk.Image) -> np.ndarray:
    """4x4 homogeneous matrix from (i, j, k) to LPS millimetres."""
    m = np.eye(4)
    m[:3, :3] = direction_matrix(img) * np.array(img.GetSpacing())[None, :]
    m[:3, 3] = img.GetOrigin()
    return m
