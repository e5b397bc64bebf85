"""Reviewed cases -> an nnU-Net v2 raw dataset (`llnassist dataset export`).

Each case is an image and its reviewed labels: a label map with the conventions' values, a
`.seg.nrrd` (an `llnassist analyze` or Slicer segmentation, corrected), an `llnassist analyze`
output folder, or a Slicer scene bundle (`.mrb`) holding one. Every case is checked before anything
is written; the dataset is built in a staging folder and published whole.

Written: `DatasetNNN_NAME/imagesTr/<case>_0000.nii.gz`, `labelsTr/<case>.nii.gz`, `dataset.json`
(labels named as `conventions.LABEL_NAMES`), `splits_final.json` (five folds by patient, seeded;
`llnassist train` puts it where nnU-Net looks), and `provenance.json` (sources, reviewers, sha256).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from . import conventions as C
from .atomic import staged_directory, write_text
from .body import body_mask
from .csvtable import read_table
from .errors import InputError
from .imageio import ijk_to_lps_matrix, index_to_ras, same_geometry
from .model.manifest import sha256_file

N_FOLDS = 5
NODE_INSIDE_BODY = 0.95  # share of node voxels that must lie in the body mask
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def label_names() -> dict:
    """nnU-Net's dataset.json `labels`: name -> value, exactly the conventions' names."""
    return {C.LABEL_NAMES[v]: v for v in range(C.NUM_CLASSES)}


@dataclass
class CaseLabels:
    labels: sitk.Image  # uint8, conventions' values, on the image's grid
    reviewed_by: Optional[str] = None
    sided: list = field(default_factory=list)  # (segment name, side, mask (k, j, i)) to check
    kind: str = "labelmap"


def _read_labelmap(path: Path, image: sitk.Image, case: str) -> CaseLabels:
    from .imageio import read_image

    lab = read_image(path, kind="labels")
    if not same_geometry(lab, image):
        raise InputError(f"case {case}: labels {path.name} do not have the image's geometry (size "
                         f"{lab.GetSize()} vs {image.GetSize()}, spacing, origin or direction differ); resample "
                         "or re-save them on the image")
    arr = sitk.GetArrayFromImage(lab)
    if not np.issubdtype(arr.dtype, np.integer) and not np.array_equal(arr, np.round(arr)):
        raise InputError(f"case {case}: labels {path.name} hold non-integer values; give a label map")
    out = sitk.GetImageFromArray(arr.astype(np.int32))
    out.CopyInformation(image)
    return CaseLabels(out)


def _segment_label(seg: dict) -> tuple[Optional[int], Optional[str]]:
    """(label value, side) of an LLNAssist segment from its tags, id or name; (None, None) if unknown."""
    tags = seg.get("tags") or {}
    name, sid = seg.get("name", ""), seg.get("id", "")
    kind = tags.get(C.TAG_KIND)
    side = next((s for s in C.SIDES if re.search(rf"\b{s}\b", f"{name} {sid}")), None)
    m = re.match(r"region_(II|OB|EI)_(left|right)$", sid)
    if m:
        return C.REGION_LABEL_FROM_CODE[m.group(1)], m.group(2)
    for code, rname in C.REGION_NAME.items():
        if name.lower().startswith(f"{rname.lower()} region"):
            return C.REGION_LABEL_FROM_CODE[code], side
    status = tags.get(C.TAG_STATUS)
    if status is None:
        m = re.match(r"node \d+ \((positive|negative)\)", name.lower())
        status = m.group(1) if m else None
    if (kind == "node" or name.lower().startswith("node")) and status in C.LABEL_FROM_STATUS:
        return C.LABEL_FROM_STATUS[status], side
    return None, None


def _read_segfile(path: Path, image: sitk.Image, case: str) -> CaseLabels:
    """A .seg.nrrd onto the image grid: regions first, nodes on top (a node lies in its region)."""
    import slicerio

    try:
        seg = slicerio.read_segmentation(str(path))
    except Exception as exc:
        raise InputError(f"case {case}: {path.name} is not a readable .seg.nrrd ({exc.__class__.__name__})") from None
    # segment voxel (i, j, k) -> image index: must be the same grid up to a whole-voxel offset
    to_img = np.linalg.inv(ijk_to_lps_matrix(image)) @ np.asarray(seg["ijkToLPS"], float)
    if not np.allclose(to_img[:3, :3], np.eye(3), atol=1e-3) or not np.allclose(to_img[:3, 3],
                                                                                 np.round(to_img[:3, 3]), atol=1e-2):
        raise InputError(f"case {case}: {path.name} is not on the image's voxel grid (other spacing, direction "
                         "or a sub-voxel shift); export it from Slicer with the image as reference geometry")
    off = np.round(to_img[:3, 3]).astype(int)
    size = np.array(image.GetSize())
    out = np.zeros(tuple(size[::-1]), np.int32)  # (k, j, i)
    sided, reviewers, unknown = [], set(), []
    segments = sorted(seg["segments"], key=lambda s: _segment_label(s)[0] in C.NODE_LABELS)
    for s in segments:
        value, side = _segment_label(s)
        if value is None:
            unknown.append(s.get("name") or s.get("id"))
            continue
        mask_ijk = slicerio.segment_mask(seg, s)
        idx = np.argwhere(mask_ijk) + off  # (n, 3) i, j, k on the image
        inside = np.all((idx >= 0) & (idx < size), axis=1)
        if not inside.all():
            raise InputError(f"case {case}: segment {s.get('name')!r} extends beyond the image; it does not "
                             "belong to this image")
        out[idx[:, 2], idx[:, 1], idx[:, 0]] = value
        if side:
            mk = np.zeros(out.shape, bool)
            mk[idx[:, 2], idx[:, 1], idx[:, 0]] = True
            sided.append((s.get("name") or s.get("id"), side, mk))
        rv = (s.get("tags") or {}).get(C.TAG_REVIEWED_BY)
        if rv:
            reviewers.add(rv)
    if unknown:
        raise InputError(f"case {case}: segment(s) {', '.join(map(repr, unknown))} are not LLNAssist labels; name "
                         "them as the module does (e.g. 'Obturator region (left)', 'Node 3 (positive)') or run "
                         "Recompute in the LLNAssist module")
    lab = sitk.GetImageFromArray(out)
    lab.CopyInformation(image)
    if len(reviewers) > 1:
        raise InputError(f"case {case}: segments were reviewed by different readers ({', '.join(sorted(reviewers))}); "
                         "one reader reviews a case")
    return CaseLabels(lab, next(iter(reviewers), None), sided, "seg.nrrd")


def _from_mrb(path: Path, image: sitk.Image, case: str) -> CaseLabels:
    """A Slicer scene bundle is a zip: its one segmentation is read like a .seg.nrrd (members are
    never extracted outside a private folder)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise InputError(f"case {case}: {path.name} is not a Slicer scene bundle (.mrb)") from None
    with zf, tempfile.TemporaryDirectory(prefix="llnassist-mrb-") as tmp:
        segs = [n for n in zf.namelist() if n.lower().endswith(".seg.nrrd") and not n.startswith("__MACOSX")]
        if len(segs) != 1:
            raise InputError(f"case {case}: {path.name} holds {len(segs)} segmentations; save the case with exactly "
                             "one (the reviewed LLNAssist segmentation)")
        target = Path(tmp) / "segmentation.seg.nrrd"
        with zf.open(segs[0]) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        out = _read_segfile(target, image, case)
        out.kind = "mrb"
        return out


