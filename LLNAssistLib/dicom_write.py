"""A volume written as a DICOM MR image series (one file per slice, geometry exact), with the
acquisition attributes a protocol folder carries (echo and repetition time, image type, contrast
agent, diffusion b-value). Used to build test and demo protocol folders from phantoms, and as what a
PACS would hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@dataclass
class SeriesSpec:
    description: str
    number: int
    echo_time_ms: Optional[float] = 100.0
    repetition_time_ms: Optional[float] = 4000.0
    inversion_time_ms: Optional[float] = None
    image_type: tuple = ("ORIGINAL", "PRIMARY", "M", "ND")
    contrast_agent: Optional[str] = None
    diffusion_b_value: Optional[float] = None
    scanning_sequence: str = "SE"
    sequence_variant: str = "SK"
    modality: str = "MR"
    extra: dict = field(default_factory=dict)


@dataclass
class StudySpec:
    patient_name: str = "PHANTOM^LLN"
    patient_id: str = "LLNPHANTOM0001"
    birth_date: str = "19600101"
    sex: str = "O"
    study_date: str = "20260101"
    study_time: str = "090000"
    accession: str = "LLN0001"
    study_id: str = "1"
    description: str = "MRI PELVIS RECTUM"
    seed: str = "llnassist"  # UIDs derive from it: the same inputs give the same UIDs


def _uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def study_uid(study: StudySpec) -> str:
    return _uid(study.seed, "study")


def _pixels(arr: np.ndarray) -> tuple:
    """Unsigned 16-bit stored values and the rescale that gives the original values back."""
    a = np.asarray(arr, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    if np.issubdtype(arr.dtype, np.integer) and lo >= 0 and hi <= 65535:
        return a.astype(np.uint16), 0.0, 1.0
    slope = (hi - lo) / 4095.0 if hi > lo else 1.0
    return np.round((a - lo) / slope).astype(np.uint16), lo, slope


def write_mr_series(image: sitk.Image, folder: str | os.PathLike, series: SeriesSpec,
                    study: Optional[StudySpec] = None) -> dict:
    """Writes `image` (any direction) as one file per k-slice into `folder`; returns its UIDs."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    study = study or StudySpec()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = sitk.GetArrayFromImage(image)  # (k, j, i)
    stored, intercept, slope = _pixels(arr)
    d = np.array(image.GetDirection(), float).reshape(3, 3)
    si, sj, sk = image.GetSpacing()
    origin = np.array(image.GetOrigin(), float)
    series_uid = _uid(study.seed, "series", series.number, series.description)
    frame_uid = _uid(study.seed, "frame")
    normal = d[:, 2]
    for k in range(arr.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = _uid(series_uid, k)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.ImageType = list(series.image_type)
        ds.Modality = series.modality
        ds.Manufacturer = "LLNAssist phantom"
        ds.PatientName = study.patient_name
        ds.PatientID = study.patient_id
        ds.PatientBirthDate = study.birth_date
        ds.PatientSex = study.sex
        ds.StudyInstanceUID = study_uid(study)
        ds.StudyDate = study.study_date
        ds.StudyTime = study.study_time
        ds.SeriesDate = study.study_date
        ds.ReferringPhysicianName = ""
        ds.StudyID = study.study_id
        ds.AccessionNumber = study.accession
        ds.StudyDescription = study.description
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series.number
        ds.SeriesDescription = series.description
        ds.ProtocolName = series.description
        ds.BodyPartExamined = "PELVIS"
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + k * sk * normal]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [f"{sj:.8f}", f"{si:.8f}"]  # row spacing (between rows), column spacing
        ds.SliceThickness = f"{sk:.6f}"
        ds.SpacingBetweenSlices = f"{sk:.6f}"
        ds.SliceLocation = f"{float(np.dot(origin + k * sk * normal, normal)):.6f}"
        ds.ScanningSequence = series.scanning_sequence
        ds.SequenceVariant = series.sequence_variant
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        if series.echo_time_ms is not None:
            ds.EchoTime = f"{series.echo_time_ms:g}"
        if series.repetition_time_ms is not None:
            ds.RepetitionTime = f"{series.repetition_time_ms:g}"
        if series.inversion_time_ms is not None:
            ds.InversionTime = f"{series.inversion_time_ms:g}"
        ds.EchoTrainLength = 16
        ds.MagneticFieldStrength = "3"
        if series.contrast_agent:
            ds.ContrastBolusAgent = series.contrast_agent
        if series.diffusion_b_value is not None:
            ds.DiffusionBValue = float(series.diffusion_b_value)
        for key, value in series.extra.items():
            setattr(ds, key, value)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        if (intercept, slope) != (0.0, 1.0):  # float images; MR stores integers otherwise
            ds.RescaleIntercept = f"{intercept:.6g}"
            ds.RescaleSlope = f"{slope:.8g}"
            ds.RescaleType = "US"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        ds.save_as(folder / f"{series.number:03d}_{k + 1:04d}.dcm", enforce_file_format=True)
    return {"series_uid": series_uid, "study_uid": study_uid(study), "frame_of_reference_uid": frame_uid,
            "files": arr.shape[0]}
