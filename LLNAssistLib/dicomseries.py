"""Which series of a DICOM study to analyse, decided from what the headers mean.

A rectal MRI study holds sagittal and axial T2, T1 before and after contrast, diffusion with its
ADC map, localisers and reformats. LLNAssist reads the axial T2-weighted series:
- orientation from ImageOrientationPatient: axial when the slice normal is within 45 degrees of the
  patient's head-foot axis, so the oblique-axial T2 that rectal protocols acquire (perpendicular
  to the tumour) counts as axial;
- weighting from echo and repetition time: T2 = TE >= 60 ms and TR >= 1500 ms; T1 = TE <= 30 ms
  and TR <= 1000 ms (spin echo, and gradient echo such as VIBE); the description decides only where
  TE/TR are missing or in between ("TSE"/"FSE" name a readout, not a weighting);
- rejected: not MR, localisers, derived/secondary/reformatted images, diffusion and ADC, contrast-
  enhanced series (ContrastBolusAgent, or "post"/"+C"/"Gd" in the description), inversion recovery
  (STIR, FLAIR), single or few slices;
- among several acceptable series the radiologist's choice for the lateral compartments: fat
  suppression last, then the smallest in-plane pixel (the high-resolution small-FOV T2), then the
  smaller field of view, then more slices.

Folders are searched recursively (a DICOMDIR's folder tree included); a .zip of a study is unpacked
into a temporary folder first.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import InputError

AXIAL_MAX_TILT_DEG = 45.0
T2_MIN_TE_MS, T2_MIN_TR_MS = 60.0, 1500.0
T1_MAX_TE_MS, T1_MAX_TR_MS = 30.0, 1000.0
MIN_SLICES = 5

_TAGS = ("Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "ProtocolName", "SequenceName",
         "ImageType", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns",
         "SliceThickness", "EchoTime", "RepetitionTime", "InversionTime", "ScanningSequence", "SequenceVariant",
         "ContrastBolusAgent", "DiffusionBValue", "StudyDate", "StudyInstanceUID", "PatientID", "PatientName",
         "AccessionNumber", "InstanceNumber", "SOPClassUID", "NumberOfFrames")
_CONTRAST_WORDS = re.compile(r"(\bpost\b|\+\s*c\b|\bgd\b|\bgad|contrast|\bce\b|\bdyn|\bdce\b|\bperf)", re.I)
_DIFFUSION_WORDS = re.compile(r"(\bdwi\b|\badc\b|diffusion|\btrace\b|\bb\s*=?\s*\d{2,4}\b|\bep2d_diff)", re.I)
_LOCALISER_WORDS = re.compile(r"(loc|scout|survey|localizer|localiser|tripilot|3-?plane)", re.I)
_FATSAT_WORDS = re.compile(r"(\bfs\b|fat\s*sat|spair|\bspir\b|\bstir\b|dixon|\bfatsup)", re.I)


@dataclass
class Series:
    uid: str
    description: str
    number: Optional[int]
    modality: str
    files: list  # in slice order along the normal
    headers: dict  # first file's values of _TAGS
    instance_numbers: list = field(default_factory=list)  # InstanceNumber of each file, same order
    plane: str = ""
    tilt_deg: float = float("nan")
    weighting: str = ""
    pixel_mm: float = float("nan")
    fov_mm: float = float("nan")
    rejected: list = field(default_factory=list)  # reasons, in words a radiologist uses
    fat_suppressed: bool = False

    @property
    def label(self) -> str:
        num = f"series {self.number}" if self.number is not None else "series"
        return f"{num} '{self.description or 'no description'}'"

    def record(self) -> dict:
        h = self.headers
        return {"series_instance_uid": self.uid, "series_number": self.number, "description": self.description,
                "modality": self.modality, "plane": self.plane, "weighting": self.weighting,
                "pixel_mm": None if math.isnan(self.pixel_mm) else round(self.pixel_mm, 3),
                "field_of_view_mm": None if math.isnan(self.fov_mm) else round(self.fov_mm, 1),
                "n_images": len(self.files), "study_date": h.get("StudyDate") or None,
                "study_instance_uid": h.get("StudyInstanceUID") or None}


def _value(ds, name):
    v = ds.get(name)
    if v is None:
        return None
    v = v.value if hasattr(v, "value") else v
    if name == "PatientName":
        return str(v)
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return [x for x in v]
    return v


def _read_header(path: Path) -> Optional[dict]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=list(_TAGS))
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, KeyError, IndexError):
        return None
    if "SeriesInstanceUID" not in ds:
        return None  # DICOMDIR, presentation states without series... nothing to analyse
    return {t: _value(ds, t) for t in _TAGS}


def _float(v, default=float("nan")) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _unpack_zip(path: Path) -> Path:
    """Unpacks a study .zip safely (no member outside the folder) into a temporary folder."""
    out = Path(tempfile.mkdtemp(prefix="llnassist-zip-"))
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                target = (out / info.filename).resolve()
                if not str(target).startswith(str(out.resolve()) + os.sep) and target != out.resolve():
                    raise InputError(f"{path} holds a file outside its own folder ({info.filename}); "
                                     "unpack it yourself and give the folder")
            z.extractall(out)
    except zipfile.BadZipFile:
        raise InputError(f"{path} is not a readable .zip file; give the unpacked DICOM folder") from None
    return out


def is_dicom_input(path: Path) -> bool:
    """A folder, a DICOMDIR or a .zip: read as a DICOM study (anything else is a volume file)."""
    return path.is_dir() or path.name.upper() == "DICOMDIR" or path.suffix.lower() == ".zip"


def dicom_root(path: Path) -> Path:
    """The folder to search: the folder itself, a DICOMDIR's folder, or an unpacked .zip."""
    if path.is_file() and path.name.upper() == "DICOMDIR":
        return path.parent
    if path.is_file() and path.suffix.lower() == ".zip":
        return _unpack_zip(path)
    return path


