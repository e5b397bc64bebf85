"""Reader studies: protocol, cases, readers, randomised assignments, reads and 1-5 ratings, with
the rules enforced here rather than in any front end:

- washout: a reader cannot open session 2 of a case (crossover design) before `washout_days` have
  passed since they submitted session 1 of it, unless a coordinator override is recorded;
- blinding: an unaided read gets the image only (`case_view`) and cannot cite AI node ids;
- immutability: a submitted read never changes; a correction is a new version, with who, when and
  why in the append-only audit log;
- durability: every call commits before it returns; recording the same rating or submitting the
  same read twice is a no-op, so a double click or a retry after a timeout is harmless.

Every front end (CLI, Slicer module, scripts) uses this API.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import math
import random
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

from ..conventions import READER_SCALE
from ..csvtable import spreadsheet_safe
from ..errors import InputError
from . import db as _db

DESIGNS = ("crossover", "sequential")
MODALITIES = ("unaided", "aided")
SESSION_SHOWS = {"unaided": ["image"], "aided": ["image", "ai_segmentation", "node_table", "radiomics_probability"]}
DEFAULT_WASHOUT_DAYS = 28  # FDA 2022 guidance on CAD reader studies suggests at least four weeks


class RuleRefused(InputError):
    """A study rule (washout, blinding, order, roles) refused the action."""


@dataclass(frozen=True)
class Override:
    """A coordinator's recorded decision to bypass a rule (e.g. washout)."""

    by: str
    reason: str


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _iso(t: _dt.datetime) -> str:
    return t.astimezone(_dt.timezone.utc).isoformat(timespec="microseconds")


def _parse(s: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(s)


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _check_washout(days) -> None:
    """A finite number of days >= 0 (NaN would make every later washout check fail)."""
    try:
        value = float(days)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value):
        raise InputError(f"washout of {days!r} days is not a finite number; give days >= 0, e.g. --washout-days 28")
    if value < 0:
        raise InputError(f"washout of {value:g} days is negative; give days >= 0")


def normalise_reader_id(reader_id) -> str:
    """A reader id as stored: surrounding spaces removed, inner runs of spaces made single."""
    return " ".join(str(reader_id or "").split())


def _reader_key(reader_id) -> str:
    return normalise_reader_id(reader_id).casefold()


def chain_hash(prev: str, at: str, actor: str, action: str, detail: str) -> str:
    """One link of the audit hash chain."""
    return hashlib.sha256(_canonical([prev, at, actor, action, detail]).encode("utf-8")).hexdigest()


def _last_hash(db) -> Optional[str]:
    row = db.one("SELECT hash FROM audit WHERE hash IS NOT NULL ORDER BY seq DESC LIMIT 1")
    return row[0] if row else None


def _append_audit(db, at: str, actor: str, action: str, text: str) -> None:
    db.run("INSERT INTO audit (at, actor, action, detail, hash) VALUES (?, ?, ?, ?, ?)",
           (at, actor, action, text, chain_hash(_last_hash(db) or "", at, actor, action, text)))


def default_protocol(name: str, design: str = "crossover", washout_days: float | None = None, seed: int = 0,
                     unaided_only_fraction: float = 0.2) -> dict:
    if design not in DESIGNS:
        raise InputError(f"design {design!r} is unknown; use one of {', '.join(DESIGNS)}")
    if washout_days is None:
        washout_days = DEFAULT_WASHOUT_DAYS if design == "crossover" else 0
    _check_washout(washout_days)
    if not 0 <= unaided_only_fraction < 1:
        raise InputError(f"unaided-only fraction {unaided_only_fraction} must be in [0, 1)")
    return {
        "name": name,
        "design": design,
        "washout_days": float(washout_days),
        "seed": int(seed),
        # The randomised reading order is the protocol: readers read in it unless this is true.
        "free_order": False,
        "unaided_only_fraction": float(unaided_only_fraction) if design == "sequential" else 0.0,
        "sessions": [{"number": 1, "label": "session 1"}, {"number": 2, "label": "session 2"}],
        "modalities": {m: {"shows": SESSION_SHOWS[m]} for m in MODALITIES},
        "scale": {str(k): v for k, v in READER_SCALE.items()},
        "binary_call": "LLN metastasis yes/no (the clinical decision; sensitivity/specificity come from it)",
        "analysis_plan": {
            "primary": "patient level, most suspicious node per patient; AUC aided minus unaided, "
                       "Obuchowski-Rockette MRMC random readers and cases (Hillis ddf), DeLong covariance",
            "secondary": ["DBM", "per-reader DeLong", "sensitivity/specificity of the binary call",
                          "node-level clustered ROC (Obuchowski 1997)", "Cohen's kappa between readers and vs AI"],
            "alpha": 0.05,
        },
    }


