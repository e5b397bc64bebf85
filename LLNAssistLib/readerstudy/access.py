"""Who may use the reading server: personal, one-time sign-in links that a coordinator issues
(`llnassist study invite`), the sign-ins they become, and revocation. Everything is in the study's
own store, so a revoked link or sign-in stops working on every server at once.

Only sha256 hashes of the tokens are stored: someone who reads the database cannot sign in. Every
invite, sign-in and revocation is in the audit hash chain.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import secrets
from dataclasses import dataclass
from typing import Optional

from ..errors import InputError
from .study import RuleRefused, Study, _iso, _parse, normalise_reader_id

INVITE_DAYS = 7.0  # the link must be used within this
LOGIN_DAYS = 14.0  # a sign-in lasts this long (a reading period); revocable at any time


class AccessRefused(InputError):
    """A sign-in link or sign-in that is unknown, used, expired or revoked."""


@dataclass(frozen=True)
class User:
    user_id: str
    role: str  # coordinator, reference or reader


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _days(value, what: str) -> float:
    try:
        days = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} {value!r} is not a number of days") from None
    if not math.isfinite(days) or days <= 0 or days > 366:
        raise InputError(f"{what} {value!r} must be more than 0 and at most 366 days")
    return days


def invite(study: Study, user: str, by: str, expires_days: float = INVITE_DAYS,
           login_days: float = LOGIN_DAYS) -> str:
    """A one-time sign-in token for a member of the study (reader, coordinator or reference);
    only a coordinator may issue one. Returns the token (shown once; only its hash is kept)."""
    expires_days, login_days = _days(expires_days, "--expires-days"), _days(login_days, "--login-days")
    uid = normalise_reader_id(user)
    token = secrets.token_urlsafe(32)
    with study.db.transaction():
        by = study._require_coordinator(by, "issue sign-in links")
        found = study.member(uid)
        if found is None:
            raise InputError(f"{uid or 'an empty id'} is not a member of this study; add them as a reader "
                             "(study add-readers) or staff (study add-staff) first")
        uid, role = found
        now = study.clock()
        study.db.run("INSERT INTO invites (token_hash, user_id, created_by, created_at, expires_at, login_days) "
                     "VALUES (?, ?, ?, ?, ?, ?)", (_hash(token), uid, by, _iso(now),
                                                   _iso(now + _dt.timedelta(days=expires_days)), login_days))
        study._audit(by, "invite", user=uid, role=role, expires_days=expires_days, login_days=login_days)
    return token


def sign_in(study: Study, token: str) -> tuple[str, User]:
    """Exchanges a sign-in link's token (once) for a sign-in token; returns it and the user."""
    if not token or len(token) > 200:
        raise AccessRefused("this sign-in link is not valid; ask the study coordinator for a new one")
    now = study.clock()
    login = secrets.token_urlsafe(32)
    with study.db.transaction():
        row = study.db.one("SELECT user_id, expires_at, used_at, revoked_at, login_days FROM invites WHERE "
                           "token_hash = ?", (_hash(token),))
        if row is None:
            raise AccessRefused("this sign-in link is not valid; ask the study coordinator for a new one")
        uid, expires, used, revoked, login_days = row
        why = ("was revoked" if revoked else "was already used" if used else
               "has expired" if now >= _parse(expires) else "")
        if why:
            raise AccessRefused(f"this sign-in link {why}; ask the study coordinator for a new one")
        role = study.role_of(uid)
        if role is None:
            raise AccessRefused(f"{uid} is no longer a member of this study")
        study.db.run("UPDATE invites SET used_at = ? WHERE token_hash = ?", (_iso(now), _hash(token)))
        study.db.run("INSERT INTO logins (token_hash, user_id, invite_hash, created_at, expires_at) VALUES "
                     "(?, ?, ?, ?, ?)", (_hash(login), uid, _hash(token), _iso(now),
                                         _iso(now + _dt.timedelta(days=float(login_days)))))
        study._audit(uid, "sign_in", role=role)
    return login, User(uid, role)


def user_of(study: Study, login: Optional[str]) -> Optional[User]:
    """The signed-in user of a sign-in token, or None (unknown, expired, revoked, or no longer a
    member: a removed reader loses access at once)."""
    if not login or len(login) > 200:
        return None
    row = study.db.one("SELECT user_id, expires_at, revoked_at FROM logins WHERE token_hash = ?", (_hash(login),))
    if row is None or row[2] is not None or study.clock() >= _parse(row[1]):
        return None
    role = study.role_of(row[0])
    return User(row[0], role) if role else None