def scan(folder: Path) -> list[Series]:
    """Every series below `folder`, from the headers only (no pixel data is read)."""
    by_uid: dict = {}
    for root, _dirs, names in os.walk(folder):
        for name in names:
            if name.upper() == "DICOMDIR":
                continue
            h = _read_header(Path(root) / name)
            if h is None:
                continue
            uid = str(h["SeriesInstanceUID"])
            by_uid.setdefault(uid, []).append((Path(root) / name, h))
    out = []
    for uid, items in by_uid.items():
        h = items[0][1]
        num = h.get("SeriesNumber")
        ordered = _sorted(items)
        s = Series(uid=uid, description=str(h.get("SeriesDescription") or h.get("ProtocolName") or "").strip(),
                   number=int(num) if num not in (None, "") else None, modality=str(h.get("Modality") or ""),
                   files=[str(p) for p, _h in ordered], headers=h,
                   instance_numbers=[int(_float(h2.get("InstanceNumber"), 0)) for _p, h2 in ordered])
        classify(s)
        out.append(s)
    out.sort(key=lambda s: (s.number if s.number is not None else 10 ** 9, s.uid))
    return out


def _normal(h: dict) -> Optional[np.ndarray]:
    iop = h.get("ImageOrientationPatient")
    try:
        v = np.array([float(x) for x in iop], float)
    except (TypeError, ValueError):
        return None
    if v.size != 6:
        return None
    n = np.cross(v[:3], v[3:])
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else None


def _sorted(items: list) -> list:
    """(path, header) in slice order along the normal (InstanceNumber where positions are missing)."""
    n = _normal(items[0][1])

    def key(item):
        path, h = item
        ipp = h.get("ImagePositionPatient")
        if n is not None and ipp is not None:
            try:
                return (0, float(np.dot(n, [float(x) for x in ipp])), 0)
            except (TypeError, ValueError):
                pass
        return (1, 0.0, int(_float(h.get("InstanceNumber"), 0)))

    return sorted(items, key=key)


