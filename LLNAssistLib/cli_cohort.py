"""`llnassist batch` and `llnassist cohort ...` on the command line (the work is in batch.py,
cohort.py and stats/)."""

from __future__ import annotations

import json
import sys

from .errors import InputError


def _write(a, result: dict, kind: str) -> None:
    from .atomic import write_text

    text = json.dumps(result, indent=2, default=_jsonable) + "\n"
    if a.out:
        write_text(a.out, text)
    else:
        sys.stdout.write(text)
    if getattr(a, "report", None):
        from .stats.cohort_report import html_report

        write_text(a.report, html_report(kind, result))


def _jsonable(v):
    import numpy as np

    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(f"not JSON: {type(v).__name__}")


def _cols(text: str) -> list:
    cols = [c.strip() for c in (text or "").split(",") if c.strip()]
    return cols


def _floats(text: str) -> list:
    try:
        return [float(x) for x in _cols(text)]
    except ValueError:
        raise InputError(f"--at takes numbers separated by commas, not {text!r}") from None


def cmd_batch(a) -> int:
    from . import batch

    if a.workers < 1:
        raise InputError("--workers must be at least 1")
    if a.store and not a.dicomweb:
        raise InputError("--store stores results back into a PACS: give --dicomweb URL")
    if a.store and a.pseudonymize:
        raise InputError("--store and --pseudonymize contradict each other (a research export stays out of PACS)")

    def progress(msg):
        if not a.quiet:
            sys.stderr.write(f"[llnassist] {msg}\n")
            sys.stderr.flush()

    res = batch.run(a.cases, a.out, batch.options_from(a), workers=a.workers, scheduler=a.scheduler,
                    progress=progress)
    for case_id, err in sorted(res["failures"].items()):
        sys.stderr.write(f"failed: {case_id}: {err}\n")
    print(f"{res['cases']} cases: {res['cases'] - res['failed']} done ({res['skipped']} already), "
          f"{res['failed']} failed -> {a.out}/cohort.csv")
    return 3 if res["failed"] else 0


def cmd_survival(a) -> int:
    from . import cohort

    _write(a, cohort.survival(a.data, a.time, a.event, a.group, _cols(a.covariates), _floats(a.at), a.join,
                              a.key), "survival")
    return 0


def cmd_diagnostic(a) -> int:
    from . import cohort

    _write(a, cohort.diagnostic(a.data, a.truth, _cols(a.pred), a.by, a.join, a.key), "diagnostic")
    return 0


def cmd_model(a) -> int:
    from . import cohort

    _write(a, cohort.model(a.data, a.truth, a.prob, a.cutoff, a.join, a.key), "model")
    return 0


def cmd_table(a) -> int:
    from . import cohort

    _write(a, cohort.table(a.data, a.by, _cols(a.vars), _cols(a.nonnormal), a.join, a.key), "table")
    return 0


def cmd_refit(a) -> int:
    from . import cohort

    _write(a, cohort.refit(a.data, a.truth, _cols(a.features), a.center, a.outer, a.inner, a.seed, a.join, a.key),
           "refit")
    return 0


def add_parsers(sub, parser_class) -> None:
    s = sub.add_parser("batch", help="analyse every case of a cohort (resumable; local workers or Dask)")
    s.add_argument("cases", help="CSV with case_id,image (more columns pass through) or a folder of cases; with "
                   "--dicomweb a CSV with study_uid[,case_id,series_uid] or 'query:KEY=VALUE&...' (QIDO-RS)")
    s.add_argument("--dicomweb", metavar="URL", help="the cases are studies on this PACS (DICOMweb root URL)")
    s.add_argument("--store", action="store_true", help="with --dicomweb: store each study's SEG and SR back")
    s.add_argument("--out", required=True)
    s.add_argument("--workers", type=int, default=1, help="local worker processes (model loaded once each)")
    s.add_argument("--scheduler", help="Dask distributed scheduler address, e.g. tcp://host:8786")
    s.add_argument("--model", default=None)
    s.add_argument("--device", default="auto")
    s.add_argument("--post-treatment", action="store_true")
    s.add_argument("--sex", choices=["female", "male"])
    s.add_argument("--neoadjuvant-radiotherapy", choices=["yes", "no"])
    s.add_argument("--no-radiomics", action="store_true")
    s.add_argument("--radiomics-engine", choices=["auto", "pyradiomics", "native"], default="auto")
    s.add_argument("--no-report-images", action="store_true")
    s.add_argument("--force", action="store_true")
    s.add_argument("--pseudonymize", action="store_true", help="research export: no identifiers in any output")
    s.add_argument("--score-file")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_batch)

    c = sub.add_parser("cohort", help="cohort statistics: survival, diagnostic, model, table, refit")
    csub = c.add_subparsers(dest="cohort_command", parser_class=parser_class)

    def common(p, report=True):
        p.add_argument("data", help="CSV file")
        p.add_argument("--join", help="CSV joined on --key (e.g. the batch's cohort.csv)")
        p.add_argument("--key", default="case_id")
        p.add_argument("--out", help="JSON path (default: stdout)")
        if report:
            p.add_argument("--report", help="self-contained HTML page with tables and figures")

    p = csub.add_parser("survival", help="Kaplan-Meier, log-rank, Cox (Efron)")
    common(p)
    p.add_argument("--time", required=True)
    p.add_argument("--event", required=True, help="1 event, 0 censored")
    p.add_argument("--group")
    p.add_argument("--covariates", default="")
    p.add_argument("--at", default="", help="times for survival estimates, e.g. 12,36,60")
    p.set_defaults(func=cmd_survival)

    p = csub.add_parser("diagnostic", help="accuracy, sensitivity, specificity, PPV, NPV, kappa")
    common(p)
    p.add_argument("--truth", required=True)
    p.add_argument("--pred", required=True, help="one or more 0/1 columns, comma-separated (readers, model)")
    p.add_argument("--by")
    p.set_defaults(func=cmd_diagnostic)

    p = csub.add_parser("model", help="AUC (DeLong), Youden cut-off, calibration, decision curve")
    common(p)
    p.add_argument("--truth", required=True)
    p.add_argument("--prob", required=True)
    p.add_argument("--cutoff", type=float)
    p.set_defaults(func=cmd_model)

    p = csub.add_parser("table", help="baseline table by a grouping column")
    common(p)
    p.add_argument("--by", required=True)
    p.add_argument("--vars", required=True)
    p.add_argument("--nonnormal", default="", help="continuous columns summarised as median [IQR]")
    p.set_defaults(func=cmd_table)

    p = csub.add_parser("refit", help="ComBat + LASSO (nested CV) refit of the radiomics score")
    common(p)
    p.add_argument("--truth", required=True)
    p.add_argument("--features", required=True)
    p.add_argument("--center")
    p.add_argument("--outer", type=int, default=5)
    p.add_argument("--inner", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_refit)
