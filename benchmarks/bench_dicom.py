"""DICOM out and a PACS, timed: one phantom study (axial T2 384x384x32 and a decoy axial T1) stored in a
local Orthanc (Debian's, with DICOMweb), then

  1. `llnassist analyze FOLDER` on the same study as files (the DICOM outputs' own time is
     summary.json's dicom.write_s), and `--no-radiomics` to isolate the overhead;
  2. `llnassist analyze --dicomweb URL --study UID --store`: pull + analyse + store;
  3. the same pull done by a plain dicomweb-client script (what a user would otherwise write), and a
     plain STOW of the two files.

Each run is its own process (what a user runs). Prints a table.

    .venv/bin/python benchmarks/bench_dicom.py [--size 384 --slices 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "Testing"))


def run(args, env) -> float:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "LLNAssistLib.cli", *map(str, args)], env=env, capture_output=True,
                       text=True)
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, args))}\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0


PLAIN_PULL = r'''
import sys, requests, time
from dicomweb_client.api import DICOMwebClient
url, study, user, pw, dest = sys.argv[1:6]
s = requests.Session(); s.auth = (user, pw)
c = DICOMwebClient(url, session=s)
for se in c.search_for_series(study_instance_uid=study):
    if se["00080060"]["Value"][0] != "MR":
        continue
    for k, ds in enumerate(c.retrieve_series(study, se["0020000E"]["Value"][0])):
        ds.save_as(f"{dest}/{se['0020000E']['Value'][0]}_{k}.dcm", enforce_file_format=True)
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import pydicom
    import SimpleITK as sitk
    from pacs import PASSWORD, USER, Orthanc

    from LLNAssistLib import phantom
    from LLNAssistLib.dicom_write import SeriesSpec, StudySpec, write_mr_series

    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), LLNASSIST_DICOMWEB_USER=USER,
               LLNASSIST_DICOMWEB_PASSWORD=PASSWORD, LLNASSIST_NETRC=os.devnull)
    with tempfile.TemporaryDirectory(prefix="bench-dicom-") as tmp:
        d = Path(tmp)
        image = phantom.generate(910440, size=a.size, slices=a.slices, n_nodes=4).to_sitk()[0]
        spec = StudySpec(patient_name="BENCH^MARK", patient_id="BENCH1", seed="bench-dicom")
        t2 = write_mr_series(image, d / "study" / "t2", SeriesSpec("T2 TSE AX", 3), spec)
        write_mr_series(sitk.Cast(sitk.RescaleIntensity(image, 0, 900), sitk.sitkInt16), d / "study" / "t1",
                        SeriesSpec("T1 TSE AX", 4, echo_time_ms=11, repetition_time_ms=620), spec)
        server = Orthanc(d / "orthanc").start()
        try:
            files = sorted((d / "study").rglob("*.dcm"))
            server.client().store_instances([pydicom.dcmread(str(f)) for f in files])
            rows = []
            t = run(["analyze", d / "study", "--out", d / "files", "--device", "cpu"], env)
            s = json.loads((d / "files" / "summary.json").read_text(encoding="utf-8"))
            rows.append(("analyze DICOM folder (all outputs)", t, s["timings_s"]["write"], s["dicom"]["write_s"]))
            t = run(["analyze", d / "study", "--out", d / "files2", "--device", "cpu", "--no-radiomics",
                     "--no-report-images"], env)
            s = json.loads((d / "files2" / "summary.json").read_text(encoding="utf-8"))
            rows.append(("  same, no radiomics/key images", t, s["timings_s"]["write"], s["dicom"]["write_s"]))
            t = run(["analyze", "--dicomweb", server.url, "--study", t2["study_uid"], "--out", d / "pacs", "--store",
                     "--device", "cpu"], env)
            s = json.loads((d / "pacs" / "summary.json").read_text(encoding="utf-8"))
            rows.append(("analyze --dicomweb --store (pull+analyse+store)", t, s["timings_s"]["write"],
                         s["dicom"]["write_s"]))
            (d / "plain").mkdir()
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", PLAIN_PULL, server.url, t2["study_uid"], USER, PASSWORD,
                            str(d / "plain")], check=True, env=env, capture_output=True)
            pull = time.perf_counter() - t0
            t0 = time.perf_counter()
            server.client().store_instances([pydicom.dcmread(str(d / "files" / n))
                                             for n in ("segmentation.seg.dcm", "report.sr.dcm")])
            stow = time.perf_counter() - t0
            sizes = {n: (d / "files" / n).stat().st_size for n in sorted(os.listdir(d / "files"))}
        finally:
            server.stop()
    print(f"DICOM out and PACS; phantom {a.size}x{a.size}x{a.slices} (+ decoy T1); CPU, {a.threads} threads; "
          f"Orthanc {subprocess.run(['Orthanc', '--version'], capture_output=True, text=True).stdout.split()[1]} "
          "on localhost\n")
    print(f"{'run':50s} {'wall s':>8s} {'write s':>8s} {'SEG+SR s':>9s}")
    for name, wall, write, dcm in rows:
        print(f"{name:50s} {wall:8.2f} {write:8.2f} {dcm:9.2f}")
    print(f"{'plain dicomweb-client pull of the MR series':50s} {pull:8.2f}")
    print(f"{'plain STOW of SEG + SR':50s} {stow:8.2f}")
    print("\noutput sizes (bytes): " + ", ".join(f"{k} {v}" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
