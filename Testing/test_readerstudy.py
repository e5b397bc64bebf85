"""Reader-study store: the rules (washout, blinding, immutability, audit, roles), durability
(resume, idempotent retries, SIGKILL, concurrent writers) on a real SQLite file and a real
PostgreSQL server, and the analysis of a study against independent computations."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
from conftest import REPO, run_cli

from LLNAssistLib.conventions import READER_SCALE
from LLNAssistLib.errors import InputError
from LLNAssistLib.readerstudy import Override, RuleRefused, Study
from LLNAssistLib.readerstudy.db import IntegrityRefused


class Clock:
    def __init__(self):
        self.t = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.timezone.utc)

    def __call__(self):
        return self.t

    def advance(self, **kw):
        self.t += dt.timedelta(**kw)


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "study.sqlite")
    return request.getfixturevalue("pg_url")


def _cases(n=20, with_ai=True):
    out = []
    for i in range(n):
        c = {"case_id": f"LLN{i:03d}", "truth": int(i % 5 in (0, 1)), "image": f"/data/case{i}.nii.gz"}
        if with_ai:
            c["ai"] = {"probability": round(0.05 + 0.9 * (i % 5 in (0, 1)) * 0.8 + 0.01 * i, 3),
                       "status": "positive" if i % 5 in (0, 1) else "negative",
                       "nodes": [{"node_id": "1", "centroid_r": 60.0, "centroid_a": 10.0, "centroid_s": -20.0}]}
        out.append(c)
    return out


def _study(location, clock, design="crossover", readers=("R1", "R2", "R3", "R4"), n=20, free_order=True, **kw):
    """Free order by default: most tests read cases out of the randomised order on purpose;
    test_reading_order_is_enforced_unless_the_protocol_frees_it checks the default."""
    st = Study.create(location, "LLN pilot", design=design, seed=7, clock=clock, **kw)
    if free_order:
        st.set_protocol(free_order=True)
    st.add_cases(_cases(n))
    for k, r in enumerate(readers):
        st.add_reader(r, f"Dr {r}", 3 + k)
    return st


def _start(st, reader):
    """The reader opens their first case: that starts the study (freezes the protocol, draws orders)."""
    st.open_read(reader, 1, st.next_case(reader, 1)["case_id"])


def _read(st, reader, session, case, score=3, call=False, **kw):
    st.record_rating(reader=reader, session=session, case=case, rating=score, call=call, point=(60, 10, -20), **kw)
    return st.submit_read(reader, session, case)


def test_crossover_design_is_balanced_randomised_and_frozen(location):
    clock = Clock()
    st = _study(location, clock)
    assert st.protocol["washout_days"] == 28
    first = {}
    for r in ("R1", "R2", "R3", "R4"):
        _start(st, r)
    assert st.frozen and len(st.protocol_hash) == 64
    with pytest.raises(RuleRefused, match="frozen"):
        st.set_protocol(washout_days=14)
    with pytest.raises(RuleRefused, match="training case"):
        st.add_cases([{"case_id": "LATE", "truth": 1}])
    st.add_cases([{"case_id": "TRAIN1", "training": True}])  # training cases may still be added
    groups = Counter((c["group"], c["truth"]) for c in st.cases(include_training=False))
    assert groups[(0, 1)] == groups[(1, 1)] == 4 and groups[(0, 0)] == groups[(1, 0)] == 6
    rows = st.db.all("SELECT reader_id, session, position, case_id, modality FROM assignments ORDER BY 1, 2, 3")
    for r in ("R1", "R2", "R3", "R4"):
        s1 = [x for x in rows if x[0] == r and x[1] == 1 and x[3] != "TRAIN1"]
        s2 = [x for x in rows if x[0] == r and x[1] == 2]
        assert sorted(x[3] for x in s1) == sorted(x[3] for x in s2) == [f"LLN{i:03d}" for i in range(20)]
        mod1, mod2 = {x[3]: x[4] for x in s1}, {x[3]: x[4] for x in s2}
        assert all(mod1[c] != mod2[c] for c in mod1)  # each case read once unaided, once aided
        assert Counter(mod1.values()) == {"unaided": 10, "aided": 10}
        assert [x[3] for x in s1] != [x[3] for x in s2]  # orders differ between sessions
        first[r] = mod1
    # readers balanced across groups: R1/R3 read the other group unaided first than R2/R4
    assert first["R1"] == first["R3"] and all(first["R1"][c] != first["R2"][c] for c in first["R1"])
    st.close()


def test_washout_refuses_session_two_until_it_passes_and_records_overrides(location):
    clock = Clock()
    st = _study(location, clock)
    case = st.next_case("R1", 1)["case_id"]
    _read(st, "R1", 1, case)
    nxt = st.next_case("R1", 2)
    with pytest.raises(RuleRefused, match="session 1 first"):
        st.open_read("R1", 2, nxt["case_id"] if nxt["case_id"] != case else "LLN019" if case != "LLN019" else "LLN018")
    with pytest.raises(RuleRefused, match="washout"):
        st.open_read("R1", 2, case)
    clock.advance(days=27, hours=23)
    with pytest.raises(RuleRefused, match="washout"):
        st.record_rating(reader="R1", session=2, case=case, rating=4, call=True, point=(1, 2, 3))
    with pytest.raises(RuleRefused, match="only a coordinator"):  # a reader cannot lift their own washout
        st.open_read("R1", 2, case, override=Override("R1", "I am leaving"))
    st.add_staff("coordinator Kim", "coordinator", actor="coordinator")
    st.open_read("R1", 2, case, override=Override("coordinator Kim", "reader leaves the site"))
    entry = [a for a in st.audit_log() if a["action"] == "override_washout"][-1]
    assert entry["actor"] == "coordinator Kim" and entry["detail"]["reason"] == "reader leaves the site"
    case2 = st.next_case("R1", 1)["case_id"]
    _read(st, "R1", 1, case2)
    clock.advance(days=28, minutes=1)
    assert st.open_read("R1", 2, case2)["status"] == "open"  # no override needed after 28 days
    st.close()


def test_unaided_reads_never_see_or_cite_the_ai(location):
    clock = Clock()
    st = _study(location, clock)
    _start(st, "R1")  # assignments are drawn when the reader opens the first case
    order = st.db.all("SELECT case_id, modality FROM assignments WHERE reader_id='R1' AND session=1")
    unaided = next(c for c, m in order if m == "unaided")
    aided = next(c for c, m in order if m == "aided")
    v = st.case_view("R1", 1, unaided)
    assert "ai" not in v and v["shows"] == ["image"] and "probability" not in json.dumps(v)
    assert st.case_view("R1", 1, aided)["ai"]["status"] in ("positive", "negative")
    with pytest.raises(RuleRefused, match="unaided"):
        st.record_rating(reader="R1", session=1, case=unaided, rating=4, call=True, node="1")
    st.record_rating(reader="R1", session=1, case=aided, rating=4, call=True, node="1")
    st.close()


def test_submitted_reads_are_immutable_corrections_are_versions_with_audit(location):
    clock = Clock()
    st = _study(location, clock)
    case = st.next_case("R2", 1)["case_id"]
    st.open_read("R2", 1, case)  # the case is shown: the timer starts
    clock.advance(seconds=5)
    st.record_rating(reader="R2", session=1, case=case, rating=2, call=False, point=(60, 10, -20))
    clock.advance(seconds=40)
    sub = st.submit_read("R2", 1, case)
    assert sub["duration_s"] == pytest.approx(45.0)
    # the same content again (a retry) is a no-op; different content is refused
    again = st.record_rating(reader="R2", session=1, case=case, rating=2, call=False, point=(60, 10, -20))
    assert again["duplicate"]
    with pytest.raises(RuleRefused, match="immutable"):
        st.record_rating(reader="R2", session=1, case=case, rating=5, call=True, point=(60, 10, -20))
    # the database itself refuses rewriting history, whatever the front end does
    with pytest.raises(IntegrityRefused):
        with st.db.transaction():
            st.db.run("UPDATE ratings SET score = 5")
    for table in ("ratings", "reads", "audit", "cases", "readers"):
        with pytest.raises(IntegrityRefused):
            with st.db.transaction():
                st.db.run(f"DELETE FROM {table}")
    with pytest.raises(IntegrityRefused):
        with st.db.transaction():
            st.db.run("UPDATE audit SET actor = 'x'")
    clock.advance(hours=1)
    key = st.final_ratings()[0]["node_key"]
    with pytest.raises(RuleRefused, match="only a coordinator"):  # readers do not correct their own reads
        st.correct(reader="R2", session=1, case=case, by="R2", reason="clicked 2 instead of 4", node_key=key,
                   rating=4)
    st.correct(reader="R2", session=1, case=case, by="coordinator", reason="clicked 2 instead of 4",
               node_key=key, rating=4)
    final = st.final_ratings()
    assert len(final) == 1 and final[0]["rating"] == 4 and final[0]["version"] == 2
    versions = st.db.all("SELECT version, status FROM reads WHERE reader_id='R2' AND case_id=? ORDER BY version",
                         (case,))
    assert versions == [(1, "superseded"), (2, "submitted")]
    old = st.db.one("SELECT score FROM ratings g JOIN reads r ON r.read_id=g.read_id WHERE r.version=1 AND "
                    "r.reader_id='R2'")
    assert old == (2,)  # the original is kept
    entry = [a for a in st.audit_log() if a["action"] == "correct"][-1]
    assert entry["actor"] == "coordinator" and entry["detail"]["before"] == {"rating": 2}
    assert entry["detail"]["after"] == {"rating": 4} and entry["detail"]["reason"] == "clicked 2 instead of 4"
    st.close()


def test_resume_after_restart_and_idempotent_submit(location):
    clock = Clock()
    st = _study(location, clock)
    first = st.next_case("R3", 1)
    assert first["done"] == 0 and not first["resumed"]
    case = first["case_id"]
    st.record_rating(reader="R3", session=1, case=case, rating=5, call=True, point=(60, 10, -20), most_suspicious=True)
    st.record_rating(reader="R3", session=1, case=case, rating=2, point=(-60, 12, -18))
    st.close()
    st = Study.open(location, clock=clock)  # "restart"
    again = st.next_case("R3", 1)
    assert again["case_id"] == case and again["resumed"]
    read_id = st.db.one("SELECT read_id FROM reads WHERE reader_id='R3'")[0]
    assert sorted(r["rating"] for r in st.ratings_of(read_id)) == [2, 5]
    a = st.submit_read("R3", 1, case)
    b = st.submit_read("R3", 1, case)  # double click
    assert not a["duplicate"] and b["duplicate"] and a["read_id"] == b["read_id"]
    assert st.db.one("SELECT COUNT(*) FROM reads WHERE reader_id='R3'")[0] == 1
    nxt = st.next_case("R3", 1)
    assert nxt["case_id"] != case and nxt["done"] == 1 and nxt["total"] == 20
    st.close()


def test_submit_needs_most_suspicious_and_binary_call(location):
    clock = Clock()
    st = _study(location, clock)
    case = st.next_case("R1", 1)["case_id"]
    with pytest.raises(RuleRefused, match="rate it first"):
        st.submit_read("R1", 1, case)
    st.record_rating(reader="R1", session=1, case=case, rating=4, point=(60, 10, -20))
    st.record_rating(reader="R1", session=1, case=case, rating=3, point=(-60, 10, -20))
    with pytest.raises(RuleRefused, match="most suspicious"):
        st.submit_read("R1", 1, case)
    st.record_rating(reader="R1", session=1, case=case, rating=4, point=(60, 10, -20), most_suspicious=True)
    with pytest.raises(RuleRefused, match="binary call"):
        st.submit_read("R1", 1, case)
    st.record_rating(reader="R1", session=1, case=case, rating=4, point=(60, 10, -20), most_suspicious=True,
                     call=True)
    assert st.submit_read("R1", 1, case)["status"] == "submitted"
    for bad in (0, 6, 3.5, True):
        with pytest.raises(Exception, match="1-5"):
            st.record_rating(reader="R1", session=1, case=case, rating=bad)
    st.close()


def test_readers_roles_removal_and_readd_keep_history(location):
    clock = Clock()
    st = Study.create(location, "roles", clock=clock)
    st.add_cases([{"case_id": "A", "truth": 1, "reference_by": "PATH1"}, {"case_id": "B", "truth": 0}])
    with pytest.raises(RuleRefused, match="reference standard"):
        st.add_reader("PATH1", "Dr Path")
    st.add_reader("PATH1", "Dr Path", override_reason="pathologist reads only images after 6 months")
    st.add_reader("R1", "Dr One", 4)
    case = st.next_case("R1", 1)["case_id"]
    _read(st, "R1", 1, case, score=4, call=True)
    st.remove_reader("R1", "on leave")
    with pytest.raises(RuleRefused, match="removed"):
        st.next_case("R1", 1)
    st.add_reader("R1", "Dr One", 4)
    nxt = st.next_case("R1", 1)
    assert nxt["done"] == 1 and nxt["case_id"] != case
    assert [a["action"] for a in st.audit_log()].count("readd_reader") == 1
    st.close()


def test_sequential_design_aided_follows_unaided(location):
    clock = Clock()
    st = _study(location, clock, design="sequential", readers=("R1",), unaided_only_fraction=0.2)
    assert st.protocol["washout_days"] == 0
    _start(st, "R1")
    s2 = st.db.all("SELECT case_id FROM assignments WHERE reader_id='R1' AND session=2")
    assert len(s2) == 16  # 20 % of 20 cases (stratified) kept unaided-only
    seen = []
    for _ in range(40):
        nxt = st.next_read("R1")
        if nxt is None:
            break
        seen.append((nxt["session"], nxt["case_id"]))
        if nxt["session"] == 1:
            _read(st, "R1", 1, nxt["case_id"])
            if nxt["case_id"] in {c for (c,) in s2}:
                s1 = [x[0] for x in st.db.all("SELECT case_id FROM assignments WHERE reader_id='R1' AND session=1")]
                other = next((c for c in s1 if not st.db.one("SELECT 1 FROM reads WHERE case_id=? AND "
                                                             "reader_id='R1'", (c,))), None)
                if other:
                    with pytest.raises(RuleRefused, match="aided read"):
                        st.open_read("R1", 1, other)
        else:
            assert seen[-2] == (1, nxt["case_id"])  # aided right after the unaided read of that case
            _read(st, "R1", 2, nxt["case_id"], node="1")
    assert len(seen) == 36
    st.close()


_WRITER = r"""
import sys, datetime as dt
from LLNAssistLib.readerstudy import Study
loc, reader, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
st = Study.open(loc)
for i in range(n):
    nxt = st.next_case(reader, 1)
    if nxt is None:
        break
    st.record_rating(reader=reader, session=1, case=nxt["case_id"], rating=1 + i % 5, call=bool(i % 2),
                     point=(float(i), 0.0, 0.0))
    st.submit_read(reader, 1, nxt["case_id"])
    print(nxt["case_id"], 1 + i % 5, flush=True)  # acknowledged: the call returned
