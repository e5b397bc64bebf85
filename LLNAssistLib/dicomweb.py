"""A PACS over DICOMweb: pull a study (QIDO-RS lists its series, WADO-RS retrieves them), analyse it
as a DICOM folder (the series is chosen as for folders), and store the SEG and SR back (STOW-RS) into
the same study.

Credentials never come from the command line (they would sit in the shell history and the process
list): LLNASSIST_DICOMWEB_USER and LLNASSIST_DICOMWEB_PASSWORD, or a netrc file
(LLNASSIST_NETRC, default ~/.netrc) with a `machine HOST login USER password PASS` line. TLS is
verified (LLNASSIST_DICOMWEB_CA names a CA bundle for a hospital's own certificate authority).
Connection failures, timeouts and 5xx answers are retried with back-off; 401/403/404 are not, and
each becomes one line saying what to do. SEG and SR go in one STOW request, so the PACS receives both
or neither; what it answered is reported.
"""

from __future__ import annotations

import json
import netrc
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlparse

from .errors import InputError

RETRIES = 3
BACKOFF_S = 0.5
TIMEOUT_S = 60.0
MR = "MR"


def _credentials(url: str) -> Optional[tuple]:
    user, password = os.environ.get("LLNASSIST_DICOMWEB_USER"), os.environ.get("LLNASSIST_DICOMWEB_PASSWORD")
    if user:
        return user, password or ""
    path = Path(os.environ.get("LLNASSIST_NETRC") or Path.home() / ".netrc")
    if not path.is_file():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(urlparse(url).hostname or "")
    except (netrc.NetrcParseError, OSError) as exc:
        raise InputError(f"cannot read the credentials file {path}: {exc}; fix it or set "
                         "LLNASSIST_DICOMWEB_USER and LLNASSIST_DICOMWEB_PASSWORD") from None
    return (entry[0], entry[2] or "") if entry else None


def connect(url: str, timeout: float = TIMEOUT_S):
    """A DICOMweb client for `url` with the environment's credentials and verified TLS."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InputError(f"--dicomweb {url!r} is not an http(s) URL; give the DICOMweb root, e.g. "
                         "https://pacs.example.org/dicom-web")
    if parsed.username or parsed.password:
        raise InputError("--dicomweb: credentials in the URL are refused (they end up in the shell history); use "
                         "LLNASSIST_DICOMWEB_USER/LLNASSIST_DICOMWEB_PASSWORD or a netrc file")
    session = requests.Session()
    creds = _credentials(url)
    if creds:
        session.auth = creds
    session.verify = os.environ.get("LLNASSIST_DICOMWEB_CA") or True
    return DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout)


def _call(what: str, fn: Callable, url: str):
    """fn() with retries on connection failures, timeouts and 5xx; one clear error otherwise."""
    import requests

    delay = BACKOFF_S
    for attempt in range(1, RETRIES + 1):
        try:
            return fn()
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code in (401, 403):
                raise InputError(f"the PACS at {url} refused the credentials ({code}) while trying to {what}; check "
                                 "LLNASSIST_DICOMWEB_USER/PASSWORD or the netrc entry for this host") from None
            if code == 404:
                raise InputError(f"the PACS at {url} has no such resource (404) while trying to {what}; check the "
                                 "study UID and the DICOMweb root URL") from None
            if code < 500 or attempt == RETRIES:
                raise InputError(f"the PACS at {url} answered {code} while trying to {what}; try again later or ask "
                                 "its administrator") from None
        except requests.exceptions.SSLError:
            raise InputError(f"the TLS certificate of {url} could not be verified; give the hospital's CA bundle in "
                             "LLNASSIST_DICOMWEB_CA") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            if attempt == RETRIES:
                kind = "timed out" if isinstance(exc, requests.Timeout) else "failed"
                raise InputError(f"the connection to {url} {kind} {RETRIES} times while trying to {what}; check that "
                                 "the PACS is reachable") from None
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def _value(item: dict, tag: str):
    v = item.get(tag, {}).get("Value")
    return v[0] if v else None


def list_series(client, url: str, study_uid: str) -> list:
    """QIDO-RS: the study's series as dicts (uid, modality, number, description)."""
    found = _call("list the study's series", lambda: client.search_for_series(study_instance_uid=study_uid), url)
    if not found:
        raise InputError(f"study {study_uid} is not on the PACS at {url} (no series found); check the study UID")
    return [{"uid": _value(s, "0020000E"), "modality": _value(s, "00080060"), "number": _value(s, "00200011"),
             "description": _value(s, "0008103E")} for s in found]


