"""`llnassist study ...`: reader-study commands (thin; everything is in `readerstudy` and `stats`)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from .csvtable import read_table
from .errors import InputError


def _yes(v: str) -> bool:
    return v.strip().lower() in ("1", "yes", "true", "y")


def _load_json(path: str, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist; check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{what} {path} is not valid JSON") from None


def _ai_from_analysis(folder: str) -> dict:
    """AI results for the aided layer from an `llnassist analyze` output folder."""
    d = Path(folder)
    summary = _load_json(str(d / "summary.json"), "analysis summary")
    nodes = []
    with open(d / "nodes.csv", newline="", encoding="utf-8") as f:
        # a result forced past the domain gate starts with a '#' line
        for row in csv.DictReader(line for line in f if not line.startswith("#")):
            nodes.append(row)
    probs = [float(n["radiomics_probability"]) for n in nodes if n.get("radiomics_probability")]
    return {"status": summary.get("patient_status"), "probability": max(probs) if probs else None,
            "nodes": nodes, "segmentation": str(d / "segmentation.seg.nrrd"), "report": str(d / "report.html"),
            "model": summary.get("model")}


def cases_from_csv(path: str) -> list[dict]:
    out = []
    for n, r in enumerate(read_table(path, ("case_id",), "cases"), start=2):
        case: dict = {"case_id": r["case_id"], "image": r.get("image") or None, "dicom_uid": r.get("dicom_uid") or None,
                      "training": _yes(r.get("training", "")), "reference_by": r.get("reference_by") or None}
        if r.get("truth_json"):
            t = _load_json(r["truth_json"], f"line {n}: truth_json")
            case["truth"] = 1 if t.get("patient_status") == "positive" else 0
            case["truth_nodes"] = t.get("nodes", [])
        if r.get("truth", "") != "":
            if r["truth"] not in ("0", "1"):
                raise InputError(f"cases line {n}: truth {r['truth']!r} must be 0 or 1")
            case["truth"] = int(r["truth"])
        ai = _ai_from_analysis(r["analysis_dir"]) if r.get("analysis_dir") else {}
        if r.get("ai_probability"):
            try:
                ai["probability"] = float(r["ai_probability"])
            except ValueError:
                raise InputError(f"cases line {n}: ai_probability {r['ai_probability']!r} is not a number") from None
        if r.get("ai_status"):
            ai["status"] = r["ai_status"]
        case["ai"] = ai or None
        out.append(case)
    return out


def cmd_create(a) -> int:
    from .readerstudy import Study

    st = Study.create(a.study, a.name, design=a.design, washout_days=a.washout_days, seed=a.seed,
                      unaided_only_fraction=a.unaided_only_fraction, actor=a.by)
    print(f"created {a.design} study {a.name!r} (washout {st.protocol['washout_days']:g} days, seed {a.seed})")
    return 0


def cmd_add_cases(a) -> int:
    from .readerstudy import Study

    cases = cases_from_csv(a.cases)
    with Study.open(a.study) as st:
        n = st.add_cases(cases, actor=a.by)
    print(f"added {n} case(s) ({sum(c['training'] for c in cases)} training)")
    return 0


def cmd_add_readers(a) -> int:
    from .readerstudy import Study

    rows = read_table(a.readers, ("reader_id",), "readers")
    readers = []
    for n, r in enumerate(rows, start=2):  # every row is checked before any is added
        years = None
        if r.get("years"):
            try:
                years = float(r["years"])
            except ValueError:
                raise InputError(f"readers line {n}: years {r['years']!r} is not a number; nothing was added") \
                    from None
        readers.append({"reader_id": r["reader_id"], "name": r.get("name", ""), "years": years,
                        "override_reason": r.get("override_reason") or None})
    with Study.open(a.study) as st:
        st.add_readers(readers, actor=a.by)  # all or none
    print(f"added {len(rows)} reader(s)")
    return 0


def cmd_remove_reader(a) -> int:
    from .readerstudy import Study

    with Study.open(a.study) as st:
        st.remove_reader(a.reader, a.reason, actor=a.by)
    print(f"reader {a.reader} deactivated; their reads are kept")
    return 0


def cmd_status(a) -> int:
    from .readerstudy import Study

    with Study.open(a.study) as st:
        s = st.status()
    if a.json:
        print(json.dumps(s, indent=2))
        return 0
    proto = f"frozen {s['protocol_hash'][:12]}" if s["frozen"] else "open"
    print(f"{s['name']}: {s['design']}, washout {s['washout_days']:g} days, {s['n_cases']} cases "
          f"(+{s['n_training_cases']} training), protocol {proto}")
    print(f"{'reader':<16}{'active':<8}{'session 1':>12}{'session 2':>12}")
    for r in s["readers"]:
        s1, s2 = r["sessions"]["1"], r["sessions"]["2"]
        print(f"{r['reader_id']:<16}{'yes' if r['active'] else 'no':<8}{s1['done']:>6}/{s1['total']:<5}"
              f"{s2['done']:>6}/{s2['total']:<5}")
    return 0


def cmd_rate(a) -> int:
    from .readerstudy import Override, Study

    point = None
    if a.point:
        try:
            point = [float(v) for v in a.point.split(",")]
        except ValueError:
            point = []
        if len(point) != 3:
            raise InputError(f"--point {a.point!r} must be three numbers R,A,S in mm")
    if a.override_reason and not a.by:
        raise InputError("a washout override needs --by COORDINATOR_ID: the coordinator who decides it (recorded "
                         "in the audit log)")
    override = Override(a.by, a.override_reason) if a.override_reason else None
    with Study.open(a.study) as st:
        res = st.record_rating(reader=a.reader, session=a.session, case=a.case, rating=a.score,
                               call=None if a.call is None else a.call == "yes", node=a.node, point=point,
                               region=a.region, side=a.side, most_suspicious=a.most_suspicious,
                               comment=a.comment or "", override=override)
        msg = f"recorded {res['node_key']} score {a.score}" + (" (already recorded)" if res["duplicate"] else "")
        if a.submit:
            sub = st.submit_read(a.reader, a.session, a.case)
            msg += "; read submitted" + (" (already)" if sub["duplicate"] else "")
    print(msg)
    return 0


def cmd_next(a) -> int:
    from .readerstudy import Study

    with Study.open(a.study) as st:
        nxt = st.next_read(a.reader) if a.session is None else st.next_case(a.reader, a.session)
    if nxt is None:
        print(f"reader {a.reader}: nothing left to read")
    else:
        wait = "" if nxt["available"] else f" (not yet: {nxt['waiting_reason']})"
        print(f"reader {a.reader}: session {nxt['session']} case {nxt['case_id']} ({nxt['modality']}), "
              f"{nxt['done']} of {nxt['total']} done{wait}")
    return 0


def cmd_export(a) -> int:
    from .atomic import write_text
    from .readerstudy import Study

    with Study.open(a.study) as st:
        text = st.export_csv(include_training=a.include_training)
        audit = st.audit_log()
        head = st.chain_head()
    write_text(a.out, text)
    if a.audit:
        write_text(a.audit, json.dumps({"chain_head": head, "entries": audit}, indent=2) + "\n")
    print(f"exported {text.count(chr(10)) - 1} rating(s) -> {a.out}; audit chain head {head}")
    return 0


def cmd_correct(a) -> int:
    """A coordinator's correction of a submitted read: a new version, the old one kept."""
    from .readerstudy import Study

    changes = {}
    if a.score is not None:
        changes["rating"] = a.score
    if a.call is not None:
        changes["call"] = a.call == "yes"
    if a.comment is not None:
        changes["comment"] = a.comment
    if not changes:
        raise InputError("nothing to correct; give --score, --call or --comment")
    with Study.open(a.study) as st:
        res = st.correct(reader=a.reader, session=a.session, case=a.case, by=a.by, reason=a.reason,
                         node_key=a.node, **changes)
    print(f"corrected: version {res['version']} of reader {a.reader}'s session-{a.session} read of case {a.case}")
    return 0