def sign_out(study: Study, login: str) -> None:
    with study.db.transaction():
        row = study.db.one("SELECT user_id FROM logins WHERE token_hash = ? AND revoked_at IS NULL", (_hash(login),))
        if row:
            study.db.run("UPDATE logins SET revoked_at = ? WHERE token_hash = ?", (_iso(study.clock()), _hash(login)))
            study._audit(row[0], "sign_out")


def revoke(study: Study, user: str, by: str, reason: str) -> dict:
    """Revokes every unused sign-in link and every sign-in of a user. Returns the counts."""
    if not reason:
        raise InputError("a revocation needs a reason (--reason)")
    uid = normalise_reader_id(user)
    with study.db.transaction():
        by = study._require_coordinator(by, "revoke sign-ins")
        found = study.member(uid, include_inactive=True)  # a removed reader's sign-ins can be revoked too
        uid = found[0] if found else uid
        now = _iso(study.clock())
        links = study.db.run("UPDATE invites SET revoked_at = ? WHERE user_id = ? AND used_at IS NULL AND revoked_at "
                             "IS NULL", (now, uid))
        logins = study.db.run("UPDATE logins SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", (now, uid))
        if links == 0 and logins == 0:
            raise RuleRefused(f"{uid} has no open sign-in link and no sign-in to revoke")
        study._audit(by, "revoke_access", user=uid, links=links, logins=logins, reason=reason)
    return {"links": links, "logins": logins}


def access_list(study: Study) -> list[dict]:
    """Links and sign-ins per user, for the coordinator (no tokens)."""
    now = study.clock()
    out = []
    for uid, created, expires, used, revoked in study.db.all(
            "SELECT user_id, created_at, expires_at, used_at, revoked_at FROM invites ORDER BY created_at"):
        state = ("revoked" if revoked else "used" if used else "expired" if now >= _parse(expires) else "open")
        out.append({"user": uid, "kind": "link", "created_at": created, "expires_at": expires, "state": state})
    for uid, created, expires, revoked in study.db.all(
            "SELECT user_id, created_at, expires_at, revoked_at FROM logins ORDER BY created_at"):
        state = "revoked" if revoked else "expired" if now >= _parse(expires) else "active"
        out.append({"user": uid, "kind": "sign-in", "created_at": created, "expires_at": expires, "state": state})
    return out


def grant_server_role(study: Study, role: str, by: str) -> list[str]:
    """PostgreSQL: gives an existing database role what the reading server needs and nothing more:
    it reads, adds rows and moves reads from open to submitted; it cannot delete, cannot change a
    submitted read (the triggers, which it cannot drop because it does not own the tables), cannot
    change the protocol, staff or cases, and cannot rewrite the audit log. Returns the statements."""
    if study.db.kind != "postgresql":
        raise InputError("database roles are a PostgreSQL feature; a SQLite study is protected by its file "
                         "permissions (give the server's account write access only to the study file's folder)")
    if not role or not role.replace("_", "").isalnum() or not role[0].isalpha():
        raise InputError(f"role {role!r} is not a plain PostgreSQL role name (letters, digits, _)")
    if study.db.one("SELECT 1 FROM pg_roles WHERE rolname = ?", (role,)) is None:
        raise InputError(f"database role {role} does not exist; create it first (CREATE ROLE {role} LOGIN ...)")
    owner = study.db.one("SELECT tableowner FROM pg_tables WHERE tablename = 'meta' AND schemaname = "
                         "current_schema()")[0]
    if owner == role:
        raise InputError(f"{role} owns the study's tables; the reading server needs an account that does not")
    tables = ", ".join(t for t in ("meta", "cases", "readers", "assignments", "reads", "ratings", "audit", "staff",
                                   "invites", "logins"))
    statements = [
        f"REVOKE ALL ON {tables} FROM {role}",
        f"GRANT SELECT ON {tables} TO {role}",
        # freezing the protocol and assigning reading orders happen at the first read
        f"GRANT INSERT ON meta, assignments, reads, ratings, audit, logins TO {role}",
        f"GRANT UPDATE (grp) ON cases TO {role}",
        f"GRANT UPDATE (status, submitted_at, duration_s) ON reads TO {role}",
        # rating edits while a read is open; the ratings_frozen trigger refuses them once submitted
        f"GRANT UPDATE ON ratings TO {role}",
        f"GRANT UPDATE (used_at) ON invites TO {role}",
        f"GRANT UPDATE (revoked_at) ON logins TO {role}",
        f"GRANT USAGE, SELECT ON SEQUENCE audit_seq_seq TO {role}",
    ]
    with study.db.transaction():
        by = study._require_coordinator(by, "grant the reading server's database role")
        for sql in statements:
            study.db.run(sql)
        study._audit(by, "grant_server_role", role=role)
    return statements
