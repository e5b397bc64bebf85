"""First-use install in Slicer: version ranges per Slicer (Python) version, an installed torch
kept and pinned, what got installed checked, and a plain account from the real interpreter."""

from __future__ import annotations

import sys

import pytest

from LLNAssistLib import slicer_deps as D

SLICER_5_8, SLICER_5_12 = (3, 9), (3, 12)  # the Pythons Slicer bundles (SuperBuild/External_python.cmake)


def _env(**versions):
    return lambda dist: versions.get(dist)


def test_versions_compare_as_pip_does_for_release_numbers():
    assert D.satisfies("2.5.1+cu121", ">=2.2,<2.14")
    assert not D.satisfies("2.14.0", ">=2.2,<2.14") and D.satisfies("2.13.0", ">=2.2,<2.14")
    assert D.satisfies("2.10", ">=2.9") and not D.satisfies("2.9", ">=2.10")  # numeric, not text order
    assert D.satisfies("1.5.2", ">=1.3,<1.6") and not D.satisfies("1.6.0", ">=1.3,<1.6")
    with pytest.raises(ValueError):
        D.satisfies("2.0", "~=2.0")


def test_slicer_5_8_gets_ranges_python_3_9_can_install():
    assert D.monai_requirement(SLICER_5_8) == "monai>=1.3,<1.6"  # MONAI 1.6 needs Python >= 3.10
    assert not D.satisfies("2.9.0", D.torch_requirement(SLICER_5_8))  # no 3.9 wheels from 2.9 on
    assert D.satisfies("2.8.0", D.torch_requirement(SLICER_5_8))
    plan = D.plan(python=SLICER_5_8, version_of=_env(), found=lambda m: False)
    assert plan.install_torch and plan.torch_requirement == ">=2.0,<2.9"
    assert "monai>=1.3,<1.6" in plan.pip and not any(p.startswith("torch") for p in plan.pip)


def test_an_installed_cuda_torch_is_kept_and_pinned():
    plan = D.plan(python=SLICER_5_12, version_of=_env(torch="2.5.1+cu121"), found=lambda m: m != "nrrd")
    assert not plan.install_torch and not plan.problem and not plan.warning
    assert plan.pip == ["pynrrd>=1.0", "monai>=1.3,<1.7", "torch==2.5.1+cu121"]
    assert "torch" not in plan.summary().lower().replace("pytorch", "")  # the pin is not shown as an install


def test_too_old_torch_is_not_replaced_silently_and_too_new_is_kept_with_a_warning():
    old = D.plan(python=SLICER_5_12, version_of=_env(torch="1.13.1"), found=lambda m: True)
    assert old.problem and "PyTorch Util" in old.problem and not old.needed
    new = D.plan(python=SLICER_5_12, version_of=_env(torch="2.20.0", monai="1.6.1"), found=lambda m: True)
    assert not new.problem and "newer" in new.warning and not new.needed


def test_edits_need_no_torch():
    plan = D.plan(for_edit=True, python=SLICER_5_12, version_of=_env(), found=lambda m: m != "skimage")
    assert not plan.install_torch and plan.pip == ["scikit-image>=0.21"]


def test_verify_names_what_is_wrong():
    assert D.verify(SLICER_5_8, _env(torch="2.8.0", monai="1.5.2")) == []
    problems = D.verify(SLICER_5_8, _env(torch="2.8.0", monai="1.6.1"))
    assert len(problems) == 1 and "monai>=1.3,<1.6" in problems[0]
    assert "not installed" in D.verify(SLICER_5_12, _env(monai="1.6.1"))[0]


def test_probe_asks_the_real_interpreter_and_says_where_the_analysis_runs():
    import torch

    info = D.probe(sys.executable)
    assert info["torch"] == torch.__version__ and info["cuda_available"] == torch.cuda.is_available()
    text = D.describe(info)
    assert text.startswith(f"PyTorch {torch.__version__}")
    if not torch.cuda.is_available():
        assert "no usable GPU" in text and "CPU" in text
    assert D.verify(tuple(sys.version_info[:2])) == []  # this environment is itself a valid install
    missing = D.probe(str(sys.executable) + "-missing")
    assert "could not run" in D.describe(missing)
