"""The phantom: deterministic, clinical geometry, truth consistent with its own label map."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from LLNAssistLib import conventions as C
from LLNAssistLib import phantom


def test_same_seed_same_case():
    a = phantom.generate(77, size=256, slices=24)
    b = phantom.generate(77, size=256, slices=24)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.truth == b.truth
    c = phantom.generate(78, size=256, slices=24)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", [5, 6])
def test_default_geometry_is_clinical_and_oblique(seed):
    ph = phantom.generate(seed)
    nz, ny, nx = ph.image.shape
    assert 320 <= nx <= 450 and ny == nx and 24 <= nz <= 40
    assert 0.55 <= ph.spacing[0] <= 0.8 and 3.0 <= ph.spacing[2] <= 4.0
    d = ph.direction
    assert np.allclose(d @ d.T, np.eye(3), atol=1e-9)
    assert not np.allclose(d, np.eye(3), atol=1e-3)  # oblique


def test_truth_matches_label_map_and_signal_order():
    pos_short, neg_short = [], []
    for seed in range(40, 52):
        ph = phantom.generate(seed, size=256, slices=24, n_nodes=6)
        t = ph.truth
        statuses = [n["status"] for n in t["nodes"]]
        assert t["patient_status"] == ("positive" if "positive" in statuses else "negative")
        assert ph.labels.max() <= 5
        fat = ph.image[np.isin(ph.labels, C.REGION_LABELS)].mean()  # compartments are mostly fat
        for n in t["nodes"]:
            # the centroid lies in a voxel of the node's own label (nodes are convex-ish)
            ras = np.array([n["centroid_r"], n["centroid_a"], n["centroid_s"]])
            lps = ras * [-1, -1, 1]
            ijk = np.linalg.solve(ph.direction, lps - ph.origin) / np.array(ph.spacing)
            i, j, k = np.round(ijk).astype(int)
            assert ph.labels[k, j, i] == C.LABEL_FROM_STATUS[n["status"]]
            assert n["region"] in ("II", "OB", "EI") and n["side"] in ("left", "right")
            # side by construction agrees with RAS: left of the volume centre has R < 0
            assert (n["side"] == "left") == (n["centroid_r"] < 0)
            assert n["short_axis_mm"] <= n["long_axis_mm"] + 1e-9
            (pos_short if n["status"] == "positive" else neg_short).append(n["short_axis_mm"])
        node_sig = ph.image[ph.labels >= 4]
        if node_sig.size:
            assert node_sig.mean() < fat  # fat is brighter than nodes on T2 FSE
    # sizes overlap: size alone cannot decide
    assert min(pos_short) < 7.0 and max(neg_short) > min(pos_short)
    assert np.median(pos_short) > np.median(neg_short)


def test_cli_writes_case(tmp_path):
    run_cli("phantom", "--seed", 3, "--out", tmp_path / "c", "--size", 256, "--slices", 24, check_rc=0)
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["image.nii.gz", "labels.nii.gz", "truth.json"]
    t = json.loads((tmp_path / "c" / "truth.json").read_text(encoding="utf-8"))
    keys = {"node_id", "centroid_r", "centroid_a", "centroid_s", "region", "side", "status", "short_axis_mm",
            "long_axis_mm"}
    assert all(keys <= set(n) for n in t["nodes"]) and t["patient_status"] in ("positive", "negative")


def test_a_large_pixel_size_leaves_air_around_the_body(tmp_path):
    """`phantom --spacing` (used to train and benchmark a site model on a wide field of view): the
    pixel size is the one asked for and the body stays clear of the image's edges. A pixel size no
    MRI has, or a size the generator cannot draw (it used to end in an internal error), exits 2."""
    import SimpleITK as sitk

    from LLNAssistLib.body import body_mask

    run_cli("phantom", "--seed", 921001, "--out", tmp_path / "p", "--size", 320, "--slices", 16, "--spacing", 1.3,
            check_rc=0)
    img = sitk.ReadImage(str(tmp_path / "p" / "image.nii.gz"))
    assert img.GetSpacing()[:2] == pytest.approx((1.3, 1.3))
    body = body_mask(sitk.GetArrayFromImage(img))
    rows, cols = np.flatnonzero(body.any((0, 2))), np.flatnonzero(body.any((0, 1)))
    margin_mm = 1.3 * min(rows[0], cols[0], 319 - rows[-1], 319 - cols[-1])
    assert margin_mm > 20  # a 416 mm field of view; the phantom's body is at most 344 mm wide
    for bad, says in ((("--spacing", 0), "not an MRI pixel size"), (("--slices", 4), "give 5-200"),
                      (("--size", 0), "give 64-1024"), (("--nodes", -1), "give 0-40")):
        p = run_cli("phantom", "--seed", 1, "--out", tmp_path / "bad", *bad, check_rc=2)
        assert says in p.stderr and "Traceback" not in p.stderr and not (tmp_path / "bad").exists()
