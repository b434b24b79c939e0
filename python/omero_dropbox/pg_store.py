"""The import queue in PostgreSQL: :class:`PgQueueStore`, a :class:`~omero_dropbox.queue_store.QueueStore`
that workers on several hosts can share.

The semantics are the SQLite journal's (``Journal.enqueue``/``claim_next``/``finish``): a
fileset is in the queue while ``queued``; a claim picks, in SQL, the user whose last claim is
oldest and that user's fileset due first, moves it to ``importing`` and stamps it with a
fencing token from one counter; a result is recorded only with the current token.

What several hosts add (see docs/scale-out.md):

* claims are serialised by the token counter's row lock and take the chosen fileset with
  ``FOR UPDATE SKIP LOCKED``, so a claim never waits for a fileset another session holds;
* every claim has a lease (``lease_until``, in the database server's clock, the one clock all
  hosts share) that :meth:`PgQueueStore.heartbeat` extends while the import runs;
* :meth:`PgQueueStore.reclaim_expired` puts a fileset whose lease ran out (its worker died or
  lost the database) back in the queue; the old token is then refused by ``finish``.

Connections: one per store, guarded by a lock (like the journal's); autocommit off, every
operation one explicit transaction, every statement bounded by ``statement_timeout`` and
``lock_timeout``.  A dropped connection is replaced at the next call; an operation that failed
before its COMMIT was sent is retried once on the fresh connection (the server rolled it back),
one that failed during COMMIT is not (it may have been recorded) and raises
:class:`StoreUnavailableError`.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from omero_dropbox.journal import (
    INTERRUPTED_REASON,
    OBJECTS_PREFIX,
    RECLAIMED_REASON,
    FilesetRecord,
    HistoryEntry,
    InvalidTransitionError,
    JournalBusyError,
    JournalError,
    StaleClaimError,
    StoreUnreachableError,
    transition_sets,
)
from omero_dropbox.queue_store import Claim
from omero_dropbox.states import FILESET_STATES, TRANSITIONS, FilesetState, sql_list
from omero_dropbox.stored_text import blob_path, column_text, path_blob, stored_reason

__all__ = [
    "PG_SCHEMA",
    "PG_SCHEMA_VERSION",
    "PgQueueStore",
    "RemoteState",
    "StoreUnavailableError",
    "redact_dsn",
]

#: The PostgreSQL schema that holds every table: the database may be shared with others.
PG_SCHEMA = "omero_dropbox"
PG_SCHEMA_VERSION = 1

CONNECT_TIMEOUT = 10  # seconds; libpq's connect_timeout
# Seconds.  Our statements take milliseconds: a slower one is an overloaded server, and a
# lock held longer than LOCK_TIMEOUT is someone else's stuck session; either way the call fails
# (JournalBusyError) instead of hanging the worker.
STATEMENT_TIMEOUT = 30.0
LOCK_TIMEOUT = 10.0
# A client frozen inside a transaction (a claim holds the counter row) is cut off by the server
# after this, so that it cannot stall the other hosts' claims for longer.
IDLE_IN_TRANSACTION_TIMEOUT = 60.0
# How many users' queue heads one claim tries when the first ones are locked by others.
_CANDIDATES = 8
# Advisory lock key taken while creating the schema, so that hosts starting together do not
# race on CREATE ("ODBX").
_SETUP_LOCK = 0x4F444258


_Q = FilesetState.QUEUED.value
_I = FilesetState.IMPORTING.value

_T = TypeVar("_T")
_Cursor = psycopg.Cursor[tuple[Any, ...]]
_Connection = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True)
class RemoteState:
    """A fileset's state in the shared queue, as :meth:`PgQueueStore.outcomes` reads it."""

    state: FilesetState
    last_error: str
    next_attempt_at: float | None
    claimed_by: str  # the worker of the last claim ("" if never claimed)
    objects: tuple[str, ...] = ()  # of an imported fileset: what its worker noted (record_objects)


class StoreUnavailableError(StoreUnreachableError):
    """The PostgreSQL server cannot be reached (down, restarting, network cut).

    A :class:`~omero_dropbox.journal.JournalBusyError`: nothing is lost, keep the work and try
    again; the import queue holds a finished import's result and retries it.
    """


# --- the schema -------------------------------------------------------------------------