"""


def _writer(location, reader, n):
    return subprocess.Popen([sys.executable, "-c", _WRITER, location, reader, str(n)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_sigkill_loses_nothing_acknowledged(location):
    st = _study(location, Clock(), n=400, readers=("R1",))
    st.close()
    p = _writer(location, "R1", 400)
    acked = []
    t0 = time.time()
    while len(acked) < 25 and time.time() - t0 < 120:
        line = p.stdout.readline()
        if not line:
            break
        acked.append(line.split())
    os.kill(p.pid, signal.SIGKILL)  # in the middle of the next write
    p.wait()
    assert len(acked) >= 25
    st = Study.open(location)
    final = {(r["case"]): r["rating"] for r in st.final_ratings()}
    for case, score in acked:
        assert final[case] == int(score)
    assert st.db.integrity_check() == "ok"
    # nothing half-written: every submitted read has its rating
    assert st.db.one("SELECT COUNT(*) FROM reads r WHERE status='submitted' AND NOT EXISTS "
                     "(SELECT 1 FROM ratings g WHERE g.read_id = r.read_id)")[0] == 0
    nxt = st.next_case("R1", 1)  # the reader resumes where the killed process stopped
    assert nxt["done"] >= len(acked)
    st.close()


def test_two_concurrent_writers_lose_nothing(location):
    st = _study(location, Clock(), n=60, readers=("A", "B"))
    st.close()
    procs = [_writer(location, r, 60) for r in ("A", "B")]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    st = Study.open(location)
    counts = Counter(r["reader"] for r in st.final_ratings())
    assert counts == {"A": 60, "B": 60}
    assert all(len(o.splitlines()) == 60 for o in outs)
    assert st.db.integrity_check() == "ok"
    st.close()


def _simulate(st, clock, rng, readers, gain=1.0):
    """Every reader reads every case in both sessions; aided ratings track truth better."""
    truth = {c["case_id"]: c["truth"] or 0 for c in st.cases()}
    for session in (1, 2):
        if session == 2:
            clock.advance(days=29)
        for r in readers:
            while (nxt := st.next_case(r, session)) is not None:
                c = nxt["case_id"]
                sep = 1.0 + (gain if nxt["modality"] == "aided" else 0.0)
                latent = rng.normal(sep * truth[c], 1.0)
                score = int(np.clip(np.round(3 + latent - sep / 2), 1, 5))
                clock.advance(seconds=30)
                _read(st, r, session, c, score=score, call=score >= 4)


def test_study_analysis_matches_independent_computation(location, tmp_path):
    from scipy.stats import mannwhitneyu

    clock = Clock()
    st = _study(location, clock, n=40, readers=("R1", "R2", "R3"))
    st.add_cases([{"case_id": "TRAIN", "training": True, "truth": 1}])
    _simulate(st, clock, np.random.default_rng(3), ("R1", "R2", "R3"))
    st.close()
    out = tmp_path / "res.json"
    run_cli("study", "analyze", location, "--out", out, check_rc=0)
    res = json.loads(out.read_text(encoding="utf-8"))
    run_cli("study", "export", location, "--out", tmp_path / "export.csv", check_rc=0)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "export.csv")))
    assert {r["case"] for r in rows} == {f"LLN{i:03d}" for i in range(40)}  # training case excluded
    assert "image" not in rows[0] and all("/data/" not in v for r in rows for v in r.values())
    assert {r["rating_label"] for r in rows} <= set(READER_SCALE.values())
    assert {r["rating"] for r in rows} == {"1", "2", "3", "4", "5"}
    for rd in ("R1", "R2", "R3"):
        for m in ("aided", "unaided"):
            sel = [r for r in rows if r["reader"] == rd and r["modality"] == m]
            assert len(sel) == 40
            y = [int(r["truth"]) for r in sel]
            x = np.array([int(r["rating"]) for r in sel])
            yy = np.array(y, bool)
            auc = mannwhitneyu(x[yy], x[~yy]).statistic / (yy.sum() * (~yy).sum())  # independent of our code
            assert res["readers"][rd][m]["auc"] == pytest.approx(auc, abs=1e-12)
            tp = sum(1 for r in sel if r["truth"] == "1" and r["call"] == "yes")
            assert res["binary_call"][rd][m]["sensitivity"] == pytest.approx(tp / sum(y))
    assert res["ai"]["probability"]["auc"] == pytest.approx(1.0)  # the fake AI separates perfectly
    assert res["modalities"]["aided"]["mean_auc"] > res["modalities"]["unaided"]["mean_auc"]
    assert {k["reader"] for k in res["kappa_vs_ai"]} == {"R1", "R2", "R3"}
    assert "rrrc" in res["mrmc"]["or_delong"] and (tmp_path / "res.html").is_file()


def test_cli_study_workflow_and_errors(tmp_path):
    study = tmp_path / "s.sqlite"
    cases = tmp_path / "cases.csv"
    cases.write_text("case_id,truth,image,ai_probability,ai_status\nC1,1,/x/1.nii.gz,0.8,positive\n"
                     "C2,0,/x/2.nii.gz,0.2,negative\n")
    readers = tmp_path / "readers.csv"
    readers.write_text("reader_id,name,years\nR1,Dr One,5\n")
    run_cli("study", "create", study, "--name", "cli", "--washout-days", "14", check_rc=0)
    run_cli("study", "add-cases", study, cases, check_rc=0)
    run_cli("study", "add-readers", study, readers, check_rc=0)
    p = run_cli("study", "next", study, "--reader", "R1", check_rc=0)
    case = p.stdout.split("case ")[1].split()[0]
    run_cli("study", "rate", study, "--reader", "R1", "--session", "1", "--case", case, "--score", "4",
            "--call", "yes", "--point", "1,2,3", "--submit", check_rc=0)
    p = run_cli("study", "rate", study, "--reader", "R1", "--session", "1", "--case", case, "--score", "4",
                "--call", "yes", "--point", "1,2,3", "--submit", check_rc=0)
    assert "already" in p.stdout
    p = run_cli("study", "status", study, check_rc=0)
    assert "R1" in p.stdout and "1/2" in p.stdout.replace(" ", "")
    bad = [
        (("study", "create", study, "--name", "again"), "already exists"),
        (("study", "add-cases", study, cases), "already in the study"),
        (("study", "add-cases", tmp_path / "nope.sqlite", cases), "does not exist"),
        (("study", "status", cases), "not an LLNAssist study"),
        (("study", "next", study, "--reader", "ZZ"), "not in this study"),
        (("study", "rate", study, "--reader", "R1", "--session", "2", "--case", case, "--score", "3", "--call",
          "no"), "washout"),
        (("study", "rate", study, "--reader", "R1", "--session", "1", "--case", case, "--score", "2", "--call",
          "no", "--point", "1,2,3"), "immutable"),
        (("study", "rate", study, "--reader", "R1", "--session", "1", "--case", case, "--score", "9"), "invalid"),
        (("study", "create", tmp_path / "x.sqlite", "--name", "x", "--washout-days", "-3"), "negative"),
        (("study", "analyze", study, "--out", tmp_path / "o.json"), "modality"),
        (("study", "status", "postgresql://nobody@127.0.0.1:1/none"), "cannot connect"),
    ]
    for args, msg in bad:
        p = run_cli(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.startswith("error:") and msg in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
    c2 = tmp_path / "c2.csv"
    c2.write_text("case_id,truth\nC9,maybe\n")
    p = run_cli("study", "add-cases", study, c2)
    assert p.returncode == 2 and "must be 0 or 1" in p.stderr
    c3 = tmp_path / "c3.csv"
    c3.write_text("id,truth\nC9,1\n")
    p = run_cli("study", "add-cases", study, c3)
    assert p.returncode == 2 and "lacks column" in p.stderr


def test_reading_session_resumes_preloads_and_times(tmp_path):
    from LLNAssistLib.readerstudy.session import ReadingSession

    clock = Clock()
    loc = str(tmp_path / "s.sqlite")
    st = _study(loc, clock, readers=("R1",), n=4)
    ses = ReadingSession(st, "R1")
    first = ses.current
    assert first["session"] == 1 and ses.progress_text().startswith("session 1: case 1 of 4")
    if first["modality"] == "unaided":
        assert "ai" not in first["view"]
    peek = ses.peek_next()
    assert peek and peek["case_id"] != first["case_id"] and peek["image"].startswith("/data/")
    clock.advance(seconds=42)
    assert ses.seconds_on_case() == pytest.approx(42)
    ses.rate(4, call=True, point=(1, 2, 3), most_suspicious=True)
    st.close()
    st = Study.open(loc, clock=clock)  # Slicer restarted
    ses = ReadingSession(st, "R1")
    assert ses.current["case_id"] == first["case_id"] and ses.ratings()[0]["rating"] == 4
    nxt = ses.submit()
    assert nxt["case_id"] == peek["case_id"]
    for _ in range(3):
        ses.rate(2, call=False, point=(0, 0, 0))
        ses.submit()
    assert ses.current is not None and not ses.current["available"] and "washout" in ses.waiting
    with pytest.raises(Exception, match="washout"):
        ses.rate(3)
    clock.advance(days=29)
    assert ses.advance()["session"] == 2
    st.close()


def test_crossover_groups_stay_balanced_with_odd_strata(tmp_path):
    st = Study.create(str(tmp_path / "s.sqlite"), "odd", seed=3)
    st.add_cases([{"case_id": f"P{i}", "truth": 1} for i in range(3)] + [{"case_id": f"N{i}", "truth": 0}
                                                                         for i in range(3)])
    st.add_reader("R1")
    _start(st, "R1")
    groups = Counter(c["group"] for c in st.cases())
    assert groups == {0: 3, 1: 3}
    st.close()


def test_node_level_analysis_matches_rated_points_to_reference_nodes(tmp_path):
    from LLNAssistLib.readerstudy.analysis import analyze_study

    clock = Clock()
    st = Study.create(str(tmp_path / "n.sqlite"), "nodes", washout_days=0, clock=clock)
    cases = []
    for i in range(12):
        pos = i % 3 == 0
        nodes = [{"node_id": "a", "status": "positive" if pos else "negative", "centroid_r": 60.0,
                  "centroid_a": 10.0, "centroid_s": -20.0},
                 {"node_id": "b", "status": "negative", "centroid_r": -60.0, "centroid_a": 12.0, "centroid_s": -25.0}]
        cases.append({"case_id": f"C{i:02d}", "truth": int(pos), "truth_nodes": nodes})
    st.add_cases(cases)
    for r in ("R1", "R2"):
        st.add_reader(r)
    rng = np.random.default_rng(0)
    for session in (1, 2):
        for r in ("R1", "R2"):
            while (nxt := st.next_case(r, session)) is not None:
                c = nxt["case_id"]
                pos = int(c[1:]) % 3 == 0
                s_a = int(np.clip(round(2 + 2 * pos + rng.normal(0, 0.7)), 1, 5))
                # points a few mm off the centres still match; a third point far from any node does not
                st.record_rating(reader=r, session=session, case=c, rating=s_a, call=s_a >= 4,
                                 point=(62.0, 9.0, -21.0), most_suspicious=True)
                st.record_rating(reader=r, session=session, case=c, rating=1, point=(-58.5, 12.0, -24.0))
                st.record_rating(reader=r, session=session, case=c, rating=2, point=(0.0, -80.0, 0.0))
                st.submit_read(r, session, c)
    res, _ = analyze_study(st)
    assert res["unit"].startswith("patient") and res["n_cases"] == 12 and res["n_diseased"] == 4
    for r in ("R1", "R2"):
        for m in ("aided", "unaided"):
            nl = res["node_level"][r][m]
            assert (nl["n_nodes"], nl["n_positive"], nl["n_patients"]) == (36, 4, 12)
        assert res["node_level"][r]["paired"]["n_nodes"] == 36
    st.close()


def test_export_escapes_comments_a_spreadsheet_would_run_as_formulas(tmp_path):
    import csv as _csv

    clock = Clock()
    st = _study(str(tmp_path / "s.sqlite"), clock, readers=("R1",), n=10)
    case = st.next_case("R1", 1)["case_id"]
    st.open_read("R1", 1, case)
    st.record_rating(reader="R1", session=1, case=case, rating=4, call=True, point=(-60.5, 10, -20),
                     most_suspicious=True, comment='=HYPERLINK("http://x","click")')
    st.submit_read("R1", 1, case)
    rows = list(_csv.DictReader(st.export_csv().splitlines()))
    assert rows[0]["comment"] == "'=HYPERLINK(\"http://x\",\"click\")"
    assert rows[0]["r"] == "-60.5"  # numbers stay numbers


@pytest.mark.parametrize("days", ["nan", "inf", "-1"])
def test_washout_must_be_a_finite_number_of_days(tmp_path, days):
    p = run_cli("study", "create", tmp_path / f"s{days}.sqlite", "--name", "x", "--washout-days", days, check_rc=2)
    assert p.stderr.startswith("error: washout of") and not (tmp_path / f"s{days}.sqlite").exists()
    st = Study.create(str(tmp_path / "ok.sqlite"), "x", washout_days=14) if days == "nan" else None
    if st is not None:
        with pytest.raises(Exception, match="washout"):
            st.set_protocol(washout_days=float("nan"))


def _raw(location, *statements):
    """SQL run straight on the database, as someone with write access to it could."""
    if location.startswith("postgresql"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            for sql in statements:
                conn.execute(sql)
    else:
        import sqlite3

        conn = sqlite3.connect(location, isolation_level=None)
        for sql in statements:
            conn.execute(sql)
        conn.close()


def _study_with_reads(location):
    clock = Clock()
    st = _study(location, clock, readers=("R1", "R2"), n=10)
    done = []
    for reader in ("R1", "R2"):
        for _ in range(3):
            case = st.next_case(reader, 1)["case_id"]
            st.open_read(reader, 1, case)
            _read(st, reader, 1, case, score=4, call=True, most_suspicious=True)
            done.append((reader, case))
    st.correct(reader="R1", session=1, case=done[0][1], by="coordinator", reason="typo", node_key=st.ratings_of(
        st._latest_read("R1", 1, done[0][1])[0])[0]["node_key"], rating=5)
    return st, done


def test_verify_passes_an_untouched_study_and_catches_each_kind_of_tampering(location):
    st, done = _study_with_reads(location)
    res = st.verify()
    assert res["ok"] and res["chained"] == res["entries"] and res["chain_head"], res["problems"]
    st.close()
    # 1. an edited score, with the trigger that forbids it dropped first
    drop = "DROP TRIGGER ratings_frozen" + (" ON ratings" if location.startswith("postgresql") else "")
    _raw(location, drop, "UPDATE ratings SET score = 1 WHERE score = 4 AND node_key = (SELECT MIN(node_key) FROM "
                         "ratings WHERE score = 4)")
    st = Study.open(location)
    problems = st.verify()["problems"]
    assert any("differs from what was submitted" in p for p in problems), problems
    assert any("ratings_frozen" in p and "dropped" in p for p in problems), problems
    st.close()


def test_verify_catches_a_deleted_rating_and_a_deleted_audit_entry(location):
    st, _ = _study_with_reads(location)
    assert st.verify()["ok"]
    st.close()
    pg = location.startswith("postgresql")
    _raw(location, "DROP TRIGGER no_delete_ratings" + (" ON ratings" if pg else ""),
         "DELETE FROM ratings WHERE read_id = (SELECT MIN(read_id) FROM reads WHERE status = 'submitted')")
    st = Study.open(location)
    assert any("differs from what was submitted" in p for p in st.verify()["problems"])
    st.close()
    _raw(location, "DROP TRIGGER no_delete_audit" + (" ON audit" if pg else ""),
         "DELETE FROM audit WHERE seq = (SELECT MIN(seq) + 3 FROM audit)")
    st = Study.open(location)
    assert any("does not continue the hash chain" in p for p in st.verify()["problems"])
    st.close()


def test_study_verify_cli_and_the_exported_chain_head(tmp_path):
    location = str(tmp_path / "s.sqlite")
    st, _ = _study_with_reads(location)
    st.close()
    p = run_cli("study", "export", location, "--out", tmp_path / "r.csv", "--audit", tmp_path / "a.json", check_rc=0)
    head = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))["chain_head"]
    assert head in p.stdout
    assert "ok:" in run_cli("study", "verify", location, "--head", head, check_rc=0).stdout
    _raw(location, "DROP TRIGGER no_delete_audit", "DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)")
    p = run_cli("study", "verify", location, "--head", head, check_rc=2)
    assert "fails verification" in p.stderr and "removed from the end" in p.stderr


def test_reader_ids_are_compared_ignoring_case_and_spacing_and_imports_are_all_or_nothing(tmp_path):
    st = Study.create(str(tmp_path / "s.sqlite"), "x", seed=1)
    cases = _cases(6)
    cases[0]["reference_by"] = "Dr Smith"
    st.add_cases(cases)
    with pytest.raises(RuleRefused, match="reference standard"):
        st.add_reader("  dr   SMITH ")
    st.add_reader(" R1 ")
    assert [r["reader_id"] for r in st.readers()] == ["R1"]
    with pytest.raises(Exception, match="already in the study"):
        st.add_reader("r1")
    st.close()
    (tmp_path / "readers.csv").write_text("reader_id,name,years\nR2,Dr Two,4\nR3,Dr Three,5\nr2,Again,1\n")
    p = run_cli("study", "add-readers", tmp_path / "s.sqlite", tmp_path / "readers.csv", check_rc=2)
    assert "listed twice" in p.stderr
    (tmp_path / "readers2.csv").write_text("reader_id,name,years\nR4,Dr Four,4\nR5,Dr Five,many\n")
    p = run_cli("study", "add-readers", tmp_path / "s.sqlite", tmp_path / "readers2.csv", check_rc=2)
    assert "years 'many' is not a number" in p.stderr
    st = Study.open(str(tmp_path / "s.sqlite"))
    assert [r["reader_id"] for r in st.readers()] == ["R1"]  # nothing of either failed import
    st.close()


def test_looking_at_the_next_case_does_not_start_the_study(location):
    clock = Clock()
    st = _study(location, clock, readers=("R1",), n=10)
    first = st.next_case("R1", 1)
    assert first["done"] == 0 and not st.frozen
    st.add_cases([{"case_id": "LATE01", "truth": 1}])  # still possible: nobody has started reading
    st.set_protocol(washout_days=21)
    nxt = st.next_case("R1", 1)
    st.open_read("R1", 1, nxt["case_id"])
    assert st.frozen and st.next_case("R1", 1)["case_id"] == nxt["case_id"]  # resumes the opened read
    assert "LATE01" in [c["case_id"] for c in st.cases()]
    with pytest.raises(RuleRefused, match="fixed"):
        st.add_cases([{"case_id": "TOO_LATE", "truth": 0}])


def test_roles_coordinators_manage_readers_only_read_and_the_cli_names_the_real_actor(location, tmp_path):
    clock = Clock()
    st = _study(location, clock, readers=("R1", "R2"), n=10)
    assert st.role_of("coordinator") == "coordinator" and st.role_of("R1") == "reader" and st.role_of("x") is None
    for call in (lambda: st.add_cases([{"case_id": "X1", "truth": 1}], actor="R1"),
                 lambda: st.add_reader("R9", actor="R1"), lambda: st.remove_reader("R2", "gone", actor="R1"),
                 lambda: st.set_protocol(actor="R2", washout_days=1),
                 lambda: st.add_staff("R1", "coordinator", actor="R1")):
        with pytest.raises(RuleRefused, match="only a coordinator"):
            call()
    st.add_staff("Dr Ref", "reference", actor="coordinator")
    assert st.role_of("dr ref") == "reference"
    with pytest.raises(RuleRefused, match="only a coordinator"):
        st.add_reader("R7", actor="Dr Ref")
    actions = [(a["actor"], a["action"]) for a in st.audit_log()]
    assert ("coordinator", "add_staff") in actions
    assert not any(a == "R1" and act.startswith("add") for a, act in actions)
    st.close()


def test_study_correct_and_override_on_the_cli_need_a_named_coordinator(tmp_path):
    location = str(tmp_path / "s.sqlite")
    st, done = _study_with_reads(location)
    reader, case = done[1]
    key = st.ratings_of(st._latest_read(reader, 1, case)[0])[0]["node_key"]
    st.close()
    base = ["study", "correct", location, "--reader", reader, "--session", "1", "--case", case, "--node", key,
            "--reason", "typo", "--score", "2"]
    p = run_cli(*base, "--by", reader, check_rc=2)
    assert "only a coordinator" in p.stderr
    assert "corrected: version 2" in run_cli(*base, "--by", "coordinator", check_rc=0).stdout
    p = run_cli("study", "rate", location, "--reader", "R1", "--session", "2", "--case", done[2][1], "--score", "3",
                "--override-reason", "leaving", check_rc=2)
    assert "needs --by COORDINATOR_ID" in p.stderr


def test_reading_order_is_enforced_unless_the_protocol_frees_it(location, tmp_path):
    clock = Clock()
    st = _study(location, clock, readers=("R1",), n=6, free_order=False)
    assert st.protocol["free_order"] is False
    first = st.next_case("R1", 1)["case_id"]
    order = [c for c, _ in st._orders("R1", 1, st._groups(st.protocol))[0]]
    assert order[0] == first
    with pytest.raises(RuleRefused, match=f"reads case {first} before case {order[2]}"):
        st.record_rating(reader="R1", session=1, case=order[2], rating=3, call=True, point=(1, 2, 3))
    assert st.db.one("SELECT COUNT(*) FROM reads")[0] == 0  # the refused rating opened nothing
    _read(st, "R1", 1, first)
    _read(st, "R1", 1, order[1])  # the next in order is allowed
    with pytest.raises(RuleRefused, match="frozen"):
        st.set_protocol(free_order=True)
    st.close()
    # the CLI: a coordinator frees the order before reading starts; values are checked
    path = tmp_path / "free.sqlite"
    run_cli("study", "create", path, "--name", "x", check_rc=0)
    p = run_cli("study", "protocol", path, "--free-order", "yes", "--by", "R9", check_rc=2)
    assert "only a coordinator" in p.stderr
    p = run_cli("study", "protocol", path, "--free-order", "yes", check_rc=0)
    assert json.loads(p.stdout)["free_order"] is True
    p = run_cli("study", "protocol", path, "--washout-days", "nan", check_rc=2)
    assert "washout" in p.stderr and "Traceback" not in p.stderr


def test_sign_in_links_are_personal_one_time_expiring_and_revocable(location):
    from LLNAssistLib.readerstudy import access

    clock = Clock()
    st = _study(location, clock, readers=("R1", "R2"), n=4)
    with pytest.raises(RuleRefused, match="only a coordinator"):
        access.invite(st, "R2", by="R1")
    with pytest.raises(InputError, match="not a member"):
        access.invite(st, "R9", by="coordinator")
    with pytest.raises(InputError, match="days"):
        access.invite(st, "R1", by="coordinator", expires_days=float("nan"))
    token = access.invite(st, " r1 ", by="coordinator")  # ids match ignoring case and spacing
    login, user = access.sign_in(st, token)
    assert user == access.User("R1", "reader") and access.user_of(st, login) == user
    with pytest.raises(access.AccessRefused, match="already used"):
        access.sign_in(st, token)
    for bad in ("", "x" * 500, token[:-1] + ("A" if token[-1] != "A" else "B")):
        with pytest.raises(access.AccessRefused, match="not valid"):
            access.sign_in(st, bad)
        assert access.user_of(st, bad) is None
    # an unused link expires; a sign-in ends after its days
    late = access.invite(st, "R2", by="coordinator", expires_days=1, login_days=2)
    clock.advance(days=1, minutes=1)
    with pytest.raises(access.AccessRefused, match="expired"):
        access.sign_in(st, late)
    login2, _ = access.sign_in(st, access.invite(st, "R2", by="coordinator", login_days=2))
    assert access.user_of(st, login2).user_id == "R2"
    clock.advance(days=2, minutes=1)
    assert access.user_of(st, login2) is None
    # revocation ends sign-ins and unused links at once; a removed reader loses access too
    unused = access.invite(st, "R1", by="coordinator")
    with pytest.raises(InputError, match="reason"):
        access.revoke(st, "R1", by="coordinator", reason="")
    assert access.revoke(st, "R1", by="coordinator", reason="lost laptop") == {"links": 1, "logins": 1}
    assert access.user_of(st, login) is None
    with pytest.raises(access.AccessRefused, match="revoked"):
        access.sign_in(st, unused)
    login3, _ = access.sign_in(st, access.invite(st, "R2", by="coordinator"))
    st.remove_reader("R2", "left")
    assert access.user_of(st, login3) is None
    # only hashes are stored; every step is in the verified audit chain
    dump = json.dumps(st.db.all("SELECT * FROM invites") + st.db.all("SELECT * FROM logins"))
    assert token not in dump and login not in dump and unused not in dump
    actions = Counter(a["action"] for a in st.audit_log())
    assert actions["invite"] == 5 and actions["sign_in"] == 3 and actions["revoke_access"] == 1
    assert st.verify()["ok"]
    st.close()


def test_postgres_reading_server_role_cannot_rewrite_history(pg_url, tmp_path):
    """The reading server's database account reads, rates and submits, and can do nothing else:
    no deletes, no edits of submitted reads, no dropped triggers, no protocol or staff changes."""
    import psycopg

    from LLNAssistLib.readerstudy import access

    clock = Clock()
    st = _study(pg_url, clock, readers=("R1",), n=4, free_order=False)
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE ROLE lln_server LOGIN")
    statements = access.grant_server_role(st, "lln_server", by="coordinator")
    assert not any("DELETE" in s or "TRUNCATE" in s for s in statements)
    with pytest.raises(RuleRefused, match="only a coordinator"):
        access.grant_server_role(st, "lln_server", by="R1")
    with pytest.raises(InputError, match="does not exist"):
        access.grant_server_role(st, "nobody_here", by="coordinator")
    token = access.invite(st, "R1", by="coordinator")
    st.close()
    server_url = pg_url.replace("postgresql://postgres@", "postgresql://lln_server@")
    srv = Study.open(server_url, clock=clock)  # what the reading server does, as its own account
    assert access.sign_in(srv, token)[1].user_id == "R1"
    case = srv.next_case("R1", 1)["case_id"]
    _read(srv, "R1", 1, case, score=4, call=True)
    srv.record_rating(reader="R1", session=1, case=srv.next_case("R1", 1)["case_id"], rating=2, call=False,
                      point=(1, 2, 3))
    with pytest.raises(RuleRefused, match="only a coordinator"):
        srv.set_protocol(actor="R1", free_order=True)
    srv.close()
    with psycopg.connect(server_url, autocommit=True) as c:
        for sql in ("DELETE FROM ratings", "DELETE FROM audit", "TRUNCATE ratings",
                    "UPDATE reads SET reader_id = 'R2'", "UPDATE audit SET actor = 'x'",
                    "DROP TRIGGER ratings_frozen ON ratings", "ALTER TABLE ratings DISABLE TRIGGER ALL",
                    "UPDATE meta SET value = '{}' WHERE key = 'protocol'",
                    "INSERT INTO staff VALUES ('me', 'coordinator', '', 1, 'now')",
                    "UPDATE invites SET revoked_at = NULL", "UPDATE readers SET active = 1"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql)
        for sql in ("UPDATE ratings SET score = 1 WHERE score = 4", "UPDATE reads SET status = 'open'"):
            with pytest.raises(psycopg.errors.RaiseException, match="immutable"):  # the triggers, not a grant
                c.execute(sql)
    st = Study.open(pg_url)
    assert st.verify()["ok"] and [r["rating"] for r in st.final_ratings()] == [4]
    st.close()
    sqlite_study = Study.create(tmp_path / "s.sqlite", "x")
    with pytest.raises(InputError, match="PostgreSQL feature"):
        access.grant_server_role(sqlite_study, "lln_server", by="coordinator")
    sqlite_study.close()


def test_a_study_from_an_earlier_version_gains_roles_and_sign_in_tables(tmp_path):
    import sqlite3

    from LLNAssistLib.readerstudy import access

    path = tmp_path / "old.sqlite"
    _study(str(path), Clock(), readers=("R1",), n=4).close()
    with sqlite3.connect(path) as c:  # what a study made before roles and sign-ins looked like
        c.executescript("DROP TABLE staff; DROP TABLE invites; DROP TABLE logins;")
    st = Study.open(str(path))
    assert st.role_of("coordinator") == "coordinator"
    login, user = access.sign_in(st, access.invite(st, "R1", by="coordinator"))
    assert access.user_of(st, login) == user
    res = st.verify()
    assert res["ok"], res["problems"]
    st.close()
