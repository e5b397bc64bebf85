"""The two storage back ends of a study: a SQLite file (default) or a PostgreSQL database (a
`postgresql://` URL, for multi-site studies). Same schema, same SQL (`?` placeholders), one
transaction per call, committed before the call returns.

Nothing is ever deleted and a submitted read never changes: triggers refuse it in the database
itself, so a bug in a front end or a hand-edited file cannot rewrite a reader's history.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterator

from ..errors import InputError

SCHEMA_VERSION = 1
TABLES = ("meta", "cases", "readers", "assignments", "reads", "ratings", "audit", "staff", "invites", "logins")

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
  case_id TEXT PRIMARY KEY, image TEXT, dicom_uid TEXT, truth_patient INTEGER, truth_nodes TEXT,
  ai TEXT, training INTEGER NOT NULL DEFAULT 0, reference_by TEXT, grp INTEGER, added_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS readers (
  reader_id TEXT PRIMARY KEY, name TEXT, years REAL, active INTEGER NOT NULL, seq INTEGER NOT NULL,
  reference_override TEXT, added_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
  reader_id TEXT NOT NULL, session INTEGER NOT NULL, position INTEGER NOT NULL, case_id TEXT NOT NULL,
  modality TEXT NOT NULL, PRIMARY KEY (reader_id, session, position), UNIQUE (reader_id, session, case_id));
CREATE TABLE IF NOT EXISTS reads (
  read_id TEXT PRIMARY KEY, reader_id TEXT NOT NULL, case_id TEXT NOT NULL, session INTEGER NOT NULL,
  modality TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL, started_at TEXT NOT NULL,
  submitted_at TEXT, duration_s REAL, supersedes TEXT, UNIQUE (reader_id, case_id, session, version));
CREATE TABLE IF NOT EXISTS ratings (
  read_id TEXT NOT NULL, node_key TEXT NOT NULL, ai_node_id TEXT, r REAL, a REAL, s REAL, region TEXT,
  side TEXT, score INTEGER NOT NULL, call INTEGER, most_suspicious INTEGER NOT NULL, comment TEXT,
  recorded_at TEXT NOT NULL, PRIMARY KEY (read_id, node_key));
CREATE TABLE IF NOT EXISTS staff (
  user_id TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT, active INTEGER NOT NULL, added_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS invites (
  token_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, created_by TEXT NOT NULL, created_at TEXT NOT NULL,
  expires_at TEXT NOT NULL, login_days REAL NOT NULL, used_at TEXT, revoked_at TEXT);
CREATE TABLE IF NOT EXISTS logins (
  token_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, invite_hash TEXT NOT NULL, created_at TEXT NOT NULL,
  expires_at TEXT NOT NULL, revoked_at TEXT);
"""
_STAFF_TABLE = _DDL[_DDL.index("CREATE TABLE IF NOT EXISTS staff"):_DDL.index("CREATE TABLE IF NOT EXISTS invites")]
_ACCESS_TABLES = _DDL[_DDL.index("CREATE TABLE IF NOT EXISTS invites"):]

_SQLITE_EXTRA = """
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL,
  action TEXT NOT NULL, detail TEXT NOT NULL, hash TEXT);
""" + "".join(f"""
CREATE TRIGGER IF NOT EXISTS no_delete_{t} BEFORE DELETE ON {t}
BEGIN SELECT RAISE(ABORT, 'LLNAssist studies never delete rows'); END;
""" for t in TABLES) + """
CREATE TRIGGER IF NOT EXISTS audit_append_only BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ratings_frozen BEFORE UPDATE ON ratings
WHEN (SELECT status FROM reads WHERE read_id = OLD.read_id) <> 'open'
BEGIN SELECT RAISE(ABORT, 'ratings of a submitted read are immutable'); END;
CREATE TRIGGER IF NOT EXISTS ratings_insert_frozen BEFORE INSERT ON ratings
WHEN (SELECT status FROM reads WHERE read_id = NEW.read_id) NOT IN ('open', 'correcting')
BEGIN SELECT RAISE(ABORT, 'ratings of a submitted read are immutable'); END;
CREATE TRIGGER IF NOT EXISTS reads_immutable BEFORE UPDATE ON reads
WHEN NOT ((OLD.status IN ('open', 'correcting') AND NEW.status = 'submitted')
          OR (OLD.status = 'submitted' AND NEW.status = 'superseded'))
     OR NEW.read_id <> OLD.read_id OR NEW.reader_id <> OLD.reader_id OR NEW.case_id <> OLD.case_id
     OR NEW.session <> OLD.session OR NEW.version <> OLD.version OR NEW.started_at <> OLD.started_at
BEGIN SELECT RAISE(ABORT, 'a submitted read is immutable; record a correction instead'); END;
"""

