"""Pseudonymous patient references for reports and summaries.

The reference is an HMAC-SHA256 of the DICOM PatientID under a key kept on this machine
(`~/.llnassist/pseudonym.key`, made on first use, readable by the user only; `LLNASSIST_PSEUDONYM_KEY`
names another file, e.g. one shared by a site). The same patient gets the same reference on every
analysis with the same key; without the key nobody can go back from it to the PatientID (a bare
hash of a numeric hospital number could be reversed by trying every number).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Optional

from .errors import InputError


def key_path() -> Path:
    env = os.environ.get("LLNASSIST_PSEUDONYM_KEY")
    return Path(env) if env else Path.home() / ".llnassist" / "pseudonym.key"


def _key() -> bytes:
    path = key_path()
    if not path.exists():
        from .atomic import write_bytes

        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, secrets.token_bytes(32))
        try:
            os.chmod(path, 0o600)
        except OSError:
            pass
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the pseudonym key {path}: {exc.strerror}; check its permissions or set "
                         "LLNASSIST_PSEUDONYM_KEY to a readable key file") from None
    if len(key) < 16:
        raise InputError(f"pseudonym key {path} is shorter than 16 bytes; replace it with a random key")
    return key


def pseudonym(patient_id: Optional[str]) -> Optional[str]:
    """'LLN-' + 12 characters, the same for the same PatientID and key; None without an id."""
    if not patient_id:
        return None
    digest = hmac.new(_key(), str(patient_id).strip().encode("utf-8"), hashlib.sha256).digest()
    return "LLN-" + base64.b32encode(digest).decode("ascii")[:12]
