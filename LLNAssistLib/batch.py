"""`llnassist batch`: the whole analysis over a cohort, resumable, on local worker processes or a
Dask distributed cluster.

Per case the full `analyze` into DIR/cases/<case_id>/ (published atomically, so a finished case
is one whose summary.json exists); DIR/cohort.csv (one row per case) and DIR/nodes.csv (every
node, case_id first) are rewritten atomically as cases finish; DIR/failures.json keeps the one-line
error of each failed case. A rerun skips finished cases without touching them and retries the
failed ones; a killed batch loses at most the cases in flight (their staging folders are removed
by the next run of the same case).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

from . import conventions as C
from .atomic import write_text
from .csvtable import read_table, spreadsheet_safe
from .errors import InputError

COHORT_COLUMNS = ("case_id", "status", "error", "patient_status", "n_nodes", "n_positive", "max_short_axis_mm",
                  "model_id", "model_version")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def read_cases(source: str, dicomweb: Optional[str] = None) -> list[dict]:
    """CASES.csv (case_id,image[,...]; relative image paths are relative to the CSV) or a folder of
    cases (each entry a volume file, a DICOM folder, or a folder holding image.*). With `dicomweb`
    the studies of that PACS: a CSV with study_uid[,case_id,series_uid], or a QIDO query
    ('query:ModalitiesInStudy=MR&StudyDate=20260101-20261231'), each study a case."""
    if dicomweb:
        return _dicomweb_cases(source, dicomweb)
    path = Path(source)
    if path.is_dir():
        cases = []
        for entry in sorted(path.iterdir()):
            if entry.name.startswith("."):
                continue
            images = sorted(entry.glob("image.*")) if entry.is_dir() else []
            image = images[0] if images else entry
            case_id = entry.name.split(".")[0] if entry.is_file() else entry.name
            cases.append({"case_id": case_id, "image": str(image)})
    else:
        cases = read_table(path, ("case_id", "image"), "cases")
        for c in cases:
            if c["image"] and not Path(c["image"]).is_absolute():
                c["image"] = str(path.parent / c["image"])
    if not cases:
        raise InputError(f"{source} holds no cases; give a CSV with case_id,image or a folder of cases")
    _check_case_ids(source, cases)
    for n, c in enumerate(cases, start=2):
        if not c.get("image"):
            raise InputError(f"{source} row {n}: case {c['case_id']} has no image")
    return cases


def _check_case_ids(source: str, cases: list[dict]) -> None:
    """Each case_id names the case's output folder: a safe name, used once."""
    seen = set()
    for n, c in enumerate(cases, start=2):
        if not _SAFE_ID.match(c["case_id"]):
            raise InputError(f"{source} row {n}: case_id {c['case_id']!r} is not a safe folder name (letters, digits, "
                             "'.', '_', '-'); rename the case")
        if c["case_id"] in seen:
            raise InputError(f"{source} row {n}: case_id {c['case_id']!r} appears twice; case ids must be unique")
        seen.add(c["case_id"])


def _dicomweb_cases(source: str, url: str) -> list[dict]:
    from urllib.parse import parse_qsl

    from . import dicomweb

    if source.startswith("query:"):
        query = dict(parse_qsl(source[len("query:"):], keep_blank_values=True))
        cases = [{"case_id": uid, "study_uid": uid} for uid in dicomweb.find_studies(url, query)]
        if not cases:
            raise InputError(f"the query {source[len('query:'):]!r} finds no study on {url}")
        return cases
    rows = read_table(source, ("study_uid",), "studies")
    cases = []
    for n, r in enumerate(rows, start=2):
        uid = r["study_uid"].strip()
        if not re.match(r"^[0-9][0-9.]{0,63}$", uid):
            raise InputError(f"{source} row {n}: {uid!r} is not a Study Instance UID")
        cases.append({**r, "case_id": (r.get("case_id") or "").strip() or uid, "study_uid": uid})
    _check_case_ids(source, cases)
    return cases