_PG_EXTRA = """
CREATE TABLE IF NOT EXISTS audit (seq BIGSERIAL PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL,
  action TEXT NOT NULL, detail TEXT NOT NULL, hash TEXT);
CREATE OR REPLACE FUNCTION llnassist_no_delete() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'LLNAssist studies never delete rows'; END; $$ LANGUAGE plpgsql;
CREATE OR REPLACE FUNCTION llnassist_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only'; END; $$ LANGUAGE plpgsql;
CREATE OR REPLACE FUNCTION llnassist_ratings_frozen() RETURNS trigger AS $$
DECLARE st TEXT;
BEGIN
  SELECT status INTO st FROM reads WHERE read_id = NEW.read_id;
  IF (TG_OP = 'UPDATE' AND st <> 'open') OR (TG_OP = 'INSERT' AND st NOT IN ('open', 'correcting')) THEN
    RAISE EXCEPTION 'ratings of a submitted read are immutable';
  END IF;
  RETURN NEW;
END; $$ LANGUAGE plpgsql;
CREATE OR REPLACE FUNCTION llnassist_reads_immutable() RETURNS trigger AS $$
BEGIN
  IF NOT ((OLD.status IN ('open', 'correcting') AND NEW.status = 'submitted')
          OR (OLD.status = 'submitted' AND NEW.status = 'superseded'))
     OR NEW.read_id <> OLD.read_id OR NEW.reader_id <> OLD.reader_id OR NEW.case_id <> OLD.case_id
     OR NEW.session <> OLD.session OR NEW.version <> OLD.version OR NEW.started_at <> OLD.started_at THEN
    RAISE EXCEPTION 'a submitted read is immutable; record a correction instead';
  END IF;
  RETURN NEW;
END; $$ LANGUAGE plpgsql;
""" + "".join(f"""
DROP TRIGGER IF EXISTS no_delete_{t} ON {t};
CREATE TRIGGER no_delete_{t} BEFORE DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION llnassist_no_delete();
""" for t in TABLES) + """
DROP TRIGGER IF EXISTS audit_append_only ON audit;
CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit FOR EACH ROW EXECUTE FUNCTION llnassist_append_only();
DROP TRIGGER IF EXISTS ratings_frozen ON ratings;
CREATE TRIGGER ratings_frozen BEFORE INSERT OR UPDATE ON ratings FOR EACH ROW
  EXECUTE FUNCTION llnassist_ratings_frozen();
DROP TRIGGER IF EXISTS reads_immutable ON reads;
CREATE TRIGGER reads_immutable BEFORE UPDATE ON reads FOR EACH ROW EXECUTE FUNCTION llnassist_reads_immutable();
"""


def is_url(location: str) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


class Database:
    """A connection with `transaction()` (serialised writers), `one`, `all` and `run`."""

    kind = "sqlite"

    def __init__(self, location: str, create: bool):
        self.location = str(location)
        self._conn = self._connect(create)

    # -- connection -----------------------------------------------------------------------------
    def _connect(self, create: bool):
        path = Path(self.location)
        if not create and not path.is_file():
            raise InputError(f"study file {path} does not exist; create it with `llnassist study create`")
        if create and path.exists():
            raise InputError(f"{path} already exists; choose a new study file name")
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the lock up
        # front and two processes never both read-then-write the same row.
        conn = sqlite3.connect(str(path), timeout=60.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a commit is on disk when the call returns
            conn.execute("PRAGMA foreign_keys=ON")
            if not create:
                conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError:
            conn.close()
            raise InputError(f"{path} is not an LLNAssist study file; give the .sqlite file that "
                             "`llnassist study create` made") from None
        return conn

    def init_schema(self) -> None:
        self._conn.executescript(_DDL + _SQLITE_EXTRA)

    def close(self) -> None:
        self._conn.close()

    # -- statements -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        for attempt in range(200):
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as e:  # busy beyond the timeout: keep waiting, briefly
                if "locked" not in str(e) or attempt == 199:
                    raise
                time.sleep(0.05)
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def run(self, sql: str, params: tuple = ()) -> int:
        try:
            return self._conn.execute(sql, params).rowcount
        except sqlite3.IntegrityError as e:
            raise IntegrityRefused(str(e)) from None
        except sqlite3.DatabaseError as e:
            if "immutable" in str(e) or "never delete" in str(e) or "append-only" in str(e):
                raise IntegrityRefused(str(e)) from None
            raise

    def one(self, sql: str, params: tuple = ()):
        row = self._conn.execute(sql, params).fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: tuple = ()) -> list:
        return [tuple(r) for r in self._conn.execute(sql, params).fetchall()]

    def integrity_check(self) -> str:
        return self._conn.execute("PRAGMA integrity_check").fetchone()[0]


