"""Where the bundled data lives: models, terminology, the self-test sample.

One rule for every layout: the data folder `Resources/` sits beside the `LLNAssistLib` package.
In a source checkout that is the repository's `Resources/`; in an installed Slicer extension it is
`qt-scripted-modules/Resources/` (the extension build installs the library and its data there, next
to the module's own UI and icon). `LLNASSIST_RESOURCES` overrides it (a pip install of the library
alone, a site-wide model store).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SAMPLE_CASE = "LLNPhantom900507"


def resources_dir() -> Path:
    env = os.environ.get("LLNASSIST_RESOURCES")
    return Path(env) if env else PACKAGE_DIR.parent / "Resources"


def models_dir() -> Path:
    return resources_dir() / "models"


def terminology_file() -> Path:
    return resources_dir() / "Terminology" / "LLNAssist.term.json"


def sample_dir() -> Path:
    return resources_dir() / "Sample" / SAMPLE_CASE