def analyze_case(case: dict, out_dir: str, options: dict) -> dict:
    """One case, in a worker: its cohort row and node rows; never raises for a bad case."""
    from .keyimages import best_available
    from .pipeline import AnalysisOptions, analyze

    if options.get("threads"):
        import torch

        torch.set_num_threads(int(options["threads"]))
    opts = AnalysisOptions(**{k: v for k, v in options.items() if k not in ("threads", "dicomweb", "store")})
    opts.reuse_model = True
    target = Path(out_dir) / "cases" / case["case_id"]
    try:
        if options.get("dicomweb"):
            from .dicomweb import analyze_study

            summary = analyze_study(options["dicomweb"], case["study_uid"], target, opts,
                                    series_uid=(case.get("series_uid") or "").strip() or None,
                                    do_store=bool(options.get("store")), renderer=best_available)
            failed = summary["dicomweb"]["failed"]
            if failed:
                raise InputError(f"the PACS refused {len(failed)} of the results ({', '.join(failed)})")
        else:
            summary = analyze(case["image"], target, opts, renderer=best_available)
    except InputError as exc:
        return {"case_id": case["case_id"], "status": "failed", "error": str(exc).splitlines()[0]}
    except Exception as exc:  # one case must never stop the others: its error is listed
        return {"case_id": case["case_id"], "status": "failed",
                "error": f"internal error: {exc.__class__.__name__}: {exc}"}
    return {"case_id": case["case_id"], "status": "ok", "error": "", **_summary_row(summary)}


def _summary_row(summary: dict) -> dict:
    return {"patient_status": summary["patient_status"], "n_nodes": summary["n_nodes"],
            "n_positive": summary["n_positive"], "max_short_axis_mm": summary["max_short_axis_mm"],
            "model_id": summary["model"]["id"], "model_version": summary["model"]["version"]}


def _node_rows(out_dir: Path, case_id: str) -> list:
    f = out_dir / "cases" / case_id / "nodes.csv"
    if not f.is_file():
        return []
    with open(f, newline="", encoding="utf-8") as fh:
        return [{"case_id": case_id, **r} for r in csv.DictReader(line for line in fh if not line.startswith("#"))]


def _csv(rows: list, columns: list) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: spreadsheet_safe(r.get(k, "")) for k in columns})
    return buf.getvalue()


class _Ledger:
    """What the batch has produced so far, written atomically after every finished case."""

    def __init__(self, out_dir: Path, cases: list):
        self.out_dir = out_dir
        self.order = [c["case_id"] for c in cases]
        self.extra = [k for k in cases[0] if k not in ("case_id", "image")]
        self.passthrough = {c["case_id"]: {k: c.get(k, "") for k in self.extra} for c in cases}
        self.rows: dict = {}
        self.nodes: dict = {}
        self.failures = {}
        f = out_dir / "failures.json"
        if f.is_file():
            try:
                self.failures = json.loads(f.read_text(encoding="utf-8"))
            except ValueError:
                self.failures = {}

    def done(self, case_id: str) -> bool:
        s = self.out_dir / "cases" / case_id / "summary.json"
        if not s.is_file():
            return False
        summary = json.loads(s.read_text(encoding="utf-8"))
        self.rows[case_id] = {"case_id": case_id, "status": "ok", "error": "", **_summary_row(summary)}
        self.nodes[case_id] = _node_rows(self.out_dir, case_id)
        self.failures.pop(case_id, None)
        return True

    def record(self, row: dict) -> None:
        cid = row["case_id"]
        self.rows[cid] = row
        if row["status"] == "ok":
            self.nodes[cid] = _node_rows(self.out_dir, cid)
            self.failures.pop(cid, None)
        else:
            self.failures[cid] = row["error"]
        self.write()

    def write(self) -> None:
        rows = [{**self.rows[c], **self.passthrough[c]} for c in self.order if c in self.rows]
        write_text(self.out_dir / "cohort.csv", _csv(rows, list(COHORT_COLUMNS) + self.extra))
        node_rows = [n for c in self.order for n in self.nodes.get(c, [])]
        write_text(self.out_dir / "nodes.csv", _csv(node_rows, ["case_id", *C.NODES_CSV_COLUMNS]))
        write_text(self.out_dir / "failures.json", json.dumps(self.failures, indent=1) + "\n")