class PostgresDatabase(Database):
    kind = "postgresql"

    def _connect(self, create: bool):
        try:
            import psycopg
        except ImportError:
            raise InputError("PostgreSQL studies need psycopg; install it with "
                             "`pip install 'psycopg[binary]'`") from None
        try:
            conn = psycopg.connect(self.location, autocommit=True)
        except psycopg.OperationalError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "connection failed"
            raise InputError(f"cannot connect to {redact(self.location)} ({first}); check the URL and that the "
                             "server is running") from None
        has = conn.execute("SELECT to_regclass('meta')").fetchone()[0] is not None
        if create and has:
            conn.close()
            raise InputError(f"{redact(self.location)} already holds a study; use an empty database")
        if not create and not has:
            conn.close()
            raise InputError(f"{redact(self.location)} holds no LLNAssist study; create it with "
                             "`llnassist study create`")
        return conn

    def init_schema(self) -> None:
        with self._conn.transaction():
            self._conn.execute(_DDL + _PG_EXTRA)

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        # One study-wide advisory lock per write transaction: the same serialisation SQLite's
        # BEGIN IMMEDIATE gives, so the rules (versions, positions) hold with many writers.
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(7400001)")
            yield

    def run(self, sql: str, params: tuple = ()) -> int:
        import psycopg

        try:
            return self._conn.execute(self._sql(sql), params).rowcount
        except psycopg.errors.IntegrityError as e:
            raise IntegrityRefused(str(e).splitlines()[0]) from None
        except psycopg.errors.RaiseException as e:
            raise IntegrityRefused(str(e).splitlines()[0]) from None

    def one(self, sql: str, params: tuple = ()):
        row = self._conn.execute(self._sql(sql), params).fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: tuple = ()) -> list:
        return [tuple(r) for r in self._conn.execute(self._sql(sql), params).fetchall()]

    def integrity_check(self) -> str:
        return "ok"


def expected_triggers(kind: str) -> set:
    """The history-protecting triggers a study's database must have."""
    return {f"no_delete_{t}" for t in TABLES} | {"audit_append_only", "ratings_frozen", "reads_immutable"} | \
        ({"ratings_insert_frozen"} if kind == "sqlite" else set())


def present_triggers(db: Database) -> set:
    if db.kind == "postgresql":
        return {r[0] for r in db.all("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
    return {r[0] for r in db.all("SELECT name FROM sqlite_master WHERE type = 'trigger'")}


def _has_table(db: Database, name: str) -> bool:
    if db.kind == "postgresql":
        return db.one("SELECT to_regclass(?)", (name,))[0] is not None
    return bool(db.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))


def _no_delete_trigger(db: Database, table: str) -> None:
    if db.kind == "postgresql":
        db.run(f"CREATE TRIGGER no_delete_{table} BEFORE DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION "
               "llnassist_no_delete()")
    else:
        db.run(f"CREATE TRIGGER no_delete_{table} BEFORE DELETE ON {table} BEGIN SELECT RAISE(ABORT, "
               "'LLNAssist studies never delete rows'); END")


def upgrade(db: Database) -> bool:
    """Brings a study made by an earlier version up to date: the audit hash column (earlier entries
    stay unchained), the staff table of roles and the sign-in tables, each with its no-delete
    trigger. Existing triggers are never recreated, so `verify` still sees one that was dropped.
    Only looks when nothing is missing, so an account that may not alter tables (the reading
    server's) can open an up-to-date study. Returns whether staff was added."""
    if db.kind == "postgresql":
        has_hash = db.one("SELECT 1 FROM information_schema.columns WHERE table_name = 'audit' AND "
                          "column_name = 'hash'") is not None
    else:
        has_hash = "hash" in {r[1] for r in db.all("PRAGMA table_info(audit)")}
    if not has_hash:
        db.run("ALTER TABLE audit ADD COLUMN hash TEXT")
    if not _has_table(db, "invites"):
        for statement in _ACCESS_TABLES.split(";"):  # sqlite3 runs one statement per call
            if statement.strip():
                db.run(statement)
        for table in ("invites", "logins"):
            _no_delete_trigger(db, table)
    if _has_table(db, "staff"):
        return False
    db.run(_STAFF_TABLE)
    _no_delete_trigger(db, "staff")
    return True


class IntegrityRefused(InputError):
    """The database refused a change that would rewrite history (delete, edit a submitted read)."""


def redact(url: str) -> str:
    """A URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}" if ":" in cred else url
    return url


def connect(location: str | os.PathLike, create: bool = False) -> Database:
    loc = str(location)
    return PostgresDatabase(loc, create) if is_url(loc) else Database(loc, create)