def read_case_labels(source: Path, image: sitk.Image, case: str) -> CaseLabels:
    if source.is_dir():  # an `llnassist analyze` output: its segmentation carries sides and corrections
        for name in ("segmentation.seg.nrrd", "labels.nii.gz"):
            if (source / name).is_file():
                return read_case_labels(source / name, image, case)
        raise InputError(f"case {case}: folder {source} holds no segmentation.seg.nrrd or labels.nii.gz; give an "
                         "`llnassist analyze` output, a label map, a .seg.nrrd or a .mrb")
    if not source.is_file():
        raise InputError(f"case {case}: labels {source} do not exist; check the path")
    name = source.name.lower()
    if name.endswith(".seg.nrrd"):
        return _read_segfile(source, image, case)
    if name.endswith(".mrb"):
        return _from_mrb(source, image, case)
    return _read_labelmap(source, image, case)


def check_case(case: str, image: sitk.Image, got: CaseLabels) -> None:
    """Only known labels; nodes inside the body; sided segments on their side of the patient."""
    arr = sitk.GetArrayFromImage(got.labels)
    bad = sorted(set(np.unique(arr).tolist()) - set(range(C.NUM_CLASSES)))
    if bad:
        raise InputError(f"case {case}: label value(s) {', '.join(map(str, bad))} are not LLNAssist labels "
                         f"({', '.join(f'{v} {n}' for v, n in C.LABEL_NAMES.items())})")
    img = sitk.GetArrayFromImage(image)
    body = body_mask(img)
    nodes = np.isin(arr, C.NODE_LABELS)
    if nodes.any():
        inside = float(body[nodes].mean())
        if inside < NODE_INSIDE_BODY:
            raise InputError(f"case {case}: {100 * (1 - inside):.0f} % of the node voxels lie outside the body on the "
                             "image; the labels do not belong to this image (or are shifted)")
    if got.sided and body.any():
        # The patient's midline: centre of the body's left-right extent (R coordinate), per image.
        kk, jj, ii = np.nonzero(body)
        r = index_to_ras(image, np.column_stack([ii, jj, kk])[:: max(1, len(ii) // 20000)])[:, 0]
        mid = (r.min() + r.max()) / 2
        for name, side, mask in got.sided:
            kk, jj, ii = np.nonzero(mask)
            if len(ii) == 0:
                continue
            cr = float(index_to_ras(image, np.column_stack([ii, jj, kk]).mean(0, keepdims=True))[0, 0])
            on = "left" if cr < mid else "right"  # RAS: R grows towards the patient's right
            if on != side:
                raise InputError(f"case {case}: segment {name!r} lies on the patient's {on} in the image; left and "
                                 "right are swapped between the labels and the image")


def _pseudonym(text: str) -> str:
    """The site's keyed pseudonym (identity.py), as an nnU-Net-safe case id."""
    from .identity import pseudonym

    return pseudonym(f"dataset:{text}").replace("-", "")


def _splits(cases: list[dict], seed: int) -> list[dict]:
    """Five folds by patient (a patient's cases stay in one fold)."""
    patients = sorted({c["patient"] for c in cases})
    rng = random.Random(f"llnassist-splits:{seed}")
    rng.shuffle(patients)
    fold_of = {p: k % N_FOLDS for k, p in enumerate(patients)}
    out = []
    for f in range(N_FOLDS):
        val = sorted(c["out_id"] for c in cases if fold_of[c["patient"]] == f)
        train = sorted(c["out_id"] for c in cases if fold_of[c["patient"]] != f)
        out.append({"train": train, "val": val})
    return out


def read_cases(cases_csv: str, rows: Optional[list] = None):
    """Each row of a CASES.csv (case_id,image,labels; paths relative to the table) checked and read:
    yields (row, case id, image path, labels path, loaded image, CaseLabels). The first bad case
    stops with its id named."""
    from .inputs import load

    base = Path(cases_csv).resolve().parent
    rows = rows if rows is not None else read_table(cases_csv, ("case_id", "image", "labels"), "cases")
    seen = set()
    for n, r in enumerate(rows, start=2):
        cid = r["case_id"].strip()
        if not _CASE_ID.match(cid):
            raise InputError(f"cases line {n}: case_id {cid!r} must be letters, digits, '.', '_' or '-' (max 64)")
        if cid in seen:
            raise InputError(f"cases line {n}: case {cid} is listed twice")
        seen.add(cid)
        image_path = Path(r["image"]) if Path(r["image"]).is_absolute() else base / r["image"]
        labels_path = Path(r["labels"]) if Path(r["labels"]).is_absolute() else base / r["labels"]
        try:
            loaded = load(str(image_path))
        except InputError as exc:
            raise InputError(f"case {cid}: {exc}") from None
        got = read_case_labels(labels_path, loaded.image, cid)
        check_case(cid, loaded.image, got)
        yield r, cid, image_path, labels_path, loaded, got


def export(cases_csv: str, out_dir: str, dataset_id: int, name: str = "LLN", pseudonymize: bool = False,
           allow_unreviewed: bool = False, seed: int = 0, progress=print) -> Path:
    """Checks every case, then writes the dataset whole. Returns the dataset folder."""
    if not 1 <= int(dataset_id) <= 999:
        raise InputError(f"--dataset-id {dataset_id} must be 1-999 (nnU-Net's DatasetNNN)")
    if not re.match(r"^[A-Za-z0-9_-]{1,40}$", name):
        raise InputError(f"--name {name!r} must be letters, digits, _ or - (it becomes part of a folder name)")
    out = Path(out_dir)
    folder = out / f"Dataset{int(dataset_id):03d}_{name}"
    clash = sorted(p.name for p in out.glob(f"Dataset{int(dataset_id):03d}_*")) if out.is_dir() else []
    if clash:
        raise InputError(f"{out} already holds {clash[0]}; nnU-Net dataset ids must be unique - choose another "
                         "--dataset-id or another --out")
    rows = read_table(cases_csv, ("case_id", "image", "labels"), "cases")
    if len(rows) < N_FOLDS:
        raise InputError(f"{cases_csv} lists {len(rows)} case(s); five-fold cross-validation needs at least {N_FOLDS}")
    cases = []
    for r, cid, image_path, labels_path, loaded, got in read_cases(cases_csv, rows):
        reviewer = (r.get("reviewed_by") or "").strip() or got.reviewed_by
        if not reviewer and not allow_unreviewed:
            raise InputError(f"case {cid}: not marked as reviewed; review it in the LLNAssist module (Mark reviewed) "
                             "or give a reviewed_by column, or pass --allow-unreviewed")
        patient = (r.get("patient_id") or "").strip() or cid
        cases.append({"case_id": cid, "patient": patient, "image": loaded.image, "labels": got.labels,
                      "reviewed_by": reviewer or None, "image_path": image_path, "labels_path": labels_path,
                      "labels_kind": got.kind})
        progress(f"checked case {cid} ({got.kind}, reviewed by {reviewer or 'nobody'})")
    key_rows = []
    for c in cases:
        c["out_id"] = _pseudonym(c["case_id"]) if pseudonymize else c["case_id"]
        if pseudonymize:
            c["patient"] = _pseudonym(c["patient"])
            key_rows.append(f"{c['out_id']},{c['case_id']}")
    if len({c["out_id"] for c in cases}) != len(cases):
        raise InputError("two cases got the same pseudonym; report this (the pseudonym key may be too short)")
    with staged_directory(folder, "dataset.json") as stage:
        (stage / "imagesTr").mkdir()
        (stage / "labelsTr").mkdir()
        prov = []
        for c in cases:
            img_out = stage / "imagesTr" / f"{c['out_id']}_0000.nii.gz"
            lab_out = stage / "labelsTr" / f"{c['out_id']}.nii.gz"
            sitk.WriteImage(c["image"], str(img_out), True)
            lab = sitk.Cast(c["labels"], sitk.sitkUInt8)
            sitk.WriteImage(lab, str(lab_out), True)
            entry = {"case": c["out_id"], "reviewed_by": c["reviewed_by"], "labels_kind": c["labels_kind"],
                     "image_sha256": sha256_file(img_out), "labels_sha256": sha256_file(lab_out),
                     "voxels_per_label": {C.LABEL_NAMES[v]: int(n) for v, n in
                                          zip(*np.unique(sitk.GetArrayFromImage(lab), return_counts=True))}}
            if not pseudonymize:  # source paths can name the patient; a pseudonymised dataset has none
                entry.update({"source_image": str(c["image_path"]), "source_labels": str(c["labels_path"]),
                              "source_labels_sha256": sha256_file(c["labels_path"]) if c["labels_path"].is_file()
                              else None})
            prov.append(entry)
        dataset = {"name": name, "description": "Lateral lymph node regions and nodes on axial T2-weighted MRI, "
                                                "exported by LLNAssist from reviewed cases",
                   "channel_names": {"0": "T2"}, "labels": label_names(), "numTraining": len(cases),
                   "file_ending": ".nii.gz", "overwrite_image_reader_writer": "SimpleITKIO"}
        write_text(stage / "splits_final.json", json.dumps(_splits(cases, seed), indent=1) + "\n")
        write_text(stage / "provenance.json", json.dumps({"exported_by": "llnassist dataset export", "seed": seed,
                                                          "pseudonymized": pseudonymize, "cases": prov},
                                                         indent=1) + "\n")
        write_text(stage / "dataset.json", json.dumps(dataset, indent=1) + "\n")
    if pseudonymize:  # the site keeps this key; it is outside the dataset that travels
        key = out / f"Dataset{int(dataset_id):03d}_{name}.pseudonyms.csv"
        write_text(key, "pseudonym,case_id\n" + "\n".join(key_rows) + "\n")
        os.chmod(key, 0o600)
    return folder


def nnunet_integrity(folder: Path) -> None:
    """nnU-Net v2's own dataset check (raises its error on a problem); needs nnunetv2."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(folder), num_processes=1)