# Mirrors the journal's filesets/fileset_members/queue_users/history tables (schema v3 and v5
# of journal.py); paths are the bytes on disk (bytea), like the journal's BLOBs.  ``owner`` is
# the journal's ``user`` (a reserved word here).  ``queue_clock`` is the one token counter;
# ``queue_users.seq`` is the journal's rowid (the order users first queued, for ties).
_SCHEMA_V1 = f"""
CREATE TABLE {PG_SCHEMA}.schema_version (
    version integer NOT NULL,
    applied double precision NOT NULL
);
CREATE TABLE {PG_SCHEMA}.filesets (
    id              text PRIMARY KEY,
    owner           text NOT NULL,
    key             bytea NOT NULL,
    format          text NOT NULL,
    state           text NOT NULL CHECK (state IN {sql_list(FILESET_STATES)}),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text NOT NULL DEFAULT '',
    next_attempt_at double precision,
    created         double precision NOT NULL,
    updated         double precision NOT NULL,
    started         double precision,
    finished        double precision,
    plan            text NOT NULL DEFAULT '',
    due_at          double precision,
    claim_token     bigint,
    claimed_by      text,
    claimed_at      double precision,
    lease_until     double precision
);
CREATE INDEX filesets_queue ON {PG_SCHEMA}.filesets(state, owner, due_at);
CREATE INDEX filesets_due ON {PG_SCHEMA}.filesets(state, due_at);
CREATE INDEX filesets_lease ON {PG_SCHEMA}.filesets(lease_until) WHERE state = '{_I}';
CREATE TABLE {PG_SCHEMA}.fileset_members (
    fileset_id text NOT NULL REFERENCES {PG_SCHEMA}.filesets(id) ON DELETE CASCADE,
    position   integer NOT NULL,
    path       bytea NOT NULL,
    PRIMARY KEY (fileset_id, position)
);
CREATE TABLE {PG_SCHEMA}.queue_users (
    owner      text PRIMARY KEY,
    last_claim bigint NOT NULL DEFAULT 0,
    seq        bigint GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX queue_users_turn ON {PG_SCHEMA}.queue_users(last_claim, seq);
CREATE TABLE {PG_SCHEMA}.queue_clock (
    id         integer PRIMARY KEY CHECK (id = 1),
    last_token bigint NOT NULL
);
INSERT INTO {PG_SCHEMA}.queue_clock(id, last_token) VALUES (1, 0);
CREATE TABLE {PG_SCHEMA}.history (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        double precision NOT NULL,
    kind      text NOT NULL CHECK (kind IN ('file', 'fileset')),
    subject   text NOT NULL,
    path      bytea,
    owner     text,
    old_state text,
    new_state text NOT NULL,
    reason    text NOT NULL DEFAULT ''
);
CREATE INDEX history_subject ON {PG_SCHEMA}.history(subject, id);
"""

_FS_COLS = (
    "f.id, f.owner, f.key, f.format, f.state, f.attempts, f.last_error, f.next_attempt_at,"
    " f.created, f.updated, f.started, f.finished, f.plan,"
    f" ARRAY(SELECT m.path FROM {PG_SCHEMA}.fileset_members m"
    " WHERE m.fileset_id = f.id ORDER BY m.position)"
)

_SERVER_NOW = "extract(epoch FROM clock_timestamp())::float8"


