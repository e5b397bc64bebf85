"""Region, side, status and criteria on hand-built label maps (truth known by construction)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LLNAssistLib import conventions as C
from LLNAssistLib.nodes import extract_nodes, patient_status, size_criterion

SP = (0.7, 0.7, 3.0)


def _image(arr, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), spacing=SP):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    d = np.array(direction, float).reshape(3, 3)
    centre = (np.array(arr.shape[::-1]) - 1) / 2 * np.array(spacing)
    img.SetDirection(tuple(d.ravel()))
    img.SetOrigin(tuple(-(d @ centre)))  # volume centre at the scanner origin (RAS 0, 0, 0)
    return img


def _block(arr, k, j, i, value):
    arr[k[0]:k[1], j[0]:j[1], i[0]:i[1]] = value


def hand_built():
    """Both sides' regions; nodes: 1 positive in left II, 1 mixed (60% negative) in right OB,
    1 speckle, 1 node outside every region near right EI."""
    lab = np.zeros((8, 120, 120), np.uint8)
    # i grows towards patient left (LPS +x), j towards posterior.
    _block(lab, (1, 7), (60, 90), (80, 110), C.INTERNAL_ILIAC)  # left II (posterior)
    _block(lab, (1, 7), (60, 90), (10, 40), C.INTERNAL_ILIAC)  # right II
    _block(lab, (1, 7), (30, 60), (10, 40), C.OBTURATOR)  # right OB
    _block(lab, (1, 7), (5, 25), (10, 40), C.EXTERNAL_ILIAC)  # right EI
    _block(lab, (1, 7), (30, 60), (80, 110), C.OBTURATOR)  # left OB
    _block(lab, (3, 5), (70, 80), (90, 100), C.NODE_POSITIVE)  # in left II
    _block(lab, (3, 5), (40, 50), (20, 30), C.NODE_NEGATIVE)  # in right OB, mixed status
    lab[3:5, 40:44, 20:30] = C.NODE_POSITIVE  # 40% positive voxels
    lab[2, 100, 60] = C.NODE_POSITIVE  # speckle: one voxel (1.5 mm^3)
    _block(lab, (3, 5), (0, 4), (5, 15), C.NODE_NEGATIVE)  # no region around; EI is nearest
    return lab


def test_region_side_status_from_hand_built_labels():
    nodes = extract_nodes(_image(hand_built()))
    assert len(nodes) == 3  # the speckle is dropped
    by_region = {(n.side, n.region): n for n in nodes}
    assert set(by_region) == {("left", "II"), ("right", "OB"), ("right", "EI")}
    assert by_region[("left", "II")].dl_status == "positive"
    mixed = by_region[("right", "OB")]
    assert mixed.dl_status == "negative"
    assert mixed.positive_fraction == pytest.approx(0.4)
    # centroid in RAS: left side has negative R
    assert by_region[("left", "II")].centroid_ras[0] < 0 < mixed.centroid_ras[0]
    assert patient_status(nodes) == "positive"
    # ids are 1..n, right side first
    assert [n.node_id for n in nodes] == [1, 2, 3] and nodes[0].side == "right"


def test_side_follows_physical_position_not_array_order():
    lab = hand_built()
    flipped = lab[:, :, ::-1].copy()  # same anatomy stored right-to-left
    a = extract_nodes(_image(lab))
    b = extract_nodes(_image(flipped, direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)))
    key = sorted((n.side, n.region, n.dl_status, round(float(n.centroid_ras[0]), 2)) for n in a)
    assert key == sorted((n.side, n.region, n.dl_status, round(float(n.centroid_ras[0]), 2)) for n in b)


def test_measurements_of_a_box_node():
    nodes = extract_nodes(_image(hand_built()))
    n = next(q for q in nodes if q.region == "II")
    # a 7 x 7 mm square: the long axis is a diagonal, and the longest chord perpendicular to it is
    # the other diagonal, so both axes are ~9.9 mm (corners are cut by half a pixel on the outline)
    assert n.long_axis_mm == pytest.approx(7.0 * 2 ** 0.5, abs=0.8)
    assert n.short_axis_mm == pytest.approx(n.long_axis_mm, abs=0.8)
    assert n.axes.volume_mm3 == pytest.approx(200 * 0.7 * 0.7 * 3.0)


def test_patient_negative_when_no_positive_node():
    lab = hand_built()
    lab[lab == C.NODE_POSITIVE] = C.NODE_NEGATIVE
    nodes = extract_nodes(_image(lab))
    assert nodes and all(n.dl_status == "negative" for n in nodes)
    assert patient_status(nodes) == "negative"
    assert patient_status([]) == "negative"


@pytest.mark.parametrize("short,region,post,expected", [
    (7.0, "OB", False, True), (6.99, "II", False, False), (12.0, "EI", False, True),
    (4.0, "II", True, False), (4.01, "II", True, True),
    (6.0, "OB", True, False), (6.2, "OB", True, True),
    (6.5, "EI", True, False), (7.0, "EI", True, True),  # no restaging cut-off for EI: primary rule
])
def test_size_criterion(short, region, post, expected):
    assert size_criterion(short, region, post)[0] is expected


def test_post_treatment_changes_size_positive():
    lab = hand_built()
    n_primary = {n.region: n for n in extract_nodes(_image(lab))}
    n_post = {n.region: n for n in extract_nodes(_image(lab), post_treatment=True)}
    # II node short axis ~7 mm: positive in both; OB node 7 mm: >6 restaging
    assert n_post["OB"].size_positive and n_post["II"].size_positive
    assert n_primary["II"].criteria["size_rule"].startswith("short axis")
    assert n_post["II"].criteria["size_rule"].startswith("restaging")