def find_studies(url: str, query: dict) -> list:
    """QIDO-RS study search (e.g. {"ModalitiesInStudy": "MR", "StudyDate": "20260101-20261231"}): the
    Study Instance UIDs found, all pages."""
    client = connect(url)
    found = _call("search the PACS for studies",
                  lambda: client.search_for_studies(search_filters=query, get_remaining=True), url)
    return [u for u in (_value(s, "0020000D") for s in found) if u]


def pull_study(url: str, study_uid: str, dest: Path, series_uid: Optional[str] = None,
               progress: Callable = lambda *a, **k: None) -> dict:
    """Retrieves the study's MR series (or only `series_uid`) into `dest` (one folder per series).
    Returns what was retrieved; SEG, SR and other non-image series are not fetched."""
    client = connect(url)
    series = list_series(client, url, study_uid)
    if series_uid:
        chosen = [s for s in series if s["uid"] == series_uid]
        if not chosen:
            raise InputError(f"study {study_uid} has no series {series_uid} on the PACS; its series are "
                             + ", ".join(f"{s['number']} {s['description'] or ''}".strip() for s in series))
    else:
        chosen = [s for s in series if s["modality"] == MR]
        if not chosen:
            raise InputError(f"study {study_uid} holds no MR series (modalities: "
                             f"{', '.join(sorted({str(s['modality']) for s in series}))})")
    n = 0
    for i, s in enumerate(chosen):
        datasets = _call(f"retrieve series {s['uid']}", lambda s=s: client.retrieve_series(study_uid, s["uid"]), url)
        folder = dest / f"series_{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k, ds in enumerate(datasets):
            ds.save_as(str(folder / f"{k:05d}.dcm"), enforce_file_format=True)
        n += len(datasets)
        progress("load", (i + 1) / len(chosen), f"retrieved series {i + 1}/{len(chosen)} ({len(datasets)} images)")
    return {"study_instance_uid": study_uid, "series": len(chosen), "instances": n}


def store(url: str, files: list, study_uid: str) -> dict:
    """STOW-RS of `files` in one request into `study_uid`. Returns {stored: [...], failed: [...]}
    (SOP Instance UIDs; an instance the PACS did not acknowledge counts as failed); raises when it
    acknowledged none."""
    import pydicom

    datasets = [pydicom.dcmread(str(f)) for f in files]
    for ds in datasets:
        if str(ds.StudyInstanceUID) != study_uid:
            raise InputError(f"{Path(ds.filename).name} belongs to study {ds.StudyInstanceUID}, not {study_uid}; "
                             "nothing was stored")
    client = connect(url)
    answer = _call("store the SEG and SR", lambda: client.store_instances(datasets, study_instance_uid=study_uid), url)
    sent = [str(ds.SOPInstanceUID) for ds in datasets]
    stored = [str(i.ReferencedSOPInstanceUID) for i in answer.get("ReferencedSOPSequence", [])
              if str(i.ReferencedSOPInstanceUID) in sent]
    if not stored:  # an empty or garbled answer (e.g. a transfer cut short) is no acknowledgement
        raise InputError(f"the PACS at {url} did not confirm storing any of the SEG and SR")
    return {"stored": stored, "failed": [u for u in sent if u not in stored]}


def analyze_study(url: str, study_uid: str, out_dir, opts, series_uid: Optional[str] = None, do_store: bool = False,
                  progress: Callable = lambda *a, **k: None, renderer=None) -> dict:
    """Pull, analyse (outputs published in out_dir as for a folder), and with `do_store` STOW the SEG
    and SR back into the study. Returns the summary with a `dicomweb` record."""
    from .atomic import check_output_folder, write_text
    from .pipeline import analyze
    from .writers import OUTPUT_FILES

    check_output_folder(Path(out_dir), OUTPUT_FILES)  # before the transfer, not after it
    with tempfile.TemporaryDirectory(prefix="llnassist-dicomweb-") as tmp:
        pulled = pull_study(url, study_uid, Path(tmp), series_uid, progress)
        opts.series = opts.series or series_uid
        opts.source_label = f"{url} study {study_uid}"
        summary = analyze(Path(tmp), out_dir, opts, progress=progress, renderer=renderer)
    record = {"url": url, "pulled": pulled, "stored": [], "failed": []}
    if do_store:
        dicom = summary.get("dicom") or {}
        if not dicom.get("written"):
            raise InputError(f"nothing to store: {dicom.get('reason', 'no DICOM outputs were written')}")
        files = [Path(out_dir) / dicom["seg"]["file"], Path(out_dir) / dicom["sr"]["file"]]
        try:
            record.update(store(url, files, study_uid))
        except InputError as exc:
            raise InputError(f"{exc} (the results are in {out_dir}; nothing was stored)") from None
    summary["dicomweb"] = record
    write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")  # what the PACS got
    return summary
