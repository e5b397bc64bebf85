"""The image to analyse and what it is: a volume file, or the chosen series of a DICOM folder,
DICOMDIR or study .zip, with the facts the report and summary name (series, study date,
pseudonymous patient reference, the file's sha256)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import SimpleITK as sitk

from .errors import InputError


@dataclass
class LoadedInput:
    image: sitk.Image
    source: dict  # summary.json "source"
    modality: Optional[str] = None
    suggestion: str = ""  # a better series in the same study, for the gate's message
    instance_numbers: list = field(default_factory=list)  # per acquired slice, in the image's k order
    dicom_headers: list = field(default_factory=list)  # the series' headers in the image's k order (SEG/SR)


def _date(text) -> Optional[str]:
    t = str(text or "").strip()
    return f"{t[:4]}-{t[4:6]}-{t[6:8]}" if len(t) == 8 and t.isdigit() else (t or None)


def load(path: str | os.PathLike, series: Optional[str] = None, patient_name: bool = False) -> LoadedInput:
    """Reads the input; for DICOM, chooses the series (dicomseries.choose) and describes it."""
    from . import dicomseries, identity
    from .imageio import check_volume, read_image

    path = Path(path)
    if not path.exists():
        raise InputError(f"image {path} does not exist; check the path")
    if not dicomseries.is_dicom_input(path):
        if series:
            raise InputError(f"--series applies to DICOM folders, and {path.name} is a single volume file; drop it")
        image = read_image(path)
        from .model.manifest import sha256_file

        return LoadedInput(image, {"kind": "file", "file": path.name, "sha256": sha256_file(path)})
    sel, all_series, image = dicomseries.open_series(path, series)
    image = check_volume(image, sel.series.label)
    h = sel.series.headers
    source = {"kind": "dicom", "folder": path.name, **sel.record(),
              "patient_reference": identity.pseudonym(h.get("PatientID"))}
    if patient_name:
        source["patient_name"] = str(h.get("PatientName") or "") or None
        source["patient_id"] = str(h.get("PatientID") or "") or None
    source["study_date"] = _date(h.get("StudyDate"))
    suggestion = "" if sel.series.plane == "axial" else dicomseries.axial_suggestion(all_series)
    from .dicom_out import read_headers

    return LoadedInput(image, source, sel.series.modality, suggestion, list(sel.series.instance_numbers),
                       read_headers(sel.series.files))