def run(cases_source: str, out_dir: str, options: dict, workers: int = 1, scheduler: Optional[str] = None,
        progress: Optional[Callable[[str], None]] = None) -> dict:
    """Runs every unfinished case; returns counts. `options` are AnalysisOptions fields."""
    cases = read_cases(cases_source, options.get("dicomweb"))
    out = Path(out_dir)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    ledger = _Ledger(out, cases)
    todo = [c for c in cases if not ledger.done(c["case_id"])]
    skipped = len(cases) - len(todo)
    ledger.write()
    say = progress or (lambda _m: None)
    t0 = time.time()
    finished = failed = 0

    def report(row):
        nonlocal finished, failed
        finished += 1
        failed += row["status"] != "ok"
        ledger.record(row)
        rate = (time.time() - t0) / finished
        left = rate * (len(todo) - finished)
        say(f"batch {skipped + finished}/{len(cases)} done ({failed} failed), "
            f"{left / 60:.1f} min left" + (f"; {row['case_id']}: {row['error']}" if row["status"] != "ok" else ""))

    if not todo:
        say(f"batch {len(cases)}/{len(cases)} already done")
    elif scheduler:
        _run_dask(todo, str(out), options, scheduler, report)
    elif workers <= 1:
        for c in todo:
            report(analyze_case(c, str(out), options))
    else:
        _run_processes(todo, str(out), options, workers, report)
    failures = {c: e for c, e in ledger.failures.items() if c in ledger.rows}
    return {"cases": len(cases), "skipped": skipped, "analysed": finished, "failed": len(failures),
            "failures": failures}


def _run_processes(todo, out, options, workers, report):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // workers)
    opts = {**options, "threads": options.get("threads") or threads}
    ctx = mp.get_context("spawn")  # no inherited torch threads or locks
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(analyze_case, c, out, opts) for c in todo]
        for f in as_completed(futures):
            report(f.result())


def _run_dask(todo, out, options, scheduler, report):
    try:
        from dask.distributed import Client, as_completed
    except ImportError:
        raise InputError("--scheduler needs dask.distributed; install llnassist[cluster]") from None
    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({exc.__class__.__name__}); check the "
                         "address (tcp://host:8786) and that the scheduler runs") from None
    try:
        futures = [client.submit(analyze_case, c, out, options, key=f"llnassist-{c['case_id']}-{time.time_ns()}",
                                 pure=False) for c in todo]
        for f in as_completed(futures):
            report(f.result())
    finally:
        client.close()


def options_from(a) -> dict:
    """AnalysisOptions fields from `llnassist batch` arguments (the same as analyze's)."""
    from .pipeline import AnalysisOptions

    base = asdict(AnalysisOptions())
    mapping = {"model": a.model, "device": a.device, "post_treatment": a.post_treatment, "sex": a.sex,
               "neoadjuvant_radiotherapy": None if a.neoadjuvant_radiotherapy is None
               else a.neoadjuvant_radiotherapy == "yes",
               "radiomics": not a.no_radiomics, "radiomics_engine": a.radiomics_engine,
               "key_images": not a.no_report_images, "force": a.force, "score_file": a.score_file,
               "pseudonymize": bool(getattr(a, "pseudonymize", False))}
    base.update(mapping)
    if getattr(a, "dicomweb", None):
        base.update(dicomweb=a.dicomweb, store=a.store)
    return base
