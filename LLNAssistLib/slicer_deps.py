"""Python packages the Slicer module needs, chosen for the Slicer (i.e. Python) it runs in, and a
plain account of what is installed and whether a GPU is usable.

Slicer 5.8 bundles Python 3.9; Slicer 5.10 and 5.12 bundle Python 3.12. PyTorch 2.9 and MONAI 1.6
no longer support Python 3.9, so an unbounded `pip install torch monai` breaks Slicer 5.8, and on
any version an unbounded install can replace a site's CUDA build of torch with a CPU wheel. So:
an installed torch inside the range is kept as it is (CUDA or not) and pinned while the other
packages install; a missing torch is installed by the PyTorch extension (which picks the CUDA or
CPU build for the machine) with the range of this Python; what got installed is checked after.

No Slicer import here: the module calls it, the tests run it with plain Python.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

# Import name -> pip requirement. The analysis runs in a separate PythonSlicer process; the edits
# (recompute, mark, delete, click-to-segment) run in Slicer's own process and need only these.
EDIT_PACKAGES = {"skimage": "scikit-image>=0.21"}
ANALYSIS_PACKAGES = {"skimage": "scikit-image>=0.21", "slicerio": "slicerio>=1.1", "nrrd": "pynrrd>=1.0",
                     "matplotlib": "matplotlib>=3.7", "psutil": "psutil>=5.9", "pydicom": "pydicom>=2.4"}
HIGHDICOM_REQUIREMENT = "highdicom>=0.24"
# Newest torch release this version of LLNAssist was tested with (the project's own environment).
TORCH_TESTED_BELOW = "2.14"


def torch_requirement(python: tuple = tuple(sys.version_info[:2])) -> str:
    """The torch versions this Python can use: 2.2 is the first with Python 3.12 wheels; 2.8 the
    last with Python 3.9 ones."""
    if python < (3, 10):
        return ">=2.0,<2.9"
    return f">=2.2,<{TORCH_TESTED_BELOW}"


def monai_requirement(python: tuple = tuple(sys.version_info[:2])) -> str:
    """MONAI 1.6 needs Python >= 3.10."""
    return "monai>=1.3,<1.6" if python < (3, 10) else "monai>=1.3,<1.7"


def parse_version(text: str) -> tuple:
    """The numeric release of a version string: '2.5.1+cu121' -> (2, 5, 1); '2.6.0rc1' -> (2, 6, 0)."""
    m = re.match(r"\s*(\d+(?:\.\d+)*)", text or "")
    if not m:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(x) for x in m.group(1).split("."))


def _cmp(a: tuple, b: tuple) -> int:
    n = max(len(a), len(b))
    a, b = a + (0,) * (n - len(a)), b + (0,) * (n - len(b))
    return (a > b) - (a < b)


_OPS = {">=": lambda c: c >= 0, "<=": lambda c: c <= 0, ">": lambda c: c > 0, "<": lambda c: c < 0,
        "==": lambda c: c == 0, "!=": lambda c: c != 0}


def satisfies(version: str, spec: str) -> bool:
    """Whether a version meets a comma-separated specifier such as '>=2.2,<2.14'."""
    v = parse_version(version)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = re.match(r"(>=|<=|==|!=|>|<)\s*(.+)", part)
        if not m:
            raise ValueError(f"unsupported version specifier: {part!r}")
        if not _OPS[m.group(1)](_cmp(v, parse_version(m.group(2)))):
            return False
    return True


def installed_version(distribution: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _spec_found(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@dataclass
class InstallPlan:
    torch_version: Optional[str]  # installed now
    torch_requirement: str
    install_torch: bool = False  # through the PyTorch extension, with torch_requirement
    pip: list = field(default_factory=list)  # pip install arguments (torch pinned when present)
    problem: str = ""  # why nothing can be installed automatically
    warning: str = ""

    @property
    def needed(self) -> bool:
        return self.install_torch or bool(self.pip)

    def summary(self) -> str:
        what = ([f"PyTorch (torch{self.torch_requirement}, through the PyTorch extension)"] if self.install_torch
                else [])
        what += [p for p in self.pip if not p.startswith("torch==")]
        return ", ".join(what)


def plan(for_edit: bool = False, python: tuple = tuple(sys.version_info[:2]),
         version_of: Callable[[str], Optional[str]] = installed_version,
         found: Callable[[str], bool] = _spec_found) -> InstallPlan:
    """What to install for the analysis (or only for the edits) in this Python."""
    torch_req = torch_requirement(python)
    torch_v = version_of("torch")
    p = InstallPlan(torch_v, torch_req)
    packages = dict(EDIT_PACKAGES if for_edit else ANALYSIS_PACKAGES)
    if not for_edit:
        if torch_v is None:
            p.install_torch = True
        elif not satisfies(torch_v, torch_req.split(",")[0]):
            p.problem = (f"PyTorch {torch_v} is installed, but LLNAssist needs torch{torch_req} on this Slicer "
                         f"(Python {python[0]}.{python[1]}); LLNAssist does not replace it (another extension may "
                         "use it): install a matching version in the PyTorch Util module, restart Slicer, "
                         "and analyse again")
            return p
        elif not satisfies(torch_v, torch_req):
            p.warning = (f"PyTorch {torch_v} is newer than the versions LLNAssist was tested with "
                         f"(torch{torch_req}); it is kept")
        monai_v = version_of("monai")
        monai_req = monai_requirement(python)
        if monai_v is None or not satisfies(monai_v, monai_req[len("monai"):]):
            packages["monai"] = monai_req
        if python >= (3, 10):  # DICOM SEG and SR (highdicom's volume API needs 3.10; on 3.9 they are skipped)
            packages["highdicom"] = HIGHDICOM_REQUIREMENT
    p.pip = [req for mod, req in packages.items() if mod == "monai" or not found(mod)]
    if p.pip and torch_v is not None:
        p.pip.append(f"torch=={torch_v}")  # so no dependency can swap the installed (e.g. CUDA) build
    return p


def verify(python: tuple = tuple(sys.version_info[:2]),
           version_of: Callable[[str], Optional[str]] = installed_version) -> list:
    """Problems with what is installed after an install (empty when all is well)."""
    problems = []
    torch_v = version_of("torch")
    if torch_v is None:
        problems.append("PyTorch is not installed; install it in the PyTorch Util module and restart Slicer")
    elif not satisfies(torch_v, torch_requirement(python).split(",")[0]):
        problems.append(f"PyTorch {torch_v} is too old; LLNAssist needs torch{torch_requirement(python)}")
    monai_v = version_of("monai")
    monai_req = monai_requirement(python)
    if monai_v is None or not satisfies(monai_v, monai_req[len("monai"):]):
        problems.append(f"MONAI {monai_v or 'is missing'}; LLNAssist needs {monai_req}")
    return problems


_PROBE = r"""
import json
out = {}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda_build"] = torch.version.cuda
    out["cuda_available"] = bool(torch.cuda.is_available())
    out["gpu"] = torch.cuda.get_device_name(0) if out["cuda_available"] else None
    mps = getattr(torch.backends, "mps", None)
    out["mps_available"] = bool(mps and mps.is_available())
