"""Reading the CSV tables users give (ratings, cases, readers) with one-line errors."""

from __future__ import annotations

import csv
import os

from .errors import InputError


def read_table(path: str | os.PathLike, required: tuple, what: str) -> list[dict]:
    """Rows as dicts (values stripped); refuses missing files, missing columns and empty tables."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{what} file {path} lacks column(s) {', '.join(missing)}; it needs "
                                 f"{','.join(required)}")
            rows = [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
    except FileNotFoundError:
        raise InputError(f"{what} file {path} does not exist; check the path") from None
    except (UnicodeDecodeError, csv.Error):
        raise InputError(f"{what} file {path} is not a readable CSV; export it as UTF-8 CSV") from None
    if not rows:
        raise InputError(f"{what} file {path} has no rows; add {what}")
    return rows


def spreadsheet_safe(value) -> str:
    """Text a spreadsheet shows as text: a cell starting with = + @ (or - not followed by a number),
    tab or carriage return would run as a formula (CSV injection), so it gets a leading apostrophe."""
    s = "" if value is None else str(value)
    if s and (s[0] in "=+@\t\r" or (s[0] == "-" and not _is_number(s))):
        return "'" + s
    return s


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
