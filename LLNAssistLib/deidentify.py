"""Pseudonymised research exports (`--pseudonymize`), after DICOM PS3.15's Basic Application
Confidentiality Profile with the Retain Longitudinal Temporal Information with Modified Dates option.

Everything is derived from the site's key (identity.py: `~/.llnassist/pseudonym.key` or
LLNASSIST_PSEUDONYM_KEY), so the same patient always gets the same replacements and nothing can be
reversed without the key:
- PatientName and PatientID become the patient's pseudonym (LLN-...);
- every date moves back by the same number of days (1-366, per patient), so intervals between a
  patient's studies are kept; times are kept;
- UIDs (study, series, instance, frame of reference) become 2.25 UIDs derived from the original,
  so a SEG made from de-identified headers references the images `llnassist deidentify` writes;
- identifying attributes a pelvic MR series carries (accession number, physicians, institution,
  birth date, age, sex, station, device serial...) and private attributes are removed.
This covers the attributes of the MR series LLNAssist reads and of its own SEG and SR; it is not a
certified de-identification of arbitrary DICOM (burned-in text, free-text descriptions): the site's
data protection officer decides what may leave.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from pathlib import Path
from typing import Optional

from .errors import InputError

# Basic profile actions for the attributes of an MR image series: emptied (Z) or removed (X).
EMPTIED = ("AccessionNumber", "ReferringPhysicianName", "StudyID", "PatientBirthDate", "PatientSex")
REMOVED = ("PatientAge", "PatientSize", "PatientWeight", "PatientAddress", "PatientTelephoneNumbers",
           "OtherPatientIDs", "OtherPatientNames", "OtherPatientIDsSequence", "PatientBirthName",
           "PatientMotherBirthName", "MilitaryRank", "EthnicGroup", "Occupation", "AdditionalPatientHistory",
           "PatientComments", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
           "StationName", "DeviceSerialNumber", "OperatorsName", "PerformingPhysicianName",
           "NameOfPhysiciansReadingStudy", "RequestingPhysician", "PhysiciansOfRecord", "RequestAttributesSequence",
           "ReferencedPatientSequence", "ReferencedStudySequence", "IssuerOfPatientID", "MedicalRecordLocator",
           "RequestedProcedureID", "PerformedProcedureStepID", "ScheduledProcedureStepID", "ContentCreatorName",
           "ImageComments", "StudyComments", "CurrentPatientLocation", "AdmissionID")
DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate",
         "PerformedProcedureStepStartDate")
UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
        "ReferencedSOPInstanceUID", "MediaStorageSOPInstanceUID")
METHOD = "LLNAssist: PS3.15 Basic Application Confidentiality Profile, keyed pseudonyms, dates shifted, UIDs replaced"


def _mac(text: str) -> bytes:
    from .identity import _key

    return hmac.new(_key(), text.encode("utf-8"), hashlib.sha256).digest()


def uid(original: str) -> str:
    """The replacement of a UID: 2.25 and a 128-bit number from the keyed hash of the original."""
    return "2.25." + str(int.from_bytes(_mac(f"uid:{original}")[:16], "big"))


def date_shift_days(patient_id: str) -> int:
    return int.from_bytes(_mac(f"date:{patient_id}")[:4], "big") % 366 + 1


def shift_date(text: Optional[str], days: int) -> Optional[str]:
    t = str(text or "").strip()
    if len(t) != 8 or not t.isdigit():
        return None
    try:
        d = datetime.date(int(t[:4]), int(t[4:6]), int(t[6:]))
    except ValueError:
        return None
    return (d - datetime.timedelta(days=days)).strftime("%Y%m%d")


def patient_pseudonym(patient_id: Optional[str]) -> str:
    from .identity import pseudonym

    return pseudonym(patient_id) or "LLN-UNKNOWN"


def dataset(ds):
    """A de-identified copy of a pydicom dataset (headers or a whole image)."""
    import copy

    out = copy.deepcopy(ds)
    pid = str(ds.get("PatientID", "") or "")
    days = date_shift_days(pid)
    out.PatientName = patient_pseudonym(pid)
    out.PatientID = patient_pseudonym(pid)
    for name in EMPTIED:
        if name in out:
            setattr(out, name, "")
    for name in REMOVED:
        if name in out:
            delattr(out, name)
    for name in DATES:
        if name in out:
            setattr(out, name, shift_date(out.get(name), days) or "")
    out.remove_private_tags()
    _map_uids(out)
    if getattr(out, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in out.file_meta:
        out.file_meta.MediaStorageSOPInstanceUID = uid(str(ds.file_meta.MediaStorageSOPInstanceUID))
    mark(out)
    return out


def _map_uids(ds) -> None:
    """Every instance-identifying UID, also inside sequences (references)."""
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _map_uids(item)
        elif elem.keyword in UIDS and elem.value:
            elem.value = uid(str(elem.value))


def mark(ds) -> None:
    """The attributes that say a dataset was de-identified, and how."""
    from pydicom.dataset import Dataset

    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    ds.DeidentificationMethod = METHOD[:64]
    codes = []
    for value, meaning in (("113100", "Basic Application Confidentiality Profile"),
                           ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")):
        c = Dataset()
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, "DCM", meaning
        codes.append(c)
    ds.DeidentificationMethodCodeSequence = codes


def source_record(source: dict, headers: list) -> dict:
    """summary.json's `source` without identifiers: UIDs replaced, dates shifted, no folder name (it
    can name the patient)."""
    out = dict(source)
    pid = str(headers[0].get("PatientID", "") or "") if headers else ""
    days = date_shift_days(pid) if headers else 0
    out.pop("patient_name", None)
    out.pop("patient_id", None)
    for key in ("folder", "file"):  # a file or folder name can name the patient
        if key in out:
            out[key] = "(pseudonymised)"
    for key in ("series_instance_uid", "study_instance_uid"):
        if out.get(key):
            out[key] = uid(str(out[key]))
    if out.get("study_date"):
        shifted = shift_date(str(out["study_date"]).replace("-", ""), days)
        out["study_date"] = f"{shifted[:4]}-{shifted[4:6]}-{shifted[6:]}" if shifted else None
    for other in out.get("other_series", []) or []:
        if other.get("series_instance_uid"):
            other["series_instance_uid"] = uid(str(other["series_instance_uid"]))
    out["pseudonymized"] = METHOD
    return out


def series_folder(folder, out_dir, series: Optional[str] = None) -> dict:
    """`llnassist deidentify`: the chosen series of a DICOM folder written de-identified (the images a
    pseudonymised SEG and SR reference). Returns what was written."""
    from . import dicomseries
    from .atomic import staged_directory

    path = Path(folder)
    if not path.exists() or not dicomseries.is_dicom_input(path):
        raise InputError(f"{path} is not a DICOM folder, DICOMDIR or .zip")
    sel = dicomseries.choose(dicomseries.scan(dicomseries.dicom_root(path)), series, where=str(path))
    import pydicom

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} is not empty; give a new folder for the de-identified series")
    with staged_directory(out, marker="00001.dcm") as stage:
        for k, f in enumerate(sel.series.files):
            ds = dataset(pydicom.dcmread(str(f)))
            ds.save_as(str(stage / f"{k + 1:05d}.dcm"), enforce_file_format=True)
    return {"series": sel.series.label, "images": len(sel.series.files), "out": str(out)}