except Exception as exc:
    out["torch_error"] = f"{exc.__class__.__name__}: {exc}"
try:
    import monai
    out["monai"] = monai.__version__
except Exception as exc:
    out["monai_error"] = f"{exc.__class__.__name__}: {exc}"
print(json.dumps(out))
"""


def probe(python: str, timeout_s: float = 180.0) -> dict:
    """Asks the interpreter the analysis runs in (PythonSlicer) which torch/MONAI it imports and
    whether it sees a GPU, without importing torch into Slicer's own process."""
    from .runner import popen_platform_kwargs

    kw = popen_platform_kwargs()
    kw.pop("start_new_session", None)
    try:
        r = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s, **kw)
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return {"torch_error": f"could not run {python}: {exc.__class__.__name__}"}


def describe(info: dict) -> str:
    """One plain sentence for the module: what is installed and where the analysis will run."""
    if "torch" not in info:
        return f"PyTorch is not usable: {info.get('torch_error', 'not installed')}."
    build = f"CUDA {info['cuda_build']} build" if info.get("cuda_build") else "CPU-only build"
    if info.get("cuda_available"):
        where = f"GPU usable: {info.get('gpu') or 'CUDA device'} (Device auto uses it)"
    elif info.get("mps_available"):
        where = "no CUDA GPU; Apple GPU present but LLNAssist runs on the CPU there"
    else:
        where = "no usable GPU: the analysis runs on the CPU (about 20 s for a 384x384x32 series on 2 cores)"
    monai = f"MONAI {info['monai']}" if "monai" in info else f"MONAI not usable ({info.get('monai_error')})"
    return f"PyTorch {info['torch']} ({build}), {monai}; {where}."
