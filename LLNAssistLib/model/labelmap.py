"""A foreign model's output labels mapped to the conventions' values, by name.

nnU-Net models name their labels in dataset.json, MONAI bundles in metadata.json's channel_def.
Names equal to `conventions.LABEL_NAMES` map directly; any other name is mapped through
`llnassist_labels.json` beside the model ({"model's name": "LLNAssist name"}). A model without a
needed label is refused before it runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import conventions as C
from ..errors import InputError

LABEL_MAP_FILE = "llnassist_labels.json"


def map_label_names(folder: Path, names: dict) -> dict:
    """{model's label name: model's value} -> {model's value: conventions value}."""
    mapping_file = folder / LABEL_MAP_FILE
    rename = {}
    if mapping_file.is_file():
        try:
            rename = json.loads(mapping_file.read_text(encoding="utf-8"))
        except ValueError:
            raise InputError(f"{mapping_file} is not valid JSON (model label name -> LLNAssist label name)") from None
        if not isinstance(rename, dict):
            raise InputError(f"{mapping_file} must be one object: model label name -> LLNAssist label name")
        unknown = sorted(set(rename.values()) - set(C.LABEL_NAMES.values()))
        if unknown:
            raise InputError(f"{mapping_file} maps to {', '.join(map(repr, unknown))}, which LLNAssist does not have; "
                             f"its labels are {', '.join(map(repr, C.LABEL_NAMES.values()))}")
    by_name = {v: k for k, v in C.LABEL_NAMES.items()}
    out = {}
    for name, value in names.items():
        target = rename.get(name, name)
        if target in by_name:
            out[int(value)] = by_name[target]
    missing = [n for v, n in C.LABEL_NAMES.items() if v not in out.values()]
    if missing:
        raise InputError(f"model {folder.name} has no label for {', '.join(map(repr, missing))}; its labels are "
                         f"{', '.join(map(repr, names))} - add {LABEL_MAP_FILE} beside it mapping its names to "
                         "LLNAssist's")
    return out