def plane_of(normal: np.ndarray) -> tuple[str, float]:
    """'axial', 'coronal' or 'sagittal' by the dominant axis of the slice normal, and the tilt in
    degrees from the head-foot axis."""
    tilt = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    plane = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]
    if tilt <= AXIAL_MAX_TILT_DEG:
        plane = "axial"
    return plane, tilt


def weighting(te: float, tr: float, description: str) -> str:
    if not math.isnan(te) and not math.isnan(tr):
        if te >= T2_MIN_TE_MS and tr >= T2_MIN_TR_MS:
            return "T2"
        if te <= T1_MAX_TE_MS and tr <= T1_MAX_TR_MS:
            return "T1"
        if te <= 40.0 and tr >= T2_MIN_TR_MS:
            return "PD"
    d = description.lower()
    if re.search(r"\bt2|t2w|t2_|_t2", d):
        return "T2"
    if re.search(r"\bt1|t1w|t1_|_t1|vibe|lava|thrive|flash", d):
        return "T1"
    return "unknown"


def classify(s: Series) -> None:
    """Fills plane, weighting, resolution and the reasons a series is not an axial T2 to analyse."""
    h = s.headers
    text = " ".join(str(h.get(k) or "") for k in ("SeriesDescription", "ProtocolName", "SequenceName"))
    image_type = [str(x).upper() for x in (h.get("ImageType") or [])]
    ps = h.get("PixelSpacing")
    try:
        s.pixel_mm = float(min(float(x) for x in ps))
        s.fov_mm = max(float(ps[1]) * int(h.get("Columns") or 0), float(ps[0]) * int(h.get("Rows") or 0))
    except (TypeError, ValueError, IndexError):
        pass
    n = _normal(h)
    if n is not None:
        s.plane, s.tilt_deg = plane_of(n)
    te, tr = _float(h.get("EchoTime")), _float(h.get("RepetitionTime"))
    s.weighting = weighting(te, tr, text)
    s.fat_suppressed = bool(_FATSAT_WORDS.search(text))
    why = s.rejected
    if s.modality != "MR":
        why.append(f"{s.modality or 'unknown'} images, not MR")
    if "LOCALIZER" in image_type or _LOCALISER_WORDS.search(text):
        why.append("localiser")
    if image_type and (image_type[0] == "DERIVED" or "SECONDARY" in image_type[:2]
                       or any(t in image_type for t in ("MPR", "REFORMATTED", "PROJECTION IMAGE", "MIP"))):
        why.append("derived or reformatted images")
    b = _float(h.get("DiffusionBValue"), 0.0)
    if any(t in image_type for t in ("ADC", "DIFFUSION", "TRACEW", "TRACE", "EADC", "FA")) or b > 0 \
            or _DIFFUSION_WORDS.search(text):
        why.append("diffusion-weighted or ADC")
    if (str(h.get("ContrastBolusAgent") or "").strip()) or _CONTRAST_WORDS.search(text):
        why.append("contrast-enhanced")
    if _float(h.get("InversionTime"), 0.0) > 0 or "IR" in str(h.get("ScanningSequence") or "").upper().split("\\"):
        why.append("inversion recovery (STIR/FLAIR), not plain T2")
    if _float(h.get("NumberOfFrames"), 1.0) > 1:
        why.append("multi-frame (enhanced) object: export it as single-frame images")
    if len(s.files) < MIN_SLICES:
        why.append(f"only {len(s.files)} image{'s' if len(s.files) != 1 else ''}")
    if n is None:
        why.append("no image orientation")
    elif s.plane != "axial":
        why.append(f"{s.plane}")
    if s.weighting != "T2":
        why.append(f"{s.weighting}-weighted" if s.weighting != "unknown" else "weighting not T2 (TE/TR)")


