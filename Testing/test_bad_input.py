"""Every bad input gets exit status 2 and one `error:` line, no traceback, no output that looks complete."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, run_cli


def assert_clean_error(p, *words):
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("[llnassist]")]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]


def write(arr, path, spacing=None):
    img = sitk.GetImageFromArray(arr)
    if spacing:
        img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture()
def out(tmp_path):
    return tmp_path / "out"


def analyze(image, out, *extra):
    p = run_cli("analyze", image, "--out", out, "--device", "cpu", *extra)
    assert not (out / "summary.json").exists()
    leftovers = [x for x in out.parent.iterdir() if x.name.startswith(".out.partial")]
    assert not leftovers, leftovers
    return p


def test_missing_file(tmp_path, out):
    assert_clean_error(analyze(tmp_path / "nope.nii.gz", out), "does not exist")


def test_empty_file(tmp_path, out):
    (tmp_path / "e.nii.gz").write_bytes(b"")
    assert_clean_error(analyze(tmp_path / "e.nii.gz", out), "empty")


def test_truncated_file(tmp_path, out, small_case):
    data = (small_case / "image.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(data[: len(data) // 3])
    assert_clean_error(analyze(tmp_path / "t.nii.gz", out), "truncated")
    (tmp_path / "t.mha").write_bytes(b"")
    sitk.WriteImage(sitk.ReadImage(str(small_case / "image.nii.gz")), str(tmp_path / "full.mha"))
    data = (tmp_path / "full.mha").read_bytes()
    (tmp_path / "t.mha").write_bytes(data[: len(data) // 2])
    assert_clean_error(analyze(tmp_path / "t.mha", out), "cannot read")


def test_not_an_image(tmp_path, out):
    (tmp_path / "notes.nii.gz").write_bytes(gzip.compress(b"patient notes, not an image\n" * 50))
    assert_clean_error(analyze(tmp_path / "notes.nii.gz", out), "cannot read")
    (tmp_path / "x.txt").write_text("hello")
    assert_clean_error(analyze(tmp_path / "x.txt", out), "cannot read")


def test_2d_image(tmp_path, out):
    assert_clean_error(analyze(write(np.ones((64, 64), np.int16), tmp_path / "a.nii.gz"), out), "2D")


def test_single_slice_volume(tmp_path, out):
    assert_clean_error(analyze(write(np.ones((1, 64, 64), np.int16), tmp_path / "a.nii.gz"), out), "3D")


def test_4d_image(tmp_path, out):
    img = sitk.JoinSeries([sitk.GetImageFromArray(np.ones((4, 32, 32), np.int16))] * 3)
    sitk.WriteImage(img, str(tmp_path / "4d.nii.gz"))
    assert_clean_error(analyze(tmp_path / "4d.nii.gz", out), "4D")


def test_non_finite_voxels(tmp_path, out):
    arr = np.ones((6, 32, 32), np.float32)
    arr[2, 5, 5] = np.nan
    arr[3, 6, 6] = np.inf
    # NIfTI (ITK alone would silently turn these into 0) and NRRD
    assert_clean_error(analyze(write(arr, tmp_path / "nan.nii.gz"), out), "non-finite", "2")
    assert_clean_error(analyze(write(arr, tmp_path / "nan.nrrd"), out), "non-finite", "2")


def test_unknown_device(small_case, out):
    p = run_cli("analyze", small_case / "image.nii.gz", "--out", out, "--device", "tpu")
    assert_clean_error(p, "unknown device")
    assert not out.exists()


def test_cuda_when_absent(small_case, out):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert_clean_error(run_cli("analyze", small_case / "image.nii.gz", "--out", out, "--device", "cuda"),
                       "no CUDA")


def test_unknown_model(small_case, out):
    p = run_cli("analyze", small_case / "image.nii.gz", "--out", out, "--model", "no-such-model")
    assert_clean_error(p, "unknown model")


def test_model_checksum_mismatch(small_case, out, tmp_path):
    src = REPO / "Resources" / "models" / "llnassist-phantom-dynunet25d"
    bad = tmp_path / "tampered"
    shutil.copytree(src, bad)
    data = bytearray((bad / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.pt").write_bytes(bytes(data))
    p = run_cli("analyze", small_case / "image.nii.gz", "--out", out, "--model", bad)
    assert_clean_error(p, "checksum")
    assert not (out / "summary.json").exists()


def test_mask_geometry_mismatch(small_case, tmp_path):
    write(np.ones((4, 20, 20), np.uint8), tmp_path / "m.nii.gz", spacing=(1.0, 1.0, 3.0))
    p = run_cli("radiomics", small_case / "image.nii.gz", tmp_path / "m.nii.gz")
    assert_clean_error(p, "does not match")


def test_empty_mask(small_case, tmp_path):
    lab = sitk.ReadImage(str(small_case / "labels.nii.gz"))
    empty = sitk.Image(lab.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(lab)
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    assert_clean_error(run_cli("radiomics", small_case / "image.nii.gz", tmp_path / "empty.nii.gz"), "no voxels")
    # a label value that is absent is the same mistake
    p = run_cli("radiomics", small_case / "image.nii.gz", small_case / "labels.nii.gz", "--label", "9")
    assert_clean_error(p, "label 9")


def test_measure_empty_and_non_label(tmp_path):
    assert_clean_error(run_cli("measure", write(np.zeros((4, 20, 20), np.uint8), tmp_path / "z.nii.gz")), "empty")
    arr = np.full((4, 20, 20), 0.5, np.float32)
    assert_clean_error(run_cli("measure", write(arr, tmp_path / "f.nii.gz")), "non-integer")


def test_usage_errors():
    assert_clean_error(run_cli("analyze"), "required")
    assert_clean_error(run_cli("frobnicate"), "invalid choice")
    assert_clean_error(run_cli("radiomics", "a", "b", "--engine", "magic"), "invalid choice")


def test_output_path_is_a_file(small_case, tmp_path):
    (tmp_path / "f").write_text("x")
    p = run_cli("analyze", small_case / "image.nii.gz", "--out", tmp_path / "f", "--device", "cpu")
    assert_clean_error(p, "not a directory")