def cmd_add_staff(a) -> int:
    from .readerstudy import Study

    with Study.open(a.study) as st:
        st.add_staff(a.user, a.role, actor=a.by, name=a.name or "")
    print(f"{a.user} is a {a.role} of the study")
    return 0


def cmd_verify(a) -> int:
    """Exit 0 when the study's history is intact; 2 with every problem listed when it is not."""
    from .readerstudy import Study

    with Study.open(a.study) as st:
        res = st.verify()
    if a.head and res["chain_head"] != a.head:
        res["problems"].append(f"the chain head is {res['chain_head']}, not the {a.head} of the earlier export: "
                               "entries were removed from the end or the chain was rebuilt")
    if res["problems"]:
        for p in res["problems"][1:]:
            sys.stderr.write(f"  also: {p}\n")
        raise InputError(f"study {a.study} fails verification: {res['problems'][0]}")
    print(f"ok: {res['chained']} chained audit entries ({res['legacy_unchained']} from before the chain), every "
          f"submitted read matches its entry, triggers present; chain head {res['chain_head']}")
    return 0


def _is_sqlite(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return Path(path).suffix.lower() in (".sqlite", ".db", ".sqlite3")


def _rows_from(source: str):
    """Analysis rows from a ratings CSV or a study (file or postgresql:// URL)."""
    from .readerstudy import Study
    from .readerstudy.analysis import study_rows
    from .readerstudy.db import is_url
    from .stats.readerstudy_analysis import read_ratings

    if is_url(source) or _is_sqlite(source):
        with Study.open(source) as st:
            return study_rows(st)
    return read_ratings(source)


def _finite(obj):
    """JSON has no NaN or Infinity: undefined statistics are written as null."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def cmd_analyze(a) -> int:
    from .atomic import write_text
    from .stats import mrmc, study_report
    from .stats.readerstudy_analysis import analyze_rows

    res, arrays = analyze_rows(_rows_from(a.ratings))
    truth, ratings = arrays[3], arrays[4]
    html_path = a.html or str(Path(a.out).with_suffix(".html"))
    write_text(html_path, study_report.build(res, ratings, truth))
    write_text(a.out, json.dumps(_finite(res), indent=2, allow_nan=False) + "\n")
    for m, v in res["modalities"].items():
        print(f"{m}: mean AUC {v['mean_auc']:.4f}")
    if "or_jackknife" in res["mrmc"]:
        print("OR (jackknife) random readers and cases: "
              + mrmc.describe_rrrc(res["mrmc"]["or_jackknife"]["rrrc"], res["difference"]))
    return 0


def _int_list(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        vals = []
    if not vals or min(vals) < 2:
        raise InputError(f"{what} {text!r} must be comma-separated whole numbers >= 2")
    return vals


def cmd_power(a) -> int:
    from .atomic import write_text
    from .stats import mrmc, power
    from .stats.readerstudy_analysis import patient_level, to_arrays

    rows = _rows_from(a.pilot)
    if any("node" in r for r in rows):
        rows = patient_level(rows)
    modalities, readers, cases, truth, ratings = to_arrays(rows)
    if len(readers) < 2:
        raise InputError("the pilot has one reader; variance components need at least two")
    pilot = mrmc.obuchowski_rockette(ratings, truth, a.covariance)
    comp = power.components(pilot, len(cases))
    if not 0 < a.effect < 1:
        raise InputError(f"--effect {a.effect} must be an AUC difference between 0 and 1")
    grid = power.table(comp, _int_list(a.readers, "--readers"), _int_list(a.cases, "--cases"), a.effect, a.alpha)
    need = {r: power.cases_needed(comp, r, a.effect, a.target, a.alpha) for r in _int_list(a.readers, "--readers")}
    out = {"pilot": {"readers": len(readers), "cases": len(cases), "covariance": a.covariance,
                     "observed_auc_diff": pilot["rrrc"]["diff"]}, "components": comp, "grid": grid,
           "cases_needed": {str(r): c for r, c in need.items()}, "target_power": a.target}
    print(f"pilot: {len(readers)} readers x {len(cases)} cases; var_TR {comp['var_tr']:.3g}, var {comp['var']:.3g}, "
          f"cov1-3 {comp['cov1']:.3g} {comp['cov2']:.3g} {comp['cov3']:.3g}")
    print(f"{'readers':>8}{'cases':>8}{'power':>8}")
    for g in grid:
        print(f"{g['readers']:>8}{g['cases']:>8}{g['power']:>8.3f}")
    for r, c in need.items():
        print(f"{r} readers: {c if c else 'no feasible number of'} cases for power {a.target:g} at AUC difference "
              f"{a.effect:g}")
    if a.out:
        write_text(a.out, json.dumps(out, indent=2) + "\n")
    return 0


def cmd_serve(a) -> int:
    from .readingserver import serve

    serve(a.study, host=a.host, port=a.port, allow_network=a.allow_network, public_url=a.public_url,
          idle_minutes=a.idle_minutes)
    return 0


def cmd_reader_worker(a) -> int:
    from .webreader import run_worker

    run_worker(a.study, a.reader, port=a.port, auth_key_file=a.auth_key_file)
    return 0


def cmd_invite(a) -> int:
    from .readerstudy import Study
    from .readerstudy.access import invite

    user = a.user or a.reader
    if not user:
        raise InputError("say who the link is for: --reader ID (or --user ID for a coordinator)")
    with Study.open(a.study) as st:
        token = invite(st, user, by=a.by, expires_days=a.expires_days, login_days=a.login_days)
    base = a.url.rstrip("/")
    print(f"sign-in link for {user} (use once within {a.expires_days:g} days; give it to them privately):")
    print(f"{base}/signin?token={token}")
    return 0


def cmd_revoke(a) -> int:
    from .readerstudy import Study
    from .readerstudy.access import revoke

    with Study.open(a.study) as st:
        n = revoke(st, a.user, by=a.by, reason=a.reason)
    print(f"revoked {n['links']} unused link(s) and {n['logins']} sign-in(s) of {a.user}")
    return 0


def cmd_access(a) -> int:
    from .readerstudy import Study
    from .readerstudy.access import access_list

    with Study.open(a.study) as st:
        rows = access_list(st)
    for r in rows:
        print(f"{r['user']:<16} {r['kind']:<8} {r['state']:<8} created {r['created_at'][:16]}  expires "
              f"{r['expires_at'][:16]}")
    if not rows:
        print("no sign-in links issued yet (llnassist study invite)")
    return 0


def cmd_grant_server(a) -> int:
    from .readerstudy import Study
    from .readerstudy.access import grant_server_role

    with Study.open(a.study) as st:
        for sql in grant_server_role(st, a.role, by=a.by):
            print(sql)
    return 0


def cmd_protocol(a) -> int:
    from .readerstudy import Study

    changes: dict = {}
    if a.washout_days is not None:
        changes["washout_days"] = a.washout_days
    if a.free_order is not None:
        changes["free_order"] = a.free_order == "yes"
    with Study.open(a.study) as st:
        proto = st.set_protocol(actor=a.by, **changes) if changes else st.protocol
    print(json.dumps(proto, indent=1))
    return 0


def add_parsers(sub, parser_class) -> None:
    s = sub.add_parser("study", help="reader studies: create, add cases/readers, read, status, export, analyze")
    st = s.add_subparsers(dest="study_command", parser_class=parser_class)
    where = "study file (.sqlite) or postgresql:// URL"

    p = st.add_parser("create", help="create a study (protocol with design, washout, seed)")
    p.add_argument("study", help=where)
    p.add_argument("--name", required=True)
    p.add_argument("--design", choices=["crossover", "sequential"], default="crossover")
    p.add_argument("--washout-days", type=float, default=None, help="default 28 (crossover), 0 (sequential)")
    p.add_argument("--seed", type=int, default=0, help="randomisation seed (groups and reading orders)")
    p.add_argument("--unaided-only-fraction", type=float, default=0.2,
                   help="sequential design: fraction of cases read unaided only")
    p.add_argument("--by", default="coordinator", help="who does this (audit log)")
    p.set_defaults(func=cmd_create)

    p = st.add_parser("add-cases", help="add cases from a CSV (case_id, truth or truth_json, image, "
                      "analysis_dir or ai_probability/ai_status, training, reference_by)")
    p.add_argument("study", help=where)
    p.add_argument("cases")
    p.add_argument("--by", default="coordinator")
    p.set_defaults(func=cmd_add_cases)

    p = st.add_parser("add-readers", help="add readers from a CSV (reader_id, name, years, override_reason)")
    p.add_argument("study", help=where)
    p.add_argument("readers")
    p.add_argument("--by", default="coordinator")
    p.set_defaults(func=cmd_add_readers)

    p = st.add_parser("remove-reader", help="deactivate a reader (history kept; re-add to continue)")
    p.add_argument("study", help=where)
    p.add_argument("reader")
    p.add_argument("--reason", required=True)
    p.add_argument("--by", default="coordinator")
    p.set_defaults(func=cmd_remove_reader)

    p = st.add_parser("status", help="progress per reader and session")
    p.add_argument("study", help=where)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = st.add_parser("next", help="a reader's next case")
    p.add_argument("study", help=where)
    p.add_argument("--reader", required=True)
    p.add_argument("--session", type=int, choices=[1, 2])
    p.set_defaults(func=cmd_next)

    p = st.add_parser("rate", help="record a 1-5 score for a node (durable on return), optionally submit")
    p.add_argument("study", help=where)
    p.add_argument("--reader", required=True)
    p.add_argument("--session", type=int, required=True, choices=[1, 2])
    p.add_argument("--case", required=True)
    p.add_argument("--score", type=int, required=True, choices=[1, 2, 3, 4, 5])
    p.add_argument("--call", choices=["yes", "no"], help="LLN metastasis yes/no (needed on the most suspicious node)")
    p.add_argument("--node", help="AI node id (aided reads only)")
    p.add_argument("--point", help="R,A,S of the node in mm")
    p.add_argument("--region", choices=["II", "OB", "EI"])
    p.add_argument("--side", choices=["left", "right"])
    p.add_argument("--most-suspicious", action="store_true")
    p.add_argument("--comment")
    p.add_argument("--submit", action="store_true", help="submit the read after recording")
    p.add_argument("--override-reason", help="coordinator override of the washout, recorded in the audit log")
    p.add_argument("--by", help="the coordinator who overrides (required with --override-reason)")
    p.set_defaults(func=cmd_rate)

    p = st.add_parser("serve", help="the reading server for every reader of the study (sign-in by invite link)")
    p.add_argument("study", help=where)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this computer only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--allow-network", action="store_true",
                   help="needed to listen beyond this computer; put it behind a TLS reverse proxy (README)")
    p.add_argument("--public-url", help="the address readers open, e.g. https://reading.example.org (behind a "
                   "TLS proxy): pages are only accepted from it, and its cookies are Secure when it is https")
    p.add_argument("--idle-minutes", type=float, default=30.0,
                   help="stop a reader's station after this long without a connection")
    p.set_defaults(func=cmd_serve)

    p = st.add_parser("reader-worker", help=argparse.SUPPRESS)
    p.add_argument("study")
    p.add_argument("--reader", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--auth-key-file", required=True)
    p.set_defaults(func=cmd_reader_worker)

    p = st.add_parser("invite", help="a one-time, expiring sign-in link for a reader or coordinator")
    p.add_argument("study", help=where)
    p.add_argument("--reader", help="the reader the link is for")
    p.add_argument("--user", help="a coordinator or reference reader the link is for")
    p.add_argument("--by", default="coordinator", help="the coordinator issuing it")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the reading server's address as readers open it")
    p.add_argument("--expires-days", type=float, default=7.0, help="the link must be used within this (default 7)")
    p.add_argument("--login-days", type=float, default=14.0, help="how long the sign-in lasts (default 14)")
    p.set_defaults(func=cmd_invite)

    p = st.add_parser("revoke", help="revoke a user's unused links and sign-ins (their open page stops working)")
    p.add_argument("study", help=where)
    p.add_argument("--user", required=True)
    p.add_argument("--reason", required=True)
    p.add_argument("--by", default="coordinator")
    p.set_defaults(func=cmd_revoke)

    p = st.add_parser("access", help="sign-in links and sign-ins per user (no tokens)")
    p.add_argument("study", help=where)
    p.set_defaults(func=cmd_access)

    p = st.add_parser("grant-server", help="PostgreSQL: give the reading server's database role only what it needs")
    p.add_argument("study", help="postgresql:// URL (as the tables' owner)")
    p.add_argument("--role", required=True)
    p.add_argument("--by", default="coordinator")
    p.set_defaults(func=cmd_grant_server)

    p = st.add_parser("protocol", help="show the protocol, or change it before reading starts (coordinator)")
    p.add_argument("study", help=where)
    p.add_argument("--washout-days", type=float)
    p.add_argument("--free-order", choices=["yes", "no"], help="let readers read cases in any order")
    p.add_argument("--by", default="coordinator")
    p.set_defaults(func=cmd_protocol)

    p = st.add_parser("export", help="ratings CSV with readable labels (latest versions; no image paths)")
    p.add_argument("study", help=where)
    p.add_argument("--out", required=True)
    p.add_argument("--audit", help="also write the audit log as JSON (with its chain head)")
    p.add_argument("--include-training", action="store_true")
    p.set_defaults(func=cmd_export)

    p = st.add_parser("correct", help="a coordinator corrects a submitted read (new version; old kept, audited)")
    p.add_argument("study", help=where)
    p.add_argument("--reader", required=True)
    p.add_argument("--session", type=int, required=True)
    p.add_argument("--case", required=True)
    p.add_argument("--node", required=True, help="the rated node's key (see `study export`, column node_key)")
    p.add_argument("--by", required=True, help="the coordinator making the correction")
    p.add_argument("--reason", required=True)
    p.add_argument("--score", type=int, choices=[1, 2, 3, 4, 5])
    p.add_argument("--call", choices=["yes", "no"])
    p.add_argument("--comment")
    p.set_defaults(func=cmd_correct)

    p = st.add_parser("add-staff", help="add a coordinator or a reference reader (by a coordinator)")
    p.add_argument("study", help=where)
    p.add_argument("--user", required=True)
    p.add_argument("--role", required=True, choices=["coordinator", "reference"])
    p.add_argument("--name")
    p.add_argument("--by", default="coordinator", help="the coordinator adding them")
    p.set_defaults(func=cmd_add_staff)

    p = st.add_parser("verify", help="check the audit hash chain, the submitted reads and the triggers")
    p.add_argument("study")
    p.add_argument("--head", help="the chain head of an earlier export: detects entries removed from the end")
    p.set_defaults(func=cmd_verify)

    p = st.add_parser("analyze", help="ROC/DeLong/OR-DBM MRMC, kappa, binary call, AI, clustered node level")
    p.add_argument("ratings", help="study file/URL, or CSV with columns reader,modality,case,truth,rating "
                   "(optional call, ai_probability, ai_status, node)")
    p.add_argument("--out", required=True, help="JSON results")
    p.add_argument("--html", help="HTML report (default: beside --out, same name, .html)")
    p.set_defaults(func=cmd_analyze)

    p = st.add_parser("power", help="readers x cases for a target AUC difference from a pilot (Hillis-Obuchowski)")
    p.add_argument("pilot", help="pilot ratings CSV or study")
    p.add_argument("--effect", type=float, required=True, help="AUC difference to detect, e.g. 0.05")
    p.add_argument("--readers", default="3,4,5,6,8,10")
    p.add_argument("--cases", default="50,100,150,200,300")
    p.add_argument("--target", type=float, default=0.8)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--covariance", choices=["delong", "jackknife"], default="delong")
    p.add_argument("--out", help="JSON results")
    p.set_defaults(func=cmd_power)