@dataclass
class Selection:
    series: Series
    rule: str
    candidates: list  # other acceptable series
    rejected: list  # (series, reasons)

    def record(self) -> dict:
        out = self.series.record()
        out["selected_by"] = self.rule
        out["other_series"] = [{"series_number": s.number, "description": s.description,
                                "not_used_because": "; ".join(s.rejected) or "ranked lower"}
                               for s in self.candidates + [r for r in self.rejected]]
        return out


def _rank(s: Series) -> tuple:
    return (s.fat_suppressed, s.pixel_mm if not math.isnan(s.pixel_mm) else 99.0,
            s.fov_mm if not math.isnan(s.fov_mm) else 9999.0, -len(s.files))


def choose(all_series: list[Series], want: Optional[str] = None, where: str = "") -> Selection:
    """The series to analyse; `want` (UID, series number or description) overrides the rules."""
    if not all_series:
        raise InputError(f"{where or 'the input'} holds no readable DICOM series; give a DICOM folder, a DICOMDIR, "
                         "a .zip of a study, or a NIfTI/NRRD/MHA file")
    if want:
        hits = [s for s in all_series if want in (s.uid, s.description, str(s.number))]
        if not hits:
            names = "; ".join(f"{s.label} {s.uid}" for s in all_series)
            raise InputError(f"series {want!r} is not in {where}; available: {names}")
        if len(hits) > 1:
            raise InputError(f"{len(hits)} series match {want!r} in {where}; give the SeriesInstanceUID")
        pick = hits[0]
        return Selection(pick, "chosen with --series", [], [s for s in all_series if s is not pick])
    ok = [s for s in all_series if not s.rejected]
    rejected = [s for s in all_series if s.rejected]
    if not ok:
        found = "; ".join(f"{s.label}: {', '.join(s.rejected)}" for s in all_series)
        raise InputError(f"no axial T2-weighted series in {where} (found {found}); LLNAssist reads the axial "
                         "T2-weighted series of a rectal MRI: add it, or force one with --series UID")
    ok.sort(key=_rank)
    pick = ok[0]
    if len(ok) > 1 and _rank(ok[0]) == _rank(ok[1]):
        names = "; ".join(f"{s.label} {s.uid}" for s in ok if _rank(s) == _rank(pick))
        raise InputError(f"{where} has several equally suitable axial T2 series ({names}); choose one with "
                         "--series UID")
    if len(ok) == 1:
        rule = "the only axial T2-weighted series"
    else:
        other = ok[1]
        if pick.fat_suppressed != other.fat_suppressed:
            rule = f"non-fat-suppressed axial T2 preferred over {other.label}"
        else:
            rule = (f"high-resolution small-FOV axial T2 ({pick.pixel_mm:.2f} mm pixels, {pick.fov_mm:.0f} mm "
                    f"field of view) preferred over {other.label} ({other.pixel_mm:.2f} mm, {other.fov_mm:.0f} mm)")
    return Selection(pick, rule, ok[1:], rejected)


def read_series(s: Series):
    """The chosen series as a SimpleITK volume (files in slice order)."""
    import SimpleITK as sitk

    from .imageio import quiet_native_output

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(s.files)
    try:
        with quiet_native_output(2):
            return reader.Execute()
    except RuntimeError:
        raise InputError(f"cannot read the images of {s.label} ({s.uid}); check the files are complete") from None


def open_series(path: Path, want: Optional[str] = None):
    """(selection, every series found, the chosen series as a volume) for a DICOM folder, a
    DICOMDIR or a study .zip."""
    all_series = scan(dicom_root(path))
    sel = choose(all_series, want, where=str(path))
    return sel, all_series, read_series(sel.series)


def axial_suggestion(all_series: list[Series]) -> str:
    axial = [s for s in all_series if s.plane == "axial" and s.weighting == "T2" and s.modality == "MR"]
    return f"; the axial T2 here is {axial[0].label}, {axial[0].uid}" if axial else ""