def redact_dsn(dsn: str) -> str:
    """``dsn`` as it may be shown in a log: any password replaced by ``***``."""
    try:
        if re.match(r"^postgres(ql)?://", dsn):
            parts = urlsplit(dsn)
            netloc = parts.netloc
            if "@" in netloc:
                creds, host = netloc.rsplit("@", 1)
                if ":" in creds:
                    netloc = creds.split(":", 1)[0] + ":***@" + host
            query = urlencode(
                [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="*"
            )
            return urlunsplit(parts._replace(netloc=netloc, query=query))
        params = conninfo_to_dict(dsn)
    except (ValueError, psycopg.ProgrammingError):
        return "<unparsable DSN>"  # it may hold a password we cannot find: show none of it
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


def _record(row: Sequence[Any]) -> FilesetRecord:
    return FilesetRecord(
        id=row[0],
        user=row[1],
        key=blob_path(row[2]),
        members=tuple(blob_path(p) for p in row[13]),
        format=row[3],
        state=FilesetState(row[4]),
        attempts=int(row[5]),
        last_error=row[6],
        next_attempt_at=row[7],
        created=row[8],
        updated=row[9],
        started=row[10],
        finished=row[11],
        plan=row[12],
    )


class PgQueueStore:
    """The import queue (and the fileset records it hands out) in a PostgreSQL database.

    ``dsn``: a libpq connection string or ``postgresql://`` URL.  ``lease``: seconds a claim
    stays a worker's without a :meth:`heartbeat`.  ``lock_timeout``: seconds a call waits for a
    row another session holds before :class:`~omero_dropbox.journal.JournalBusyError`.  The
    tables are created at the first connection, in the schema :data:`PG_SCHEMA`.
    """

    def __init__(self, dsn: str, *, lease: float = 60.0, lock_timeout: float = LOCK_TIMEOUT) -> None:
        for name, value in (("lease", lease), ("lock_timeout", lock_timeout)):
            if not value >= 0 or math.isinf(value):
                raise ValueError(f"{name}={value!r}: give a number of seconds, 0 or more")
        self.dsn = dsn
        self.lease = float(lease)
        self.lock_timeout = float(lock_timeout)
        self.shown_dsn = redact_dsn(dsn)
        self._lock = threading.RLock()
        self._conn: _Connection | None = None
        self._ready = False  # schema checked/created by this store
        with self._lock:
            self._connection()

    # -- connections ---------------------------------------------------------------------

    def _connect_error(self, e: psycopg.Error) -> JournalError:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        low = msg.lower()
        if "authentication failed" in low or "no pg_hba.conf entry" in low or "password" in low:
            return JournalError(
                f"cannot log in to PostgreSQL {self.shown_dsn}: {msg}; check the user and password "
                "(in the DSN, PGPASSWORD or ~/.pgpass) and the server's pg_hba.conf"
            )
        if "does not exist" in low:
            return JournalError(
                f"cannot use PostgreSQL {self.shown_dsn}: {msg}; create it first "
                "(createdb/createuser), or fix the DSN"
            )
        return StoreUnavailableError(
            f"cannot connect to PostgreSQL {self.shown_dsn}: {msg}; is the server running and "
            "accepting TCP connections at that host and port? Nothing is lost: the queue is "
            "used again as soon as it answers"
        )

    def _connection(self) -> _Connection:
        """The open connection, or a new one (with the schema ensured on the first)."""
        if self._conn is not None and not (self._conn.closed or self._conn.broken):
            return self._conn
        self._drop()
        try:
            # The DSN's own settings win; these only fill in what it leaves out.  Keepalives
            # make a silently cut network fail a call instead of hanging it.
            params: dict[str, Any] = {
                "connect_timeout": CONNECT_TIMEOUT,
                "fallback_application_name": "omero-dropbox",
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            }
            params.update(conninfo_to_dict(self.dsn))
            conn: _Connection = psycopg.connect(make_conninfo("", **params), autocommit=False)
        except psycopg.Error as e:
            raise self._connect_error(e) from None
        try:
            with conn.cursor() as cur:
                for name, seconds in (
                    ("statement_timeout", STATEMENT_TIMEOUT),
                    ("lock_timeout", self.lock_timeout),
                    ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION_TIMEOUT),
                ):
                    cur.execute("SELECT set_config(%s, %s, false)", (name, f"{round(seconds * 1000)}ms"))
                if not self._ready:
                    self._setup(cur)
            conn.commit()
        except psycopg.Error as e:
            conn.close()
            if isinstance(e, pg_errors.InsufficientPrivilege):
                raise JournalError(
                    f"PostgreSQL {self.shown_dsn}: cannot create the schema {PG_SCHEMA}: {e}; "
                    f"create it as the database owner (CREATE SCHEMA {PG_SCHEMA} AUTHORIZATION "
                    "<this user>) or GRANT CREATE ON DATABASE to this user"
                ) from None
            raise self._connect_error(e) from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._ready = True
        return conn

    def _setup(self, cur: _Cursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}")
        cur.execute("SELECT to_regclass(%s)", (f"{PG_SCHEMA}.schema_version",))
        row = cur.fetchone()
        if row is None or row[0] is None:
            for statement in _SCHEMA_V1.split(";"):
                if statement.strip():
                    cur.execute(statement)
            cur.execute(
                f"INSERT INTO {PG_SCHEMA}.schema_version(version, applied) VALUES (%s, %s)",
                (PG_SCHEMA_VERSION, time.time()),
            )
            return
        cur.execute(f"SELECT max(version) FROM {PG_SCHEMA}.schema_version")
        version = cur.fetchone()
        if version is None or version[0] is None or int(version[0]) > PG_SCHEMA_VERSION:
            raise JournalError(
                f"PostgreSQL {self.shown_dsn}: schema {PG_SCHEMA} is version "
                f"{None if version is None else version[0]}, this omero-dropbox knows "
                f"{PG_SCHEMA_VERSION}; upgrade omero-dropbox on this host"
            )

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass  # already gone

    def _run(self, what: str, body: Callable[[_Cursor], _T]) -> _T:
        """``body`` in one transaction, committed; errors become JournalErrors.

        A connection found dead before COMMIT (the server restarted since the last call) is
        replaced and ``body`` run once more: the server rolled the failed attempt back.
        """
        with self._lock:
            attempt = 0
            while True:
                attempt += 1
                conn = self._connection()
                committing = False
                try:
                    with conn.cursor() as cur:
                        result = body(cur)
                    committing = True
                    conn.commit()
                    return result
                except psycopg.Error as e:
                    lost = conn.closed or conn.broken
                    if lost:
                        self._drop()
                        if attempt == 1 and not committing:
                            continue
                        raise StoreUnavailableError(
                            f"lost the connection to PostgreSQL {self.shown_dsn} while {what}: "
                            f"{_first_line(e)}"
                            + (
                                "; the change may or may not have been recorded"
                                if committing
                                else "; nothing was recorded, try again"
                            )
                        ) from None
                    self._rollback(conn)
                    if isinstance(e, (pg_errors.QueryCanceled, pg_errors.LockNotAvailable)):
                        raise JournalBusyError(
                            f"PostgreSQL {self.shown_dsn} {what}: {_first_line(e)} (another session "
                            "holds a lock, or the server is overloaded); nothing was recorded, try again"
                        ) from None
                    raise JournalError(f"PostgreSQL {self.shown_dsn} {what}: {_first_line(e)}") from None
                except BaseException:
                    self._rollback(conn)
                    raise

    def _rollback(self, conn: _Connection) -> None:
        try:
            conn.rollback()
        except psycopg.Error:
            self._drop()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> PgQueueStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- records and state changes (inside a transaction) ----------------------------------

    @staticmethod
    def _fileset(cur: _Cursor, fid: str) -> FilesetRecord | None:
        cur.execute(f"SELECT {_FS_COLS} FROM {PG_SCHEMA}.filesets f WHERE f.id = %s", (fid,))
        row = cur.fetchone()
        return None if row is None else _record(row)

    @staticmethod
    def _history(
        cur: _Cursor,
        fid: str,
        new_state: str,
        *,
        old_state: str | None,
        key: bytes | None,
        user: str | None,
        reason: str,
        at: float,
    ) -> None:
        cur.execute(
            f"INSERT INTO {PG_SCHEMA}.history(at, kind, subject, path, owner, old_state, new_state, reason)"
            " VALUES (%s, 'fileset', %s, %s, %s, %s, %s, %s)",
            (at, fid, key, user, old_state, new_state, stored_reason(reason)),
        )

    def _transition(
        self,
        cur: _Cursor,
        fid: str,
        new_state: FilesetState,
        reason: str,
        next_attempt_at: float | None,
        now: float,
    ) -> FilesetState:
        """``Journal._transition``: the one place a fileset's state changes; locks its row."""
        cur.execute(f"SELECT state, owner, key FROM {PG_SCHEMA}.filesets WHERE id = %s FOR UPDATE", (fid,))
        row = cur.fetchone()
        if row is None:
            raise JournalError(f"unknown fileset {fid}")
        old_state, user, key = FilesetState(row[0]), row[1], row[2]
        if new_state not in TRANSITIONS[old_state]:
            raise InvalidTransitionError(f"fileset {fid}: cannot go from {old_state} to {new_state}")
        queued = new_state == FilesetState.QUEUED
        sets, args = transition_sets(old_state, new_state, reason, next_attempt_at, now, "%s")
        if new_state != FilesetState.IMPORTING:
            sets.append("lease_until = NULL")  # only a running claim has a lease
        args.append(fid)
        cur.execute(f"UPDATE {PG_SCHEMA}.filesets SET {', '.join(sets)} WHERE id = %s", args)
        if queued:
            cur.execute(
                f"INSERT INTO {PG_SCHEMA}.queue_users(owner) VALUES (%s) ON CONFLICT (owner) DO NOTHING",
                (user,),
            )
        self._history(
            cur, fid, new_state.value, old_state=old_state.value, key=key, user=user, reason=reason, at=now
        )
        return old_state

    # -- filesets in (a watcher's side) --------------------------------------------------

    def add_fileset(
        self,
        fileset_id: str,
        user: str,
        key: str,
        members: Sequence[str],
        fmt: str,
        *,
        plan: str | None = None,
        queue: bool = False,
        reason: str = "complete; queued for import",
    ) -> FilesetRecord:
        """Record a fileset as ``waiting`` (with ``queue``, straight into the queue).

        Idempotent on the fileset id (its content identity): a fileset not yet started takes
        the new key, members, format and ``plan`` (if given); one already importing or finished is returned
        unchanged, so sending it twice never imports it twice.
        """
        if not members:
            raise ValueError(f"fileset {fileset_id} has no members")
        if key not in members:
            members = [key, *members]
        user_text, fmt_text = column_text(user) or "", column_text(fmt) or ""

        def body(cur: _Cursor) -> FilesetRecord:
            now = time.time()
            # ON CONFLICT: concurrent watchers sending the same fileset both succeed, one row.
            cur.execute(
                f"INSERT INTO {PG_SCHEMA}.filesets(id, owner, key, format, state, created, updated, plan)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, key = EXCLUDED.key,"
                " format = EXCLUDED.format, updated = EXCLUDED.updated,"
                f" plan = COALESCE(%s::text, {PG_SCHEMA}.filesets.plan)"
                f" WHERE {PG_SCHEMA}.filesets.state IN (%s, %s)"
                " RETURNING (xmax = 0) AS inserted",
                (
                    fileset_id,
                    user_text,
                    path_blob(key),
                    fmt_text,
                    FilesetState.WAITING.value,
                    now,
                    now,
                    plan or "",
                    plan,
                    FilesetState.WAITING.value,
                    _Q,
                ),
            )
            row = cur.fetchone()
            if row is not None:  # inserted or revised: (re)write its members
                cur.execute(f"DELETE FROM {PG_SCHEMA}.fileset_members WHERE fileset_id = %s", (fileset_id,))
                cur.executemany(
                    f"INSERT INTO {PG_SCHEMA}.fileset_members(fileset_id, position, path)"
                    " VALUES (%s, %s, %s)",
                    [(fileset_id, i, path_blob(m)) for i, m in enumerate(members)],
                )
                if row[0]:
                    self._history(
                        cur,
                        fileset_id,
                        FilesetState.WAITING.value,
                        old_state=None,
                        key=path_blob(key),
                        user=user_text,
                        reason=f"new fileset, {len(members)} file(s), format {fmt_text}",
                        at=now,
                    )
            cur.execute(f"SELECT state FROM {PG_SCHEMA}.filesets WHERE id = %s FOR UPDATE", (fileset_id,))
            state = cur.fetchone()
            if state is not None and state[0] == _Q:  # its user may have changed: give her turns
                cur.execute(
                    f"INSERT INTO {PG_SCHEMA}.queue_users(owner) VALUES (%s) ON CONFLICT DO NOTHING",
                    (user_text,),
                )
            if queue and state is not None and state[0] == FilesetState.WAITING.value:
                self._transition(cur, fileset_id, FilesetState.QUEUED, reason, None, now)
            rec = self._fileset(cur, fileset_id)
            assert rec is not None
            return rec

        return self._run("recording a fileset", body)

    # -- the import queue (queue_store.QueueStore) ----------------------------------------

    def enqueue(
        self, fileset_id: str, reason: str, *, requeue: bool = False, plan: str | None = None
    ) -> FilesetState:
        """``Journal.enqueue``: ``waiting`` (with ``requeue`` also ``failed``/``skipped``) moves
        to ``queued``, due now; anything else stays.  Returns the state it was in."""
        movable = {FilesetState.WAITING}
        if requeue:
            movable |= {FilesetState.FAILED, FilesetState.SKIPPED}

        def body(cur: _Cursor) -> FilesetState:
            cur.execute(f"SELECT state FROM {PG_SCHEMA}.filesets WHERE id = %s FOR UPDATE", (fileset_id,))
            row = cur.fetchone()
            if row is None:
                raise JournalError(f"unknown fileset {fileset_id}")
            state = FilesetState(row[0])
            if state in movable:
                self._transition(cur, fileset_id, FilesetState.QUEUED, reason, None, time.time())
                if plan is not None:
                    cur.execute(
                        f"UPDATE {PG_SCHEMA}.filesets SET plan = %s WHERE id = %s", (plan, fileset_id)
                    )
                if requeue:
                    cur.execute(f"UPDATE {PG_SCHEMA}.filesets SET attempts = 0 WHERE id = %s", (fileset_id,))
            return state

        return self._run("queueing a fileset", body)

    def claim_next(
        self,
        now: float,
        *,
        worker: str,
        max_running: int,
        per_user_limit: int | None = None,
    ) -> Claim | None:
        """``Journal.claim_next``, shared by every host: the claim also takes a lease of
        :attr:`lease` seconds (server clock) that :meth:`heartbeat` must keep extending."""

        def body(cur: _Cursor) -> Claim | None:
            # The counter's row lock serialises claims (the cap and the turn are global
            # decisions); taken first, so the statements below see every earlier claim.
            cur.execute(f"SELECT last_token FROM {PG_SCHEMA}.queue_clock WHERE id = 1 FOR UPDATE")
            cur.execute(f"SELECT count(*) FROM {PG_SCHEMA}.filesets WHERE state = %s", (_I,))
            running = cur.fetchone()
            if running is None or running[0] >= max_running:
                return None
            limit = (
                ""
                if per_user_limit is None
                else f"AND (SELECT count(*) FROM {PG_SCHEMA}.filesets i"
                " WHERE i.state = %(importing)s AND i.owner = u.owner) < %(limit)s"
            )
            cur.execute(
                f"SELECT u.owner, c.id FROM {PG_SCHEMA}.queue_users u CROSS JOIN LATERAL ("
                f" SELECT f.id FROM {PG_SCHEMA}.filesets f"
                " WHERE f.state = %(queued)s AND f.owner = u.owner AND f.due_at <= %(now)s"
                " ORDER BY f.due_at, f.created, f.id LIMIT 1) c"
                f" WHERE true {limit} ORDER BY u.last_claim, u.seq LIMIT %(n)s",
                {"queued": _Q, "importing": _I, "now": now, "limit": per_user_limit, "n": _CANDIDATES},
            )
            for user, fid in cur.fetchall():
                # SKIP LOCKED: a fileset another session is changing (given up, revised) is
                # passed over rather than waited for; the next user's turn is tried.
                cur.execute(
                    f"SELECT id FROM {PG_SCHEMA}.filesets WHERE id = %s AND state = %s"
                    " FOR UPDATE SKIP LOCKED",
                    (fid, _Q),
                )
                if cur.fetchone() is None:
                    continue
                cur.execute(
                    f"UPDATE {PG_SCHEMA}.queue_clock SET last_token = last_token + 1 WHERE id = 1"
                    " RETURNING last_token"
                )
                token_row = cur.fetchone()
                assert token_row is not None
                token = int(token_row[0])
                self._transition(cur, fid, FilesetState.IMPORTING, "", None, now)
                cur.execute(
                    f"UPDATE {PG_SCHEMA}.filesets SET claim_token = %s, claimed_by = %s, claimed_at = %s,"
                    f" lease_until = {_SERVER_NOW} + %s WHERE id = %s",
                    (token, column_text(worker), now, self.lease, fid),
                )
                cur.execute(
                    f"UPDATE {PG_SCHEMA}.queue_users SET last_claim = %s WHERE owner = %s", (token, user)
                )
                rec = self._fileset(cur, fid)
                assert rec is not None
                return Claim(rec, token)
            return None

        return self._run("claiming the next fileset", body)

    def heartbeat(self, fileset_id: str, token: int) -> bool:
        """Extend claim ``token``'s lease by :attr:`lease` seconds from now (server clock).

        False if the claim is no longer current (reclaimed, finished, claimed again): its worker
        must stop, since its result would be refused.  A lease that ran out but was not yet
        reclaimed is still the current claim and is extended.
        """

        def body(cur: _Cursor) -> bool:
            cur.execute(
                f"UPDATE {PG_SCHEMA}.filesets SET lease_until = {_SERVER_NOW} + %s"
                " WHERE id = %s AND state = %s AND claim_token = %s RETURNING id",
                (self.lease, fileset_id, _I, token),
            )
            return cur.fetchone() is not None

        return self._run("extending a claim's lease", body)

    def finish(
        self,
        fileset_id: str,
        token: int,
        state: str,
        reason: str = "",
        next_attempt_at: float | None = None,
    ) -> None:
        """``Journal.finish``: record claim ``token``'s outcome; :class:`StaleClaimError` if the
        claim is no longer current (its lease ran out and it was reclaimed, say)."""
        target = FilesetState(state)

        def body(cur: _Cursor) -> None:
            cur.execute(
                f"SELECT state, claim_token FROM {PG_SCHEMA}.filesets WHERE id = %s FOR UPDATE",
                (fileset_id,),
            )
            row = cur.fetchone()
            if row is None or row[0] != _I or row[1] != token:
                now_is = "gone" if row is None else f"{row[0]}, claim {row[1]}"
                raise StaleClaimError(
                    f"fileset {fileset_id}: claim {token} is no longer current (now {now_is}); "
                    f"its result ({target}) is not recorded"
                )
            self._transition(cur, fileset_id, target, reason, next_attempt_at, time.time())

        self._run("recording an import's result", body)

    def recover_interrupted(self, *, now: float | None = None) -> list[FilesetRecord]:
        """Claims whose lease ran out by ``now`` (default: the server's clock) go back to
        ``queued``, their attempt counted.  Unlike the journal's, only expired claims: other
        hosts' workers may hold live ones.  ``now=math.inf`` takes back every claim (every
        worker is known to be dead)."""
        return self._reclaim(now, INTERRUPTED_REASON)

    def reclaim_expired(self, now: float | None = None) -> list[str]:
        """Put back every ``importing`` fileset whose lease ran out by ``now`` (default: the
        server's clock); their tokens are refused from then on.  Returns their ids."""
        return [r.id for r in self._reclaim(now, RECLAIMED_REASON)]

    def _reclaim(self, now: float | None, reason: str) -> list[FilesetRecord]:
        def body(cur: _Cursor) -> list[FilesetRecord]:
            # SKIP LOCKED: a claim being finished or heartbeaten right now is not expired.
            cur.execute(
                f"SELECT id FROM {PG_SCHEMA}.filesets WHERE state = %s"
                f" AND lease_until <= COALESCE(%s::float8, {_SERVER_NOW})"
                " ORDER BY lease_until, id FOR UPDATE SKIP LOCKED",
                (_I, now),
            )
            ids = [r[0] for r in cur.fetchall()]
            at = time.time()
            for fid in ids:
                self._transition(cur, fid, FilesetState.QUEUED, reason, None, at)
            return [r for r in (self._fileset(cur, fid) for fid in ids) if r is not None]

        return self._run("taking back expired claims", body)

    def next_due_at(self) -> float | None:
        def body(cur: _Cursor) -> float | None:
            cur.execute(f"SELECT min(due_at) FROM {PG_SCHEMA}.filesets WHERE state = %s", (_Q,))
            row = cur.fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return self._run("reading the queue", body)

    def queue_counts(self, now: float) -> tuple[int, int]:
        def body(cur: _Cursor) -> tuple[int, int]:
            cur.execute(
                "SELECT count(*) FILTER (WHERE due_at <= %s), count(*) FILTER (WHERE due_at > %s)"
                f" FROM {PG_SCHEMA}.filesets WHERE state = %s",
                (now, now, _Q),
            )
            row = cur.fetchone()
            assert row is not None
            return int(row[0]), int(row[1])

        return self._run("counting the queue", body)

    def queued_ids(self) -> list[str]:
        def body(cur: _Cursor) -> list[str]:
            cur.execute(f"SELECT id FROM {PG_SCHEMA}.filesets WHERE state = %s ORDER BY created, id", (_Q,))
            return [r[0] for r in cur.fetchall()]

        return self._run("reading the queue", body)

    def exhausted(self, max_attempts: int) -> list[FilesetRecord]:
        def body(cur: _Cursor) -> list[FilesetRecord]:
            cur.execute(
                f"SELECT {_FS_COLS} FROM {PG_SCHEMA}.filesets f WHERE f.state = %s AND f.attempts >= %s"
                " ORDER BY f.created, f.id",
                (_Q, max_attempts),
            )
            return [_record(r) for r in cur.fetchall()]

        return self._run("reading the queue", body)

    def give_up(self, fileset_id: str, reason: str) -> bool:
        def body(cur: _Cursor) -> bool:
            cur.execute(f"SELECT state FROM {PG_SCHEMA}.filesets WHERE id = %s FOR UPDATE", (fileset_id,))
            row = cur.fetchone()
            if row is None or row[0] != _Q:
                return False
            self._transition(cur, fileset_id, FilesetState.FAILED, reason, None, time.time())
            return True

        return self._run("giving up a fileset", body)

    # -- reading (status, tests) ---------------------------------------------------------

    def fileset_by_id(self, fileset_id: str) -> FilesetRecord | None:
        return self._run("reading a fileset", lambda cur: self._fileset(cur, fileset_id))

    def filesets(self, state: str | None = None, limit: int | None = None) -> list[FilesetRecord]:
        """Filesets (optionally in one state), most recently updated first."""

        def body(cur: _Cursor) -> list[FilesetRecord]:
            cur.execute(
                f"SELECT {_FS_COLS} FROM {PG_SCHEMA}.filesets f"
                " WHERE %(state)s::text IS NULL OR f.state = %(state)s"
                " ORDER BY f.updated DESC, f.id LIMIT %(limit)s",
                {"state": state, "limit": limit},
            )
            return [_record(r) for r in cur.fetchall()]

        return self._run("reading filesets", body)

    def history_of(self, subject: str) -> list[HistoryEntry]:
        """Every history entry of one fileset id, oldest first."""

        def body(cur: _Cursor) -> list[HistoryEntry]:
            cur.execute(
                "SELECT id, at, kind, subject, path, owner, old_state, new_state, reason"
                f" FROM {PG_SCHEMA}.history WHERE subject = %s ORDER BY id",
                (subject,),
            )
            return [
                HistoryEntry(r[0], r[1], r[2], r[3], blob_path(r[4]) if r[4] is not None else None, *r[5:])
                for r in cur.fetchall()
            ]

        return self._run("reading the history", body)

    def claim_of(self, fileset_id: str) -> tuple[int | None, float | None]:
        """``(token, lease_until)`` of the fileset's current claim; ``(None, None)`` if none."""

        def body(cur: _Cursor) -> tuple[int | None, float | None]:
            cur.execute(
                f"SELECT claim_token, lease_until FROM {PG_SCHEMA}.filesets WHERE id = %s AND state = %s",
                (fileset_id, _I),
            )
            row = cur.fetchone()
            return (None, None) if row is None else (int(row[0]), float(row[1]))

        return self._run("reading a claim", body)

    def server_time(self) -> float:
        """The database server's clock (epoch seconds): the clock leases are in."""

        def body(cur: _Cursor) -> float:
            cur.execute(f"SELECT {_SERVER_NOW}")
            row = cur.fetchone()
            assert row is not None
            return float(row[0])

        return self._run("reading the server's clock", body)

    def record_objects(self, fileset_id: str, objects: Sequence[str]) -> None:
        """Note the OMERO objects an import created (``"Image:12"``...) in the fileset's history,
        as the journal does: the watcher node that owns the fileset reads them with its outcome
        (:meth:`outcomes`) to attach its key-value pairs and tags."""
        if not objects:
            return

        def body(cur: _Cursor) -> None:
            cur.execute(f"SELECT state, key, owner FROM {PG_SCHEMA}.filesets WHERE id = %s", (fileset_id,))
            row = cur.fetchone()
            if row is None:
                return
            self._history(
                cur,
                fileset_id,
                row[0],
                old_state=row[0],
                key=row[1],
                user=row[2],
                reason=OBJECTS_PREFIX + ", ".join(objects),
                at=time.time(),
            )

        self._run("noting an import's OMERO objects", body)

    def outcomes(self, fileset_ids: Sequence[str]) -> dict[str, RemoteState]:
        """Where each of ``fileset_ids`` is in the shared queue, in one query: what a watcher
        node polls to mirror its own filesets in its journal.  Ids not in the store are absent."""
        wanted = list(fileset_ids)

        def body(cur: _Cursor) -> dict[str, RemoteState]:
            cur.execute(
                "SELECT f.id, f.state, f.last_error, f.next_attempt_at, f.claimed_by,"
                " CASE WHEN f.state = %(imported)s THEN"
                f" (SELECT h.reason FROM {PG_SCHEMA}.history h WHERE h.subject = f.id"
                " AND left(h.reason, %(n)s) = %(prefix)s ORDER BY h.id DESC LIMIT 1) END"
                f" FROM {PG_SCHEMA}.filesets f WHERE f.id = ANY(%(ids)s)",
                {
                    "imported": FilesetState.IMPORTED.value,
                    "n": len(OBJECTS_PREFIX),
                    "prefix": OBJECTS_PREFIX,
                    "ids": wanted,
                },
            )
            return {
                r[0]: RemoteState(FilesetState(r[1]), r[2] or "", r[3], r[4] or "", _objects(r[5]))
                for r in cur.fetchall()
            }

        return self._run("reading the filesets' states", body) if wanted else {}

    def ids_in(self, states: Iterable[str]) -> dict[str, str]:
        """``{fileset id: state}`` of the filesets in ``states``."""
        wanted = list(states)

        def body(cur: _Cursor) -> dict[str, str]:
            cur.execute(f"SELECT id, state FROM {PG_SCHEMA}.filesets WHERE state = ANY(%s)", (wanted,))
            return {r[0]: r[1] for r in cur.fetchall()}

        return self._run("reading filesets", body)


def _objects(note: str | None) -> tuple[str, ...]:
    if not note:
        return ()
    return tuple(o.strip() for o in note[len(OBJECTS_PREFIX) :].split(",") if o.strip())


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