class Study:
    """A reader study in a SQLite file or a PostgreSQL database."""

    def __init__(self, database: _db.Database, clock: Callable[[], _dt.datetime] = _utcnow):
        self.db = database
        self.clock = clock
        self.protocol = json.loads(self._meta("protocol"))

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def create(cls, location, name: str, design: str = "crossover", washout_days: float | None = None,
               seed: int = 0, unaided_only_fraction: float = 0.2, actor: str = "coordinator",
               clock: Callable[[], _dt.datetime] = _utcnow) -> Study:
        protocol = default_protocol(name, design, washout_days, seed, unaided_only_fraction)
        database = _db.connect(location, create=True)
        database.init_schema()
        with database.transaction():
            database.run("INSERT INTO meta VALUES ('schema_version', ?)", (str(_db.SCHEMA_VERSION),))
            database.run("INSERT INTO meta VALUES ('protocol', ?)", (_canonical(protocol),))
            database.run("INSERT INTO meta VALUES ('created_at', ?)", (_iso(clock()),))
            _append_audit(database, _iso(clock()), actor, "create", _canonical(protocol))  # the chain's first link
            database.run("INSERT INTO staff VALUES (?, 'coordinator', '', 1, ?)",
                         (normalise_reader_id(actor), _iso(clock())))  # who creates a study coordinates it
        return cls(database, clock)

    @classmethod
    def open(cls, location, clock: Callable[[], _dt.datetime] = _utcnow) -> Study:
        st = cls(_db.connect(location, create=False), clock)
        with st.db.transaction():
            if _db.upgrade(st.db):  # a study from before roles: its default actor coordinates it
                st.db.run("INSERT INTO staff VALUES ('coordinator', 'coordinator', '', 1, ?)", (_iso(st.clock()),))
                st._audit("system", "add_staff", user="coordinator", role="coordinator", note="upgrade")
        return st

    # -- roles --------------------------------------------------------------------------------------
    def member(self, user: str, include_inactive: bool = False) -> Optional[tuple[str, str]]:
        """(the id as the study spells it, its role: coordinator, reference or reader), or None; ids
        compared ignoring case and spacing. Staff roles come before being a reader."""
        key = _reader_key(user)
        active = "" if include_inactive else " WHERE active = 1"
        for uid, role in self.db.all(f"SELECT user_id, role FROM staff{active}"):
            if _reader_key(uid) == key:
                return uid, role
        for (rid,) in self.db.all(f"SELECT reader_id FROM readers{active}"):
            if _reader_key(rid) == key:
                return rid, "reader"
        return None

    def role_of(self, user: str) -> Optional[str]:
        """coordinator, reference, reader or None; ids compared ignoring case and spacing."""
        found = self.member(user)
        return found[1] if found else None

    def _require_coordinator(self, user: str, what: str) -> str:
        who = normalise_reader_id(user)
        role = self.role_of(who)
        if role != "coordinator":
            raise RuleRefused(f"only a coordinator of this study may {what}; {who or 'nobody'} is "
                              f"{'a ' + role if role else 'not a member of it'}")
        return who

    def add_staff(self, user: str, role: str, actor: str, name: str = "") -> None:
        """Coordinators (manage the study, override washouts, correct reads) and reference readers
        (set the reference standard); added by a coordinator."""
        if role not in ("coordinator", "reference"):
            raise InputError(f"role {role!r} is unknown; use coordinator or reference (readers are added as readers)")
        uid = normalise_reader_id(user)
        if not uid:
            raise InputError("user id is empty")
        with self.db.transaction():
            actor = self._require_coordinator(actor, "add staff")
            if self.db.one("SELECT 1 FROM staff WHERE user_id = ?", (uid,)):
                self.db.run("UPDATE staff SET role = ?, active = 1 WHERE user_id = ?", (role, uid))
            else:
                self.db.run("INSERT INTO staff VALUES (?, ?, ?, 1, ?)", (uid, role, name, _iso(self.clock())))
            self._audit(actor, "add_staff", user=uid, role=role)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- helpers ----------------------------------------------------------------------------------
    def _meta(self, key: str) -> Optional[str]:
        row = self.db.one("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row else None

    def _audit(self, actor: str, action: str, **detail) -> None:
        """Appends to the audit log, a hash chain: each entry's hash covers the previous hash and
        its own content, so deleting or editing any entry breaks every hash after it. Called inside
        the write transaction (which holds the study-wide lock), so the chain has no forks."""
        _append_audit(self.db, _iso(self.clock()), actor, action, _canonical(detail))

    @property
    def frozen(self) -> bool:
        return self._meta("protocol_hash") is not None

    @property
    def protocol_hash(self) -> Optional[str]:
        return self._meta("protocol_hash")

    def set_protocol(self, actor: str = "coordinator", **changes) -> dict:
        """Change protocol fields (washout_days, seed, scale, analysis_plan...) before the first read."""
        with self.db.transaction():
            actor = self._require_coordinator(actor, "change the protocol")
            if self.frozen:
                raise RuleRefused("the protocol is frozen since the first read started; start a new study to "
                                  "change it")
            proto = json.loads(self._meta("protocol"))
            proto.setdefault("free_order", False)  # studies made before the field existed
            unknown = [k for k in changes if k not in proto]
            if unknown:
                raise InputError(f"unknown protocol field(s) {', '.join(unknown)}")
            if "washout_days" in changes:
                _check_washout(changes["washout_days"])
                changes = {**changes, "washout_days": float(changes["washout_days"])}
            if "free_order" in changes and not isinstance(changes["free_order"], bool):
                raise InputError(f"free_order must be true or false, not {changes['free_order']!r}")
            proto.update(changes)
            self.db.run("UPDATE meta SET value = ? WHERE key = 'protocol'", (_canonical(proto),))
            self._audit(actor, "set_protocol", changes=changes)
        self.protocol = proto
        return proto

    # -- cases and readers --------------------------------------------------------------------------
    def add_cases(self, cases: list[dict], actor: str = "coordinator") -> int:
        """Cases: case_id, truth (patient 0/1) and optional image, dicom_uid, truth_nodes (list),
        ai (dict: probability, status, nodes, segmentation...), training, reference_by."""
        added = 0
        with self.db.transaction():
            actor = self._require_coordinator(actor, "add cases")
            frozen = self.frozen
            for c in cases:
                cid = str(c.get("case_id") or "").strip()
                if not cid:
                    raise InputError("a case has no case_id; give every case a pseudonymous id")
                if self.db.one("SELECT case_id FROM cases WHERE case_id = ?", (cid,)):
                    raise InputError(f"case {cid} is already in the study; case ids are unique")
                training = bool(c.get("training", False))
                if frozen and not training:
                    raise RuleRefused(f"case {cid}: the study started, so study cases are fixed; add it as a "
                                      "training case or start a new study")
                truth = c.get("truth")
                if not training and truth not in (0, 1, "0", "1", True, False):
                    raise InputError(f"case {cid}: truth {truth!r} must be 0 or 1 (patient-level reference "
                                     "standard)")
                ai = c.get("ai")
                self.db.run("INSERT INTO cases (case_id, image, dicom_uid, truth_patient, truth_nodes, ai, "
                            "training, reference_by, grp, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                            (cid, c.get("image"), c.get("dicom_uid"), None if truth is None else int(truth),
                             _canonical(c.get("truth_nodes") or []), _canonical(ai) if ai else None,
                             int(training), c.get("reference_by"), _iso(self.clock())))
                added += 1
            self._audit(actor, "add_cases", case_ids=[str(c.get("case_id")) for c in cases])
        return added

    def add_reader(self, reader_id: str, name: str = "", years: float | None = None,
                   override_reason: str | None = None, actor: str = "coordinator") -> None:
        self.add_readers([{"reader_id": reader_id, "name": name, "years": years,
                           "override_reason": override_reason}], actor)

    def add_readers(self, readers: list[dict], actor: str = "coordinator") -> int:
        """Adds every reader or none (one transaction). Ids are compared ignoring case and spacing, so
        "dr  smith" is the reference-standard reader "Dr Smith" and a duplicate of reader "DR SMITH"."""
        with self.db.transaction():
            actor = self._require_coordinator(actor, "add readers")
            refs = {}
            for case_id, by in self.db.all("SELECT case_id, reference_by FROM cases WHERE reference_by IS NOT NULL"):
                refs.setdefault(_reader_key(by), []).append(case_id)
            existing = {_reader_key(r): (r, active) for r, active in
                        self.db.all("SELECT reader_id, active FROM readers")}
            seen = set()
            for r in readers:
                rid = normalise_reader_id(r.get("reader_id"))
                if not rid:
                    raise InputError("reader id is empty; give each reader an id")
                key = _reader_key(rid)
                if key in seen:
                    raise InputError(f"reader {rid} is listed twice (ids are compared ignoring case and spacing)")
                seen.add(key)
                override = r.get("override_reason") or None
                if key in refs and not override:
                    raise RuleRefused(f"reader {rid} set the reference standard of {len(refs[key])} case(s) (e.g. "
                                      f"{refs[key][0]}); a reader must be independent of the truth - add them with "
                                      "an override reason if the coordinator accepts it")
                if key in existing:
                    stored, active = existing[key]
                    if active:
                        raise InputError(f"reader {rid} is already in the study" +
                                         (f" as {stored}" if stored != rid else ""))
                    self.db.run("UPDATE readers SET active = 1 WHERE reader_id = ?", (stored,))
                    self._audit(actor, "readd_reader", reader=stored)
                    continue
                seq = self.db.one("SELECT COUNT(*) FROM readers")[0]
                self.db.run("INSERT INTO readers (reader_id, name, years, active, seq, reference_override, added_at) "
                            "VALUES (?, ?, ?, 1, ?, ?, ?)", (rid, r.get("name") or "", r.get("years"), seq, override,
                                                             _iso(self.clock())))
                self._audit(actor, "add_reader", reader=rid, name=r.get("name") or "", years=r.get("years"),
                            override_reason=override)
                existing[key] = (rid, 1)
        return len(readers)

    def remove_reader(self, reader_id: str, reason: str, actor: str = "coordinator") -> None:
        """Deactivates a reader; their reads stay (nothing is deleted) and come back if re-added."""
        with self.db.transaction():
            actor = self._require_coordinator(actor, "remove readers")
            if not self.db.run("UPDATE readers SET active = 0 WHERE reader_id = ? AND active = 1", (reader_id,)):
                raise InputError(f"reader {reader_id} is not an active reader of this study")
            self._audit(actor, "remove_reader", reader=reader_id, reason=reason)

    def readers(self, include_inactive: bool = False) -> list[dict]:
        rows = self.db.all("SELECT reader_id, name, years, active, seq FROM readers ORDER BY seq")
        return [{"reader_id": r[0], "name": r[1], "years": r[2], "active": bool(r[3]), "seq": r[4]}
                for r in rows if include_inactive or r[3]]

    def cases(self, include_training: bool = True) -> list[dict]:
        rows = self.db.all("SELECT case_id, image, dicom_uid, truth_patient, truth_nodes, ai, training, "
                           "reference_by, grp FROM cases ORDER BY case_id")
        out = []
        for r in rows:
            if r[6] and not include_training:
                continue
            out.append({"case_id": r[0], "image": r[1], "dicom_uid": r[2], "truth": r[3],
                        "truth_nodes": json.loads(r[4] or "[]"), "ai": json.loads(r[5]) if r[5] else None,
                        "training": bool(r[6]), "reference_by": r[7], "group": r[8]})
        return out

    def _reader(self, reader: str) -> tuple:
        row = self.db.one("SELECT reader_id, active, seq FROM readers WHERE reader_id = ?", (reader,))
        if not row:
            raise InputError(f"reader {reader} is not in this study; add them with `llnassist study add-readers`")
        if not row[1]:
            raise RuleRefused(f"reader {reader} was removed from this study; re-add them to continue")
        return row

    # -- freezing and assignments ------------------------------------------------------------------
    def _groups(self, proto: dict) -> dict:
        """The design's split of the study cases, stratified by truth (deterministic from the seed)."""
        cases = self.db.all("SELECT case_id, truth_patient FROM cases WHERE training = 0 ORDER BY case_id")
        if not cases:
            raise RuleRefused("the study has no cases; add cases before reading")
        rng = random.Random(f"{proto['seed']}:groups")
        # Stratified by truth so both groups (crossover) or both arms (sequential) hold positives;
        # the alternation runs on across strata so odd-sized strata do not all favour group 0.
        groups, running = {}, 0
        for truth in (0, 1):
            ids = [c for c, t in cases if t == truth]
            rng.shuffle(ids)
            for k, cid in enumerate(ids):
                if proto["design"] == "crossover":
                    groups[cid] = running % 2
                    running += 1
                else:  # sequential: group 1 = kept unaided-only
                    groups[cid] = int(k < round(proto["unaided_only_fraction"] * len(ids)))
        return groups

    def _freeze(self) -> None:
        """At the first read: fix the protocol hash and split cases into the design's groups."""
        if self.frozen:
            return
        proto = json.loads(self._meta("protocol"))
        for cid, grp in self._groups(proto).items():
            self.db.run("UPDATE cases SET grp = ? WHERE case_id = ?", (grp, cid))
        digest = hashlib.sha256(_canonical(proto).encode()).hexdigest()
        self.db.run("INSERT INTO meta VALUES ('protocol_hash', ?)", (digest,))
        self.db.run("INSERT INTO meta VALUES ('frozen_at', ?)", (_iso(self.clock()),))
        self._audit("system", "freeze_protocol", protocol_hash=digest)
        self.protocol = proto

    def _modality(self, design: str, reader_seq: int, session: int, grp: int) -> Optional[str]:
        if design == "crossover":
            # Reader parity balances which group each reader sees aided first.
            return "unaided" if (grp + reader_seq + session) % 2 == 1 else "aided"
        if session == 1:
            return "unaided"
        return None if grp == 1 else "aided"

    def _orders(self, reader: str, seq: int, groups: dict) -> list:
        """Session 1 and 2 reading orders [(case_id, modality), ...] of one reader."""
        proto = self.protocol
        study_cases = sorted(groups.items())
        training = [r[0] for r in self.db.all("SELECT case_id FROM cases WHERE training = 1 ORDER BY case_id")]
        orders = []
        for session in (1, 2):
            items = [(cid, self._modality(proto["design"], seq, session, grp)) for cid, grp in study_cases]
            items = [it for it in items if it[1] is not None]
            rng = random.Random(f"{proto['seed']}:{reader}:{session}")
            rng.shuffle(items)
            if proto["design"] == "sequential" and session == 2:
                first = {cid: k for k, (cid, _) in enumerate(orders[0])}
                items.sort(key=lambda it: first[it[0]])  # aided follows the unaided read of that case
            elif session == 2 and len(items) > 1 and [c for c, _ in items] == [c for c, _ in orders[0]]:
                items = items[1:] + items[:1]  # orders must differ between sessions
            if session == 1:
                items = [(cid, "unaided") for cid in training] + items
            orders.append(items)
        return orders

    def _ensure_assignments(self, reader: str, seq: int) -> None:
        if self.db.one("SELECT 1 FROM assignments WHERE reader_id = ? LIMIT 1", (reader,)):
            return
        self._freeze()
        groups = dict(self.db.all("SELECT case_id, grp FROM cases WHERE training = 0 ORDER BY case_id"))
        orders = self._orders(reader, seq, groups)
        for session, items in enumerate(orders, start=1):
            for pos, (cid, mod) in enumerate(items):
                self.db.run("INSERT INTO assignments VALUES (?, ?, ?, ?, ?)", (reader, session, pos, cid, mod))
        self._audit("system", "assign", reader=reader, n=[len(o) for o in orders])

    # -- reading ------------------------------------------------------------------------------------
    def _assignment(self, reader: str, session: int, case: str) -> tuple:
        row = self.db.one("SELECT position, modality FROM assignments WHERE reader_id = ? AND session = ? "
                          "AND case_id = ?", (reader, session, case))
        if not row:
            raise RuleRefused(f"case {case} is not assigned to reader {reader} in session {session}")
        return row

    def _latest_read(self, reader: str, session: int, case: str):
        return self.db.one("SELECT read_id, status, version, started_at, modality FROM reads WHERE reader_id = ? "
                           "AND session = ? AND case_id = ? ORDER BY version DESC LIMIT 1", (reader, session, case))

    def _check_session(self, session: int) -> None:
        if session not in (1, 2):
            raise InputError(f"session {session} does not exist; sessions are 1 and 2")

    def next_case(self, reader: str, session: int) -> Optional[dict]:
        """The reader's next case in this session (an open read first: resume where they left off), or
        None when the session is done. Includes progress (`done`, `total`)."""
        self._check_session(session)
        if not self.frozen:
            # Looking does not start the study: the protocol and the case list stay open until the
            # first read is opened (open_read freezes them and stores the reading orders).
            _, _, seq = self._reader(reader)
            items = self._orders(reader, seq, self._groups(self.protocol))[session - 1]
            if not items:
                return None
            cid, mod = items[0]
            info = {"case_id": cid, "session": session, "modality": mod, "position": 0, "done": 0,
                    "total": len(items), "resumed": False}
            info["available"], info["waiting_reason"] = self._available(reader, session, cid)
            return info
        with self.db.transaction():
            _, _, seq = self._reader(reader)
            self._ensure_assignments(reader, seq)
        rows = self.db.all(
            "SELECT a.position, a.case_id, a.modality, "
            "(SELECT r.status FROM reads r WHERE r.reader_id = a.reader_id AND r.session = a.session "
            " AND r.case_id = a.case_id ORDER BY r.version DESC LIMIT 1) "
            "FROM assignments a WHERE a.reader_id = ? AND a.session = ? ORDER BY a.position", (reader, session))
        done = sum(1 for r in rows if r[3] in ("submitted", "superseded"))
        for pos, cid, mod, st in rows:
            if st not in ("submitted", "superseded"):
                info = {"case_id": cid, "session": session, "modality": mod, "position": pos, "done": done,
                        "total": len(rows), "resumed": st == "open"}
                info["available"], info["waiting_reason"] = self._available(reader, session, cid)
                return info
        return None

    def next_read(self, reader: str) -> Optional[dict]:
        """The reader's next read across sessions: a pending aided read (sequential design) or session 1
        first, then session 2 once available. None when everything is read."""
        order = (2, 1) if self.protocol["design"] == "sequential" else (1, 2)
        waiting = None
        for session in order:
            nxt = self.next_case(reader, session)
            if nxt is None:
                continue
            if self.protocol["design"] == "sequential" and session == 2 and not nxt["available"]:
                waiting = waiting or nxt
                continue
            return nxt
        return waiting

    def _available(self, reader: str, session: int, case: str) -> tuple[bool, str]:
        if session == 1:
            return True, ""
        first = self._latest_read(reader, 1, case)
        if not first or first[1] not in ("submitted", "superseded"):
            return False, f"read case {case} in session 1 first"
        washout = float(self.protocol["washout_days"])
        if washout <= 0:
            return True, ""
        submitted = self.db.one("SELECT MIN(submitted_at) FROM reads WHERE reader_id = ? AND session = 1 AND "
                                "case_id = ? AND submitted_at IS NOT NULL", (reader, case))[0]
        until = _parse(submitted) + _dt.timedelta(days=washout)
        if self.clock() < until:
            return False, (f"washout: reader {reader} read case {case} in session 1 on {submitted[:10]}; session 2 "
                           f"opens on {_iso(until)[:16]} ({washout:g} days)")
        return True, ""

    def open_read(self, reader: str, session: int, case: str, override: Optional[Override] = None) -> dict:
        """Starts (or resumes) the reader's read of a case; the start time is recorded once."""
        self._check_session(session)
        with self.db.transaction():
            _, _, seq = self._reader(reader)
            self._ensure_assignments(reader, seq)
            read = self._open_read_locked(reader, session, case, override)
        return read

    def _open_read_locked(self, reader, session, case, override) -> dict:
        position, modality = self._assignment(reader, session, case)
        latest = self._latest_read(reader, session, case)
        if latest:  # resume an open read, or report the submitted one
            return {"read_id": latest[0], "status": latest[1], "version": latest[2], "modality": latest[4]}
        ok, why = self._available(reader, session, case)
        if not ok:
            if override is None or "washout" not in why:
                raise RuleRefused(why + ("" if "washout" not in why else "; a coordinator may override with a reason"))
            self._require_coordinator(override.by, "override the washout")
            self._audit(override.by, "override_washout", reader=reader, case=case, session=session,
                        reason=override.reason, rule=why)
        if not self.protocol.get("free_order", False):
            earlier = self.db.one(
                "SELECT a.case_id FROM assignments a WHERE a.reader_id = ? AND a.session = ? AND a.position < ? "
                "AND NOT EXISTS (SELECT 1 FROM reads r WHERE r.reader_id = a.reader_id AND r.case_id = a.case_id "
                "AND r.session = a.session AND r.status IN ('submitted', 'superseded')) ORDER BY a.position LIMIT 1",
                (reader, session, position))
            if earlier:
                raise RuleRefused(f"reading order: reader {reader} reads case {earlier[0]} before case {case} in "
                                  f"session {session}; the protocol's randomised order is enforced (a coordinator "
                                  "may allow free order before reading starts)")
        if self.protocol["design"] == "sequential" and session == 1:
            pending = self.db.all(
                "SELECT a.case_id FROM assignments a JOIN reads r ON r.reader_id = a.reader_id AND r.case_id = "
                "a.case_id AND r.session = 1 AND r.status = 'submitted' WHERE a.reader_id = ? AND a.session = 2 "
                "AND NOT EXISTS (SELECT 1 FROM reads q WHERE q.reader_id = a.reader_id AND q.case_id = a.case_id "
                "AND q.session = 2 AND q.status IN ('submitted', 'superseded'))", (reader,))
            if pending:
                raise RuleRefused(f"sequential design: finish the aided read of case {pending[0][0]} (session 2) "
                                  "before the next unaided read")
        rid = uuid.uuid4().hex
        self.db.run("INSERT INTO reads (read_id, reader_id, case_id, session, modality, version, status, started_at) "
                    "VALUES (?, ?, ?, ?, ?, 1, 'open', ?)", (rid, reader, case, session, modality, _iso(self.clock())))
        return {"read_id": rid, "status": "open", "version": 1, "modality": modality}

    def case_view(self, reader: str, session: int, case: str) -> dict:
        """What the reader may see for this read: the image always; AI results only when aided."""
        _, modality = self._assignment(reader, session, case)
        row = self.db.one("SELECT image, dicom_uid, ai FROM cases WHERE case_id = ?", (case,))
        view = {"case_id": case, "session": session, "modality": modality, "image": row[0], "dicom_uid": row[1],
                "shows": list(SESSION_SHOWS[modality])}
        if modality == "aided" and row[2]:
            view["ai"] = json.loads(row[2])
        return view

    @staticmethod
    def _node_key(node: Optional[str], point) -> str:
        if node:
            return f"ai:{node}"
        if point is not None:
            r, a, s = (float(v) for v in point)
            return f"pt:{r:.1f},{a:.1f},{s:.1f}"
        return "patient"

    def record_rating(self, *, reader: str, session: int, case: str, rating: int, call: Optional[bool] = None,
                      node: Optional[str] = None, point=None, region: Optional[str] = None,
                      side: Optional[str] = None, most_suspicious: bool = False, comment: str = "",
                      override: Optional[Override] = None) -> dict:
        """Records (or, while the read is open, replaces) the rating of one node; committed on return.
        Recording identical content again after submission is a no-op; different content is refused."""
        self._check_session(session)
        if isinstance(rating, bool) or rating not in (1, 2, 3, 4, 5):
            raise InputError(f"score {rating!r} is not on the 1-5 scale; give 1, 2, 3, 4 or 5")
        if point is not None and len(point) != 3:
            raise InputError("a node point needs three RAS coordinates")
        key = self._node_key(node, point)
        pr = [None, None, None] if point is None else [float(v) for v in point]
        values = (node, pr[0], pr[1], pr[2], region, side, int(rating), None if call is None else int(bool(call)),
                  int(bool(most_suspicious)), comment or "")
        with self.db.transaction():
            _, _, seq = self._reader(reader)
            self._ensure_assignments(reader, seq)
            read = self._open_read_locked(reader, session, case, override)
            if node and read["modality"] == "unaided":
                raise RuleRefused(f"case {case} is an unaided read: AI node ids are not shown there; place a point "
                                  "on the node instead")
            existing = self.db.one("SELECT ai_node_id, r, a, s, region, side, score, call, most_suspicious, comment "
                                   "FROM ratings WHERE read_id = ? AND node_key = ?", (read["read_id"], key))
            if read["status"] != "open":
                # Submission may have flagged a single rating most suspicious; a retry need not repeat it.
                same = existing and (tuple(existing) == values or (
                    not most_suspicious and tuple(existing[:8]) + tuple(existing[9:]) == values[:8] + values[9:]))
                if same:
                    return {"read_id": read["read_id"], "node_key": key, "duplicate": True}
                raise RuleRefused(f"reader {reader}'s session-{session} read of case {case} was submitted and is "
                                  "immutable; record a correction with a reason")
            if most_suspicious:
                self.db.run("UPDATE ratings SET most_suspicious = 0 WHERE read_id = ? AND node_key <> ?",
                            (read["read_id"], key))
            now = _iso(self.clock())
            if existing:
                self.db.run("UPDATE ratings SET ai_node_id = ?, r = ?, a = ?, s = ?, region = ?, side = ?, score = ?, "
                            "call = ?, most_suspicious = ?, comment = ?, recorded_at = ? WHERE read_id = ? AND "
                            "node_key = ?", (*values, now, read["read_id"], key))
            else:
                self.db.run("INSERT INTO ratings (ai_node_id, r, a, s, region, side, score, call, most_suspicious, "
                            "comment, recorded_at, read_id, node_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (*values, now, read["read_id"], key))
            self._audit(reader, "rate", read_id=read["read_id"], node_key=key, score=int(rating),
                        call=values[7], most_suspicious=values[8], comment=values[9])
        return {"read_id": read["read_id"], "node_key": key, "duplicate": bool(existing) and tuple(existing) == values}

    def ratings_of(self, read_id: str) -> list[dict]:
        rows = self.db.all("SELECT node_key, ai_node_id, r, a, s, region, side, score, call, most_suspicious, comment "
                           "FROM ratings WHERE read_id = ? ORDER BY node_key", (read_id,))
        return [{"node_key": r[0], "node": r[1], "point": None if r[2] is None else [r[2], r[3], r[4]],
                 "region": r[5], "side": r[6], "rating": r[7], "call": None if r[8] is None else bool(r[8]),
                 "most_suspicious": bool(r[9]), "comment": r[10]} for r in rows]

    def submit_read(self, reader: str, session: int, case: str) -> dict:
        """Closes the read; idempotent. Needs >= 1 rating, one most-suspicious node and its binary call."""
        with self.db.transaction():
            self._reader(reader)
            latest = self._latest_read(reader, session, case)
            if not latest:
                raise RuleRefused(f"reader {reader} has no session-{session} read of case {case}; rate it first")
            rid, status, version, started, _ = latest
            if status in ("submitted", "superseded"):
                return {"read_id": rid, "status": status, "version": version, "duplicate": True}
            ratings = self.ratings_of(rid)
            if not ratings:
                raise RuleRefused(f"case {case}: no node rated; rate at least the most suspicious node")
            flagged = [r for r in ratings if r["most_suspicious"]]
            if not flagged and len(ratings) == 1:
                self.db.run("UPDATE ratings SET most_suspicious = 1 WHERE read_id = ?", (rid,))
                flagged = ratings
            if len(flagged) != 1:
                raise RuleRefused(f"case {case}: mark which of the {len(ratings)} rated nodes is the most suspicious")
            if flagged[0]["call"] is None:
                raise RuleRefused(f"case {case}: give the binary call (LLN metastasis yes/no) for the most "
                                  "suspicious node")
            now = self.clock()
            duration = (now - _parse(started)).total_seconds()
            self.db.run("UPDATE reads SET status = 'submitted', submitted_at = ?, duration_s = ? WHERE read_id = ?",
                        (_iso(now), duration, rid))
            self._audit(reader, "submit", read_id=rid, case=case, session=session, version=version,
                        submitted_at=_iso(now), content=self._read_digest(rid))
        return {"read_id": rid, "status": "submitted", "version": version, "duration_s": duration, "duplicate": False}

    def _read_digest(self, read_id: str) -> str:
        """sha256 of a read's ratings as stored: what its submit/correct audit entry vouches for."""
        rows = self.db.all("SELECT node_key, ai_node_id, r, a, s, region, side, score, call, most_suspicious, comment "
                           "FROM ratings WHERE read_id = ? ORDER BY node_key", (read_id,))
        return hashlib.sha256(_canonical([list(r) for r in rows]).encode("utf-8")).hexdigest()

    def correct(self, *, reader: str, session: int, case: str, by: str, reason: str, node_key: str,
                **changes) -> dict:
        """A correction of a submitted read: a new version with the change, the old one superseded."""
        if not reason or not by:
            raise InputError("a correction needs who makes it (by) and why (reason)")
        allowed = {"rating": "score", "call": "call", "comment": "comment", "most_suspicious": "most_suspicious",
                   "region": "region", "side": "side"}
        unknown = [k for k in changes if k not in allowed]
        if unknown:
            raise InputError(f"cannot correct {', '.join(unknown)}; correctable: {', '.join(allowed)}")
        if "rating" in changes and changes["rating"] not in (1, 2, 3, 4, 5):
            raise InputError(f"score {changes['rating']!r} is not on the 1-5 scale")
        with self.db.transaction():
            by = self._require_coordinator(by, "correct a submitted read")
            latest = self._latest_read(reader, session, case)
            if not latest or latest[1] != "submitted":
                raise RuleRefused(f"reader {reader}'s session-{session} read of case {case} is not submitted; "
                                  "edit it directly while it is open")
            old_id, _, version, started, modality = latest
            cols = ("node_key, ai_node_id, r, a, s, region, side, score, call, most_suspicious, comment, recorded_at")
            rows = self.db.all(f"SELECT {cols} FROM ratings WHERE read_id = ?", (old_id,))
            if node_key not in [r[0] for r in rows]:
                raise InputError(f"node {node_key} was not rated in that read; rated: {', '.join(r[0] for r in rows)}")
            new_id = uuid.uuid4().hex
            now = _iso(self.clock())
            sub = self.db.one("SELECT submitted_at, duration_s FROM reads WHERE read_id = ?", (old_id,))
            self.db.run("INSERT INTO reads (read_id, reader_id, case_id, session, modality, version, status, "
                        "started_at, supersedes) VALUES (?, ?, ?, ?, ?, ?, 'correcting', ?, ?)",
                        (new_id, reader, case, session, modality, version + 1, started, old_id))
            before = after = None
            for r in rows:
                rec = dict(zip(cols.split(", "), r))
                if rec["node_key"] == node_key:
                    before = {k: rec[allowed[k]] for k in changes}
                    for k, v in changes.items():
                        rec[allowed[k]] = int(bool(v)) if k in ("call", "most_suspicious") else v
                    rec["recorded_at"] = now
                    after = {k: rec[allowed[k]] for k in changes}
                elif changes.get("most_suspicious"):
                    rec["most_suspicious"] = 0
                self.db.run(f"INSERT INTO ratings ({cols}, read_id) VALUES ({', '.join('?' * 13)})",
                            (*[rec[c] for c in cols.split(", ")], new_id))
            self.db.run("UPDATE reads SET status = 'submitted', submitted_at = ?, duration_s = ? WHERE read_id = ?",
                        (sub[0], sub[1], new_id))
            self.db.run("UPDATE reads SET status = 'superseded' WHERE read_id = ?", (old_id,))
            self._audit(by, "correct", reader=reader, case=case, session=session, node_key=node_key,
                        reason=reason, before=before, after=after, version=version + 1, read_id=new_id,
                        supersedes=old_id, content=self._read_digest(new_id))
        return {"read_id": new_id, "version": version + 1}

    def audit_log(self) -> list[dict]:
        return [{"seq": r[0], "at": r[1], "actor": r[2], "action": r[3], "detail": json.loads(r[4]), "hash": r[5]}
                for r in self.db.all("SELECT seq, at, actor, action, detail, hash FROM audit ORDER BY seq")]

    def chain_head(self) -> Optional[str]:
        """The newest audit hash, as stored (exports carry it; `verify --head` compares with it)."""
        return _last_hash(self.db)

    def verify(self) -> dict:
        """Checks that history was not rewritten, even by someone who dropped the triggers: the audit
        hash chain is unbroken, every submitted (or superseded) read has the content its submit or
        correct entry vouches for, every such entry still has its read, and the triggers are there.
        Returns {"ok", "problems", "entries", "chain_head"}."""
        problems = []
        prev, head, legacy, chained = "", None, 0, 0
        vouched = {}  # read_id -> digest of its ratings, from its submit or correct entry
        for seq, at, actor, action, detail, h in self.db.all(
                "SELECT seq, at, actor, action, detail, hash FROM audit ORDER BY seq"):
            if h is None:
                if chained:
                    problems.append(f"audit entry {seq} ({action}) has no hash after the chain began: inserted "
                                    "or edited outside LLNAssist")
                legacy += 1
                continue
            chained += 1
            if h != chain_hash(prev, at, actor, action, detail):
                problems.append(f"audit entry {seq} ({action} by {actor}) does not continue the hash chain: it was "
                                "edited, or an entry before it was deleted")
            prev = head = h
            if action in ("submit", "correct"):
                d = json.loads(detail)
                vouched[d["read_id"]] = d["content"]
        reads = {r[0]: r for r in self.db.all("SELECT read_id, reader_id, case_id, session, version, status FROM reads "
                                              "WHERE status IN ('submitted', 'superseded')")}
        for rid, content in vouched.items():
            if rid not in reads:
                problems.append(f"read {rid[:8]} was submitted (audit) but is no longer stored as submitted: deleted "
                                "or reopened")
            elif self._read_digest(rid) != content:
                _, reader, case, session, version, _ = reads[rid]
                problems.append(f"reader {reader}'s session-{session} read of case {case} (version {version}) differs "
                                "from what was submitted: a rating was edited or deleted")
        if chained and not legacy:  # in a study begun before the chain, early reads have no entry
            for rid, (_, reader, case, session, version, _) in reads.items():
                if rid not in vouched:
                    problems.append(f"reader {reader}'s session-{session} read of case {case} (version {version}) "
                                    "is marked submitted without a submit entry in the audit log")
        missing = sorted(_db.expected_triggers(self.db.kind) - _db.present_triggers(self.db))
        if missing:
            problems.append(f"protective trigger(s) {', '.join(missing)} were dropped")
        return {"ok": not problems, "problems": problems, "entries": chained + legacy, "chained": chained,
                "legacy_unchained": legacy, "chain_head": head}

    # -- progress and exports -----------------------------------------------------------------------
    def status(self) -> dict:
        out = {"name": self.protocol["name"], "design": self.protocol["design"],
               "washout_days": self.protocol["washout_days"], "frozen": self.frozen,
               "protocol_hash": self.protocol_hash, "n_cases": len(self.cases(include_training=False)),
               "n_training_cases": sum(c["training"] for c in self.cases()), "readers": []}
        for rd in self.readers(include_inactive=True):
            row = {"reader_id": rd["reader_id"], "name": rd["name"], "active": rd["active"], "sessions": {}}
            for session in (1, 2):
                total = self.db.one("SELECT COUNT(*) FROM assignments WHERE reader_id = ? AND session = ?",
                                    (rd["reader_id"], session))[0]
                done = self.db.one("SELECT COUNT(DISTINCT case_id) FROM reads WHERE reader_id = ? AND session = ? AND "
                                   "status IN ('submitted', 'superseded')", (rd["reader_id"], session))[0]
                row["sessions"][str(session)] = {"done": done, "total": total}
            out["readers"].append(row)
        return out

    def final_ratings(self, include_training: bool = False) -> list[dict]:
        """Every rating of the latest submitted version of each read, with readable labels."""
        rows = self.db.all(
            "SELECT rd.reader_id, rr.name, rd.case_id, rd.session, rd.modality, rd.version, rd.started_at, "
            "rd.submitted_at, rd.duration_s, c.truth_patient, c.training, c.ai, g.node_key, g.ai_node_id, g.r, g.a, "
            "g.s, g.region, g.side, g.score, g.call, g.most_suspicious, g.comment "
            "FROM reads rd JOIN readers rr ON rr.reader_id = rd.reader_id JOIN cases c ON c.case_id = rd.case_id "
            "JOIN ratings g ON g.read_id = rd.read_id WHERE rd.status = 'submitted' "
            "ORDER BY rd.reader_id, rd.session, rd.case_id, g.node_key")
        scale = self.protocol["scale"]
        out = []
        for r in rows:
            if r[10] and not include_training:
                continue
            ai = json.loads(r[11]) if r[11] else {}
            out.append({"reader": r[0], "reader_name": r[1], "case": r[2], "session": r[3], "modality": r[4],
                        "version": r[5], "started_at": r[6], "submitted_at": r[7], "duration_s": r[8],
                        "truth": r[9], "training": bool(r[10]), "node_key": r[12], "ai_node_id": r[13],
                        "r": r[14], "a": r[15], "s": r[16], "region": r[17], "side": r[18], "rating": r[19],
                        "rating_label": scale.get(str(r[19]), ""),
                        "call": "" if r[20] is None else ("yes" if r[20] else "no"),
                        "most_suspicious": "yes" if r[21] else "no", "comment": r[22],
                        "ai_probability": ai.get("probability"), "ai_status": ai.get("status")})
        return out

    EXPORT_COLUMNS = ("reader", "reader_name", "case", "session", "modality", "version", "started_at", "submitted_at",
                      "duration_s", "truth", "node_key", "ai_node_id", "r", "a", "s", "region", "side", "rating",
                      "rating_label", "call", "most_suspicious", "comment", "ai_probability", "ai_status")

    def export_csv(self, include_training: bool = False) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.EXPORT_COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for row in self.final_ratings(include_training):
            w.writerow({k: spreadsheet_safe(v) for k, v in row.items()})  # a comment "=HYPERLINK(..." stays text
        return buf.getvalue()

    def patient_rows(self) -> list[dict]:
        """Patient-level analysis rows: each reader's most suspicious node per case and modality."""
        return [{"reader": r["reader"], "modality": r["modality"], "case": r["case"], "truth": r["truth"],
                 "rating": float(r["rating"]), "call": r["call"], "ai_probability": r["ai_probability"],
                 "ai_status": r["ai_status"]}
                for r in self.final_ratings() if r["most_suspicious"] == "yes"]

