"""Durable SQLite journal of every file and fileset the drop box has seen.

The journal is what makes the two reliability promises hold:

* *nothing lost*: every READY file is recorded before anything else happens to it
  and ends in a terminal state (``imported``, ``failed``, ``skipped``); after any
  restart, ``recover_interrupted()`` puts back what a crash left half done and the
  queue (``queued`` filesets) is the rest;
* *nothing twice*: files and filesets are identified by what they *are*, not by
  their path or timestamps, so a rename, ``touch``, ``chmod``, restart or rescan
  finds the existing record instead of creating a new import.

File identity
    ``(st_dev, st_ino, size, fingerprint)`` where the fingerprint is a BLAKE2b
    digest of the size, the first 64 KiB and the last 64 KiB.  ``touch`` and
    ``chmod`` change none of these; a rename keeps the inode and the content.
    A file rewritten with different content gets a new fingerprint and so is a
    new version.  When only ``st_dev`` differs for the same path, inode, size and
    fingerprint (a network share re-mounted with a new device number), the file
    is treated as the same file.

Fileset identity
    :func:`fileset_id` hashes the sorted identities of the members, so a renamed
    fileset keeps its id and is imported once.

Storage
    One SQLite database ``journal.sqlite3`` in the state directory, WAL mode,
    ``synchronous=FULL``; paths are stored as BLOBs of ``os.fsencode(path)`` so
    non-UTF-8 names survive exactly.  Every state change is one transaction that
    also appends to the ``history`` table.

Queue
    The ``queued`` filesets are the import queue itself (:mod:`omero_dropbox.queue_store`):
    :meth:`Journal.enqueue` puts work in, :meth:`Journal.claim_next` takes the next fileset
    (per-user round robin, back-off times, the concurrency cap, all in one transaction) and
    :meth:`Journal.finish` records its outcome against the claim's fencing token.  No copy
    of the queue lives in memory, so another process's change (``omero-dropbox retry``) is
    simply there at the next claim.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omero_dropbox.identity import FileIdentity, fd_identity, file_identity, fileset_id
from omero_dropbox.queue_store import Claim
from omero_dropbox.states import (
    FILE_STATES,
    FILESET_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    FilesetState,
    FileState,
    sql_list,
)
from omero_dropbox.stored_text import blob_path, column_text, path_blob, stored_reason
from omero_dropbox.text import printable

# The state names as they were before states.py; kept for the modules and scripts that use them.
SEEN = FileState.SEEN
WAITING = FilesetState.WAITING
QUEUED = FilesetState.QUEUED
IMPORTING = FilesetState.IMPORTING
IMPORTED = FilesetState.IMPORTED
FAILED = FilesetState.FAILED
SKIPPED = FilesetState.SKIPPED

__all__ = [
    "FILESET_STATES",
    "FILE_STATES",
    "SCHEMA_VERSION",
    "Claim",
    "FileIdentity",
    "FileRecord",
    "FileState",
    "FilesetRecord",
    "FilesetState",
    "HistoryEntry",
    "InvalidTransitionError",
    "Journal",
    "JournalBusyError",
    "JournalError",
    "JournalFullError",
    "StaleClaimError",
    "display_path",
    "fd_identity",
    "file_identity",
    "fileset_id",
    "open_private",
    "private_dir",
]

log = logging.getLogger("omero_dropbox.journal")

DB_NAME = "journal.sqlite3"
SCHEMA_VERSION = 5
# PRAGMA application_id: "ODBX".  Lets us tell "some other SQLite file" from a journal.
APPLICATION_ID = 0x4F444258

INTERRUPTED_REASON = "interrupted by crash/restart; will run again"
# A shared queue's claim whose lease ran out (its worker died or lost the database): like an
# interrupted import, the earlier attempt may have imported it.
RECLAIMED_REASON = "lease expired (worker died or lost the database); will run again"


# --- errors -----------------------------------------------------------------------------


class JournalError(Exception):
    """The journal cannot be opened or written; the message says what to do."""


class JournalFullError(JournalError):
    """The disk holding the state directory is full."""


class JournalBusyError(JournalError):
    """Another process held a write lock on the journal for longer than the busy patience.

    Like :class:`JournalFullError`: nothing is lost, keep the work and try again later.
    """


class StoreUnreachableError(JournalBusyError):
    """A queue store on another host (PostgreSQL) cannot be reached: try again, backing off.

    Defined here, not in ``pg_store``, so that the import queue can tell it apart without
    importing psycopg.
    """


#: Seconds a journal write waits for another process's write lock (an ``sqlite3`` shell in
#: a transaction, a backup) before :class:`JournalBusyError`; the environment variable
#: ``OMERO_DROPBOX_JOURNAL_BUSY_TIMEOUT`` sets it.
BUSY_TIMEOUT_ENV = "OMERO_DROPBOX_JOURNAL_BUSY_TIMEOUT"
DEFAULT_BUSY_TIMEOUT = 60.0
# Longest single wait inside SQLite's busy handler, so that a wait is logged while it lasts.
_BUSY_STEP = 5.0
# At most one "locked by another process" warning per this many seconds.
BUSY_LOG_EVERY = 60.0
# Less free space than this on the state disk makes an I/O error at open a full disk.
_NEARLY_FULL = 1 << 20


def busy_timeout() -> float:
    """:data:`DEFAULT_BUSY_TIMEOUT`, or the seconds in ``$OMERO_DROPBOX_JOURNAL_BUSY_TIMEOUT``."""
    text = os.environ.get(BUSY_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_BUSY_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e9:
        raise JournalError(f"{BUSY_TIMEOUT_ENV}={text!r}: give a number of seconds greater than 0")
    return value


def _is_busy(e: sqlite3.Error) -> bool:
    name = str(getattr(e, "sqlite_errorname", ""))
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "is locked" in str(e).lower()


class InvalidTransitionError(JournalError, ValueError):
    """A state change that the state machine does not allow."""


class StaleClaimError(JournalError):
    """A result for a claim that is no longer the fileset's current one (see :meth:`Journal.finish`)."""


# --- records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRecord:
    id: int
    path: str
    user: str | None
    identity: FileIdentity | None
    state: FileState
    reason: str
    fileset_id: str | None
    created: float
    updated: float


@dataclass(frozen=True)
class FilesetRecord:
    id: str
    user: str
    key: str
    members: tuple[str, ...]
    format: str
    state: FilesetState
    attempts: int
    last_error: str
    next_attempt_at: float | None
    created: float
    updated: float
    started: float | None
    finished: float | None
    plan: str = ""  # folder settings in force when queued (folder_settings.ImportPlan JSON)


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    at: float
    kind: str  # "file" | "fileset"
    subject: str  # fileset id, or the file's path
    path: str | None
    user: str | None
    old_state: str | None
    new_state: str
    reason: str


# Names are shown escaped (see omero_dropbox.text): a file named "x\n<forged log line>" must not
# be able to write lines of its own into the log.  The name stays importable from here.
display_path = printable


#: The state directory and every file in it hold every user's file names and the importers'
#: output: private to the service's user, whatever its umask.
STATE_DIR_MODE = 0o700
STATE_FILE_MODE = 0o600


def private_dir(path: Path | str) -> Path:
    """Create the state directory ``path`` (mode 0700), or take group and other access away
    from an existing one (its owner's bits kept).  Narrowing is logged, naming the old mode."""
    path = Path(path)
    path.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        was, now = f"{mode:04o}", f"{mode & STATE_DIR_MODE:04o}"
        try:
            os.chmod(path, mode & STATE_DIR_MODE)
        except OSError as e:
            log.warning(
                "State directory %s is mode %s (group or others can read the journal) and could not "
                "be made private: %s; run chmod go= %s",
                path,
                was,
                e.strerror or e,
                path,
            )
        else:
            log.warning(
                "State directory %s was mode %s (group or others could read the journal); made it %s",
                path,
                was,
                now,
            )
    return path


def open_private(path: Path | str, flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """Open (creating) the state file ``path`` mode 0600 whatever the umask; an existing file
    that others could read is narrowed to 0600.  Returns the file descriptor."""
    fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), STATE_FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, STATE_FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def _private_files(db: Path) -> None:
    """The journal file made 0600 before SQLite opens it (SQLite gives its -wal and -shm files
    the journal's mode); -wal/-shm left wider by an older version are narrowed."""
    os.close(open_private(db, os.O_RDWR))
    for extra in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(extra.stat().st_mode) & 0o077:
                os.chmod(extra, STATE_FILE_MODE)


# --- schema -----------------------------------------------------------------------------

_SCHEMA = f"""
CREATE TABLE files (
    id          INTEGER PRIMARY KEY,
    path        BLOB NOT NULL,
    user        TEXT,
    dev         INTEGER,
    ino         INTEGER,
    size        INTEGER,
    fingerprint TEXT,
    identity    TEXT UNIQUE,
    state       TEXT NOT NULL CHECK (state IN {sql_list(FILE_STATES)}),
    reason      TEXT NOT NULL DEFAULT '',
    fileset_id  TEXT,
    created     REAL NOT NULL,
    updated     REAL NOT NULL
);
CREATE INDEX files_path ON files(path);
CREATE INDEX files_ino ON files(ino, size, fingerprint);
CREATE INDEX files_fileset ON files(fileset_id);

CREATE TABLE filesets (
    id              TEXT PRIMARY KEY,
    user            TEXT NOT NULL,
    key             BLOB NOT NULL,
    format          TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN {sql_list(FILESET_STATES)}),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    next_attempt_at REAL,
    created         REAL NOT NULL,
    updated         REAL NOT NULL,
    started         REAL,
    finished        REAL
);
CREATE INDEX filesets_state ON filesets(state);

CREATE TABLE fileset_members (
    fileset_id TEXT NOT NULL REFERENCES filesets(id),
    position   INTEGER NOT NULL,
    path       BLOB NOT NULL,
    PRIMARY KEY (fileset_id, position)
);
CREATE INDEX fileset_members_path ON fileset_members(path);

CREATE TABLE history (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('file', 'fileset')),
    subject   TEXT NOT NULL,
    path      BLOB,
    user      TEXT,
    old_state TEXT,
    new_state TEXT NOT NULL,
    reason    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX history_state ON history(new_state, id);
"""

# Version 2: when each file was last seen written (so a rescan or restart reads no file whose
# mtime did not change, and a same-size rewrite is still told by its fingerprint); files an
# operator forgot, as they were on disk then (so a restart does not import them again, a new
# copy does); and the members a fileset's key file named that were missing when it was queued
# (so a member arriving late is reported against its fileset, not imported alone).
_SCHEMA_V2 = """
ALTER TABLE files ADD COLUMN mtime_ns INTEGER;
CREATE TABLE forgotten (
    path     BLOB PRIMARY KEY,
    ino      INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    at       REAL NOT NULL
);
CREATE TABLE fileset_missing (
    fileset_id TEXT NOT NULL REFERENCES filesets(id),
    path       BLOB NOT NULL,
    PRIMARY KEY (fileset_id, path)
);
CREATE INDEX fileset_missing_path ON fileset_missing(path);
"""


# Version 3: the journal is the import queue (see queue_store.py).  A queued fileset's place is
# ``due_at`` (when it may start: when it was queued, or its back-off time), served per user in
# turn (``queue_users.last_claim``: the token of the user's last claim, 0 for never); a claim
# stamps the fileset with a fencing token (``claim_token``, from the one counter ``queue_clock``)
# that the claimant's result must carry.  The indexes make a claim a few index probes per user
# with queued work, however long the queue.
_SCHEMA_V3 = f"""
ALTER TABLE filesets ADD COLUMN due_at REAL;
ALTER TABLE filesets ADD COLUMN claim_token INTEGER;
ALTER TABLE filesets ADD COLUMN claimed_by TEXT;
ALTER TABLE filesets ADD COLUMN claimed_at REAL;
CREATE INDEX filesets_queue ON filesets(state, user, due_at);
CREATE INDEX filesets_due ON filesets(state, due_at);
CREATE TABLE queue_users (
    user       TEXT PRIMARY KEY,
    last_claim INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX queue_users_turn ON queue_users(last_claim);
CREATE TABLE queue_clock (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    last_token INTEGER NOT NULL
);
INSERT INTO queue_clock(id, last_token) VALUES (1, 0);
UPDATE filesets SET due_at = COALESCE(next_attempt_at, created) WHERE state = '{FilesetState.QUEUED}';
INSERT OR IGNORE INTO queue_users(user)
    SELECT user FROM filesets WHERE state = '{FilesetState.QUEUED}' GROUP BY user ORDER BY MIN(created)
"""


# Version 4: a user's filesets by time (her report, omero.fs.ng.userReport), and the
# after-import action of each imported fileset (omero.fs.ng.afterImport): a row
# is written ``pending`` as soon as the import is journaled and becomes ``done`` or ``partial``
# (some files left in place, with the reason) when the action ran; a pending row is run again
# after a restart or a failure (a full area, say), so an interrupted move resumes.
_SCHEMA_V4 = """
CREATE TABLE after_import (
    fileset_id TEXT PRIMARY KEY REFERENCES filesets(id),
    action     TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'done', 'partial')),
    reason     TEXT NOT NULL DEFAULT '',
    attempts   INTEGER NOT NULL DEFAULT 0,
    updated    REAL NOT NULL
);
CREATE INDEX after_import_state ON after_import(state);
CREATE INDEX filesets_user_updated ON filesets(user, updated)
"""


# Version 5: the folder settings in force when each fileset was queued (``plan``, the JSON of
# folder_settings.ImportPlan; '' for none), and the attaching of its key-value pairs and tags
# after the import (``annotations``): ``pending`` when the import is journaled, ``done``, or
# ``failed`` with the reason (retried at start and periodically while it may still work).
_SCHEMA_V5 = """
ALTER TABLE filesets ADD COLUMN plan TEXT NOT NULL DEFAULT '';
CREATE TABLE annotations (
    fileset_id TEXT PRIMARY KEY REFERENCES filesets(id),
    state      TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
    reason     TEXT NOT NULL DEFAULT '',
    attempts   INTEGER NOT NULL DEFAULT 0,
    updated    REAL NOT NULL
);
CREATE INDEX annotations_state ON annotations(state)
"""


def transition_sets(
    old_state: FilesetState,
    new_state: FilesetState,
    reason: str,
    next_attempt_at: float | None,
    now: float,
    mark: str,
) -> tuple[list[str], list[object]]:
    """The column assignments of a fileset's move from ``old_state`` to ``new_state`` and their
    values (``mark``: the driver's placeholder): one rule for the journal and the shared queue
    (pg_store). Entering ``queued`` sets its place (``due_at``: its back-off time, else now);
    a start counts an attempt; a failure, a skip or a retry keeps its reason."""
    queued = new_state == FilesetState.QUEUED
    sets = [f"state = {mark}", f"updated = {mark}", f"next_attempt_at = {mark}", f"due_at = {mark}"]
    due_at = (now if next_attempt_at is None else next_attempt_at) if queued else None
    args: list[object] = [str(new_state), now, next_attempt_at, due_at]
    if new_state == FilesetState.IMPORTING:
        sets += ["attempts = attempts + 1", f"started = {mark}", "finished = NULL"]
        args.append(now)
    if new_state in TERMINAL_STATES:
        sets.append(f"finished = {mark}")
        args.append(now)
    if reason and (
        new_state in (FilesetState.FAILED, FilesetState.SKIPPED)
        or (old_state == FilesetState.IMPORTING and queued)
    ):
        sets.append(f"last_error = {mark}")
        args.append(stored_reason(reason))
    return sets, args


# --- the journal ------------------------------------------------------------------------


class Journal:
    """The durable record of files and filesets; see the module docstring.

    Thread-safety: one ``sqlite3`` connection (``check_same_thread=False``) guarded
    by one lock.  SQLite serialises writers anyway, so per-thread connections would
    only add ``SQLITE_BUSY`` handling between our own threads; every operation here
    is a few row updates (microseconds) next to imports that take seconds, so the
    lock is never contended in practice, and one connection makes every
    read-modify-write (e.g. ``transition``) trivially atomic.
    """

    def __init__(
        self,
        state_dir: Path | str,
        *,
        check: bool = True,
        readonly: bool = False,
        lock_state_dir: bool = False,
    ) -> None:
        """Open (creating if needed) the journal in ``state_dir``.

        ``check`` runs ``PRAGMA quick_check`` (reads the whole file once);
        ``readonly`` opens an existing journal for reading only (``status``), which
        needs no write permission on the state directory.  ``lock_state_dir`` (the
        service) first takes the state directory's :class:`~omero_dropbox.statelock.StateLock`,
        held until :meth:`close`: a second service on it fails here, saying who holds it.
        """
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DB_NAME
        self.readonly = readonly
        self._lock = threading.RLock()
        self._depth = 0  # nesting of _tx(): only the outermost one commits
        self._busy_timeout = busy_timeout()
        self._busy_logged_at: float | None = None
        self._state_lock: Any = None
        if readonly:
            if not self.path.is_file():
                raise JournalError(f"no state file {self.path}: nothing recorded yet, or wrong --state-dir")
            try:
                self._conn = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro",
                    uri=True,
                    timeout=30.0,
                    isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.Error as e:
                raise JournalError(f"cannot open state file {self.path}: {e}") from e
        else:
            try:
                private_dir(self.state_dir)
            except OSError as e:
                raise self._os_error(e, f"cannot create state directory {self.state_dir}") from e
            if not os.access(self.state_dir, os.W_OK | os.X_OK):
                raise JournalError(
                    f"state directory {self.state_dir} is not writable by this user; "
                    "fix its permissions or choose another --state-dir"
                )
            if lock_state_dir:
                from omero_dropbox.statelock import StateLock

                self._state_lock = StateLock(self.state_dir)
            try:
                _private_files(self.path)
            except OSError as e:
                raise self._os_error(e, f"cannot create state file {self.path}") from e
            try:
                self._conn = sqlite3.connect(
                    str(self.path),
                    timeout=min(_BUSY_STEP, self._busy_timeout),
                    isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.Error as e:
                self._release_state_lock()
                raise self._translate(e, "cannot open") from e
        try:
            self._setup(check)
        except BaseException:
            self._conn.close()
            self._release_state_lock()
            raise

    # -- opening ------------------------------------------------------------------------

    def _setup(self, check: bool) -> None:
        c = self._conn
        try:
            app_id = c.execute("PRAGMA application_id").fetchone()[0]
            version = c.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            problems = [r[0] for r in c.execute("PRAGMA quick_check(5)")] if check else ["ok"]
        except sqlite3.Error as e:
            # Reading a WAL journal creates its -shm file: on a full disk that fails with an
            # I/O error, which is no reason to call an intact journal corrupt.
            raise self._translate(e, "cannot open") from e
        if problems != ["ok"]:
            raise self._corrupt("; ".join(problems))
        if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables):
            raise JournalError(
                f"state file {self.path} is not an omero-dropbox journal; "
                "move it aside or choose another --state-dir"
            )
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"state file {self.path} has schema version {version}, written by a newer "
                f"omero-dropbox (this one understands up to {SCHEMA_VERSION}); "
                "upgrade omero-dropbox or move the file aside to start fresh"
            )
        if self.readonly:
            if version == 0:
                raise JournalError(f"state file {self.path} is empty: nothing recorded yet")
            return
        try:
            # WAL: readers (``omero-dropbox status``) never block the writer, and a
            # crash can at worst lose the transaction being written, never corrupt.
            mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("journal %s: WAL unavailable, using %s mode", self.path, mode)
            # FULL, not NORMAL: in WAL mode NORMAL survives a process kill but may lose
            # the last commits on power loss / kernel crash.  A lost "imported" means a
            # duplicate import after reboot, which is what this journal exists to
            # prevent.  FULL costs one fsync per transition; imports take seconds.
            c.execute("PRAGMA synchronous=FULL")
            c.execute("PRAGMA foreign_keys=ON")
            if version < SCHEMA_VERSION:
                c.execute("BEGIN IMMEDIATE")
                try:
                    # Re-read under the write lock: another process may have won the race.
                    current = c.execute("PRAGMA user_version").fetchone()[0]
                    steps = (
                        ([_SCHEMA] if current == 0 else [])
                        + ([_SCHEMA_V2] if current < 2 else [])
                        + ([_SCHEMA_V3] if current < 3 else [])
                        + ([_SCHEMA_V4] if current < 4 else [])
                        + ([_SCHEMA_V5] if current < 5 else [])
                    )
                    for script in steps:
                        for stmt in script.split(";"):
                            if stmt.strip():
                                c.execute(stmt)
                    if current == 0:
                        c.execute(f"PRAGMA application_id={APPLICATION_ID}")
                    elif steps:
                        log.info(
                            "journal %s: schema upgraded from version %d to %d",
                            self.path,
                            current,
                            SCHEMA_VERSION,
                        )
                    c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    c.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        c.execute("ROLLBACK")
                    raise
        except sqlite3.Error as e:
            raise self._translate(e, "cannot initialise") from e

    def _corrupt(self, e: BaseException | str) -> JournalError:
        return JournalError(
            f"state file {self.path} is corrupt: {e}; move it aside to start fresh "
            "(files already imported may then be imported again)"
        )

    def _os_error(self, e: OSError, what: str) -> JournalError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return JournalFullError(f"{what}: the disk holding {self.state_dir} is full")
        return JournalError(f"{what}: {e.strerror or e}")

    def _disk_full(self) -> bool:
        """Next to no free space (or no free inode) on the state directory's filesystem."""
        try:
            st = os.statvfs(self.state_dir)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < _NEARLY_FULL or (st.f_files > 0 and st.f_favail == 0)

    def _translate(self, e: sqlite3.Error, what: str) -> JournalError:
        msg = str(e)
        low = msg.lower()
        name = str(getattr(e, "sqlite_errorname", ""))
        io_error = name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")) or (
            "i/o error" in low or "unable to open" in low
        )
        if name.startswith("SQLITE_FULL") or "full" in low or (io_error and self._disk_full()):
            return JournalFullError(
                f"{what} state file {self.path}: the disk holding {self.state_dir} is full "
                f"({msg}); free some space; nothing already recorded was lost"
            )
        if _is_busy(e):
            return JournalBusyError(
                f"{what} state file {self.path}: another process holds a write lock on it ({msg}), "
                "e.g. an sqlite3 shell or a backup in a transaction; end that transaction; the work "
                "is kept and tried again"
            )
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or (
            "malformed" in low or "not a database" in low
        ):
            return self._corrupt(e)
        if "readonly" in low or "read-only" in low or "unable to open" in low:
            return JournalError(
                f"{what} state file {self.path}: {msg}; check that {self.state_dir} is writable by this user"
            )
        return JournalError(f"{what} state file {self.path}: {msg}")

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; any SQLite error becomes a JournalError.

        Re-entrant: a nested ``_tx()`` joins the outer transaction.
        """
        with self._lock:
            c = self._conn
            if self._depth:
                self._depth += 1
                try:
                    yield c
                finally:
                    self._depth -= 1
                return
            self._depth = 1
            try:
                self._begin_write(c)
                yield c
                c.execute("COMMIT")
            except BaseException as e:
                if c.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        c.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise self._translate(e, "cannot write") from e
                raise
            finally:
                self._depth = 0

    def _begin_write(self, c: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, waiting (with back-off) up to the busy timeout for another
        process's write lock; then :class:`JournalBusyError`.  Warns at most once a minute."""
        start = time.monotonic()
        pause = 0.05
        while True:
            try:
                c.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.Error as e:
                if not _is_busy(e):
                    raise
                waited = time.monotonic() - start
                self._warn_busy(waited)
                if waited >= self._busy_timeout:
                    raise JournalBusyError(
                        f"cannot write state file {self.path}: another process held a write lock on "
                        f"it for {waited:.0f} s (an sqlite3 shell or a backup in a transaction?); end "
                        "that transaction; the work is kept and tried again"
                    ) from e
            time.sleep(min(pause, max(0.0, start + self._busy_timeout - time.monotonic())))
            pause = min(pause * 2, 1.0)

    def _warn_busy(self, waited: float) -> None:
        now = time.monotonic()
        if self._busy_logged_at is not None and now - self._busy_logged_at < BUSY_LOG_EVERY:
            return
        self._busy_logged_at = now
        log.warning(
            "State file %s is locked by another process, which holds a write lock on it (an sqlite3 "
            "shell or a backup in a transaction?); waited %.0f s of up to %g s (%s), then the work "
            "is held and tried again later",
            self.path,
            waited,
            self._busy_timeout,
            BUSY_TIMEOUT_ENV,
        )

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as e:
                raise self._translate(e, "cannot read") from e

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Make the reads inside see one state of the journal: what was committed at the first.

        Without it, an import finishing between two reads is counted twice (still
        importing in one, imported in the next).  Reads only; WAL keeps writers of other
        connections going meanwhile.  Inside a write transaction it is that transaction.
        """
        with self._lock:
            c = self._conn
            if self._depth or c.in_transaction:
                yield
                return
            try:
                c.execute("BEGIN")
            except sqlite3.Error as e:
                raise self._translate(e, "cannot read") from e
            try:
                yield
            finally:
                with contextlib.suppress(sqlite3.Error):
                    c.execute("COMMIT")

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Make the writes inside one transaction: one commit (and fsync) instead of one each.

        All or nothing: an exception rolls every write of the batch back.
        """
        with self._tx():
            yield

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._release_state_lock()

    def _release_state_lock(self) -> None:
        lock, self._state_lock = self._state_lock, None
        if lock is not None:
            lock.release()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- history ------------------------------------------------------------------------

    @staticmethod
    def _history(
        c: sqlite3.Connection,
        kind: str,
        subject: str,
        new_state: str,
        *,
        old_state: str | None = None,
        path: str | None = None,
        user: str | None = None,
        reason: str = "",
        at: float | None = None,
    ) -> None:
        c.execute(
            "INSERT INTO history(at, kind, subject, path, user, old_state, new_state, reason)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (
                time.time() if at is None else at,
                kind,
                column_text(subject),
                path_blob(path) if path is not None else None,
                column_text(user),
                old_state,
                new_state,
                stored_reason(reason),
            ),
        )

    @classmethod
    def _forgotten(
        cls,
        c: sqlite3.Connection,
        kind: str,
        subject: str,
        path: str,
        user: str | None,
        old_state: str,
        reason: str,
        at: float,
    ) -> HistoryEntry:
        """Record that a file or fileset was forgotten; returns the history entry written."""
        cls._history(
            c, kind, subject, "forgotten", old_state=old_state, path=path, user=user, reason=reason, at=at
        )
        return HistoryEntry(0, at, kind, subject, path, user, old_state, "forgotten", reason)

    # -- files --------------------------------------------------------------------------

    _FILE_COLS = "id, path, user, dev, ino, size, fingerprint, state, reason, fileset_id, created, updated"

    @staticmethod
    def _file(row: Any) -> FileRecord | None:
        if row is None:
            return None
        (fid, path, user, dev, ino, size, fp, state, reason, fs, created, updated) = row
        ident = FileIdentity(dev, ino, size, fp) if fp is not None else None
        return FileRecord(
            id=fid,
            path=blob_path(path),
            user=user,
            identity=ident,
            state=FileState(state),
            reason=reason,
            fileset_id=fs,
            created=created,
            updated=updated,
        )

    def _find_identity(self, c: sqlite3.Connection, identity: FileIdentity) -> FileRecord | None:
        row = c.execute(f"SELECT {self._FILE_COLS} FROM files WHERE identity = ?", (identity.key,)).fetchone()
        return self._file(row)

    def _latest_for_path(self, c: sqlite3.Connection, path: str) -> FileRecord | None:
        row = c.execute(
            f"SELECT {self._FILE_COLS} FROM files WHERE path = ? ORDER BY id DESC LIMIT 1",
            (path_blob(path),),
        ).fetchone()
        return self._file(row)

    def find_by_identity(self, identity: FileIdentity) -> FileRecord | None:
        with self._read() as c:
            return self._find_identity(c, identity)

    def file_state(self, path: str) -> FileRecord | None:
        """The newest record for ``path`` (older rows are earlier versions or renames)."""
        with self._read() as c:
            return self._latest_for_path(c, path)

    def seen_mtime(self, file_id: int) -> int | None:
        """When the file of record ``file_id`` was last seen written (ns), if known."""
        with self._read() as c:
            row = c.execute("SELECT mtime_ns FROM files WHERE id = ?", (file_id,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def set_seen_mtime(self, file_id: int, mtime_ns: int) -> None:
        with self._tx() as c:
            c.execute("UPDATE files SET mtime_ns = ? WHERE id = ?", (mtime_ns, file_id))

    def forgotten_as(self, path: str) -> tuple[int, int, int] | None:
        """``(ino, size, mtime_ns)`` of ``path`` when an operator forgot it, or None: the file
        it was then is not imported again; another one (a new copy) is."""
        with self._read() as c:
            row = c.execute(
                "SELECT ino, size, mtime_ns FROM forgotten WHERE path = ?", (path_blob(path),)
            ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]))

    def late_member_of(self, path: str) -> FilesetRecord | None:
        """The newest fileset, queued or further, whose key file named ``path`` as a member
        that was missing when it was queued."""
        with self._read() as c:
            for (fid,) in c.execute(
                "SELECT m.fileset_id FROM fileset_missing m JOIN filesets f ON f.id = m.fileset_id"
                " WHERE m.path = ? AND f.state != ? ORDER BY f.created DESC",
                (path_blob(path), WAITING),
            ):
                return self._fileset(c, fid)
        return None

    def record_file(
        self, path: str, user: str, identity: FileIdentity, mtime_ns: int | None = None
    ) -> FileRecord:
        """Record a READY file; idempotent.

        * identity known under ``path``: returns the existing record unchanged;
        * identity known under another path: a rename; the record (and the member
          list of its fileset) follows the new path and keeps its state;
        * same path, inode, size and fingerprint but another ``st_dev`` (a re-mounted
          share): the same file; its device number is updated;
        * otherwise a new record in state ``seen`` (if ``path`` had a record with
          other content, this is a new version of that file).

        ``mtime_ns``, when given, is kept as the time the file was last seen written, and a
        :meth:`forget` tombstone for ``path`` is dropped (this is a new copy).
        """
        now = time.time()
        with self._tx() as c:
            rec, new = self._record_file(c, path, user, identity, now, mtime_ns)
            if mtime_ns is not None:
                if not new:  # a new record was inserted with it
                    c.execute("UPDATE files SET mtime_ns = ? WHERE id = ?", (mtime_ns, rec.id))
                c.execute("DELETE FROM forgotten WHERE path = ?", (path_blob(path),))
            return rec

    def _record_file(
        self,
        c: sqlite3.Connection,
        path: str,
        user: str,
        identity: FileIdentity,
        now: float,
        mtime_ns: int | None,
    ) -> tuple[FileRecord, bool]:
        """The record for ``path`` with ``identity``, and whether it is a new one (inserted
        with ``mtime_ns``)."""
        rec = self._find_identity(c, identity)
        if rec is None:
            old = self._latest_for_path(c, path)
            if (
                old is not None
                and old.identity is not None
                and (old.identity.ino, old.identity.size, old.identity.fingerprint)
                == (identity.ino, identity.size, identity.fingerprint)
            ):
                c.execute(
                    "UPDATE files SET dev = ?, identity = ?, updated = ? WHERE id = ?",
                    (identity.dev, identity.key, now, old.id),
                )
                rec = self._file(
                    c.execute(f"SELECT {self._FILE_COLS} FROM files WHERE id = ?", (old.id,)).fetchone()
                )
                assert rec is not None
                return rec, False
            cur = c.execute(
                "INSERT INTO files(path, user, dev, ino, size, fingerprint, identity, state,"
                " created, updated, mtime_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    path_blob(path),
                    column_text(user),
                    identity.dev,
                    identity.ino,
                    identity.size,
                    identity.fingerprint,
                    identity.key,
                    SEEN,
                    now,
                    now,
                    mtime_ns,
                ),
            )
            reason = "new version (content changed)" if old and old.identity else ""
            self._history(c, "file", path, SEEN, path=path, user=user, reason=reason, at=now)
            # The row just written, as _latest_for_path would read it back (the newest id).
            assert cur.lastrowid is not None
            new = FileRecord(
                cur.lastrowid,
                blob_path(path_blob(path)),
                column_text(user),
                identity,
                SEEN,
                "",
                None,
                now,
                now,
            )
            return new, True
        if rec.path != path:
            self._rename(c, rec, path, now)
            self._history(
                c,
                "file",
                path,
                rec.state,
                old_state=rec.state,
                path=path,
                user=rec.user,
                reason=f"renamed from {display_path(rec.path)}",
                at=now,
            )
            got = self._find_identity(c, identity)
            assert got is not None
            return got, False
        return rec, False

    def _rename(self, c: sqlite3.Connection, rec: FileRecord, new: str, now: float) -> None:
        c.execute("UPDATE files SET path = ?, updated = ? WHERE id = ?", (path_blob(new), now, rec.id))
        if rec.fileset_id is not None:
            c.execute(
                "UPDATE fileset_members SET path = ? WHERE fileset_id = ? AND path = ?",
                (path_blob(new), rec.fileset_id, path_blob(rec.path)),
            )
            c.execute(
                "UPDATE filesets SET key = ?, updated = ? WHERE id = ? AND key = ?",
                (path_blob(new), now, rec.fileset_id, path_blob(rec.path)),
            )

    def skip_file(self, path: str, user: str | None, reason: str) -> None:
        """Mark ``path`` skipped (unknown user, DropBox root, unreadable, outside tree...).

        Works for files never recorded (they may be unreadable, so have no identity).
        A later :meth:`record_file` with a readable identity starts a fresh record.
        """
        now = time.time()
        with self._tx() as c:
            old = self._latest_for_path(c, path)
            if old is None or old.state in (FileState.IMPORTED, FileState.IMPORTING):
                # Never rewrite an imported/importing file's record: add a new row.
                c.execute(
                    "INSERT INTO files(path, user, state, reason, created, updated) VALUES (?,?,?,?,?,?)",
                    (path_blob(path), column_text(user), SKIPPED, stored_reason(reason), now, now),
                )
                old_state = None
            else:
                c.execute(
                    "UPDATE files SET state = ?, reason = ?, user = COALESCE(?, user),"
                    " updated = ? WHERE id = ?",
                    (SKIPPED, stored_reason(reason), column_text(user), now, old.id),
                )
                old_state = old.state
            self._history(
                c,
                "file",
                path,
                SKIPPED,
                old_state=old_state,
                path=path,
                user=user,
                reason=reason,
                at=now,
            )

    # -- filesets -----------------------------------------------------------------------

    _FS_COLS = (
        "id, user, key, format, state, attempts, last_error, next_attempt_at,"
        " created, updated, started, finished, plan"
    )

    def _fileset(self, c: sqlite3.Connection, fid: str) -> FilesetRecord | None:
        row = c.execute(f"SELECT {self._FS_COLS} FROM filesets WHERE id = ?", (fid,)).fetchone()
        if row is None:
            return None
        members = tuple(
            blob_path(r[0])
            for r in c.execute(
                "SELECT path FROM fileset_members WHERE fileset_id = ? ORDER BY position", (fid,)
            )
        )
        return FilesetRecord(
            id=row[0],
            user=row[1],
            key=blob_path(row[2]),
            members=members,
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

    def _filesets(self, c: sqlite3.Connection, where: str, args: Sequence[object]) -> list[FilesetRecord]:
        ids = [r[0] for r in c.execute(f"SELECT id FROM filesets WHERE {where}", args)]
        out = []
        for fid in ids:
            rec = self._fileset(c, fid)
            if rec is not None:
                out.append(rec)
        return out

    def fileset_by_id(self, fileset_id: str) -> FilesetRecord | None:
        with self._read() as c:
            return self._fileset(c, fileset_id)

    def was_imported(self, fileset_id: str) -> bool:
        with self._read() as c:
            row = c.execute("SELECT state FROM filesets WHERE id = ?", (fileset_id,)).fetchone()
            return row is not None and row[0] == IMPORTED

    def upsert_fileset(
        self,
        fileset_id: str,
        user: str,
        key: str,
        members: Sequence[str],
        fmt: str,
        missing: Sequence[str] = (),
    ) -> FilesetRecord:
        """Create the fileset in state ``waiting``, or revise it.

        A fileset not yet started (``waiting``/``queued``) takes the new key, members
        and format.  One already started or finished is returned unchanged: its
        identity says it is the same data, so it is not imported again.
        Member files recorded with :meth:`record_file` are linked to the fileset and
        take its state.  ``missing``: files the key file names that are not members (see
        :meth:`late_member_of`).
        """
        if not members:
            raise ValueError(f"fileset {fileset_id} has no members")
        if key not in members:
            members = [key, *members]
        now = time.time()
        with self._tx() as c:
            old = self._fileset(c, fileset_id)
            if old is not None and old.state not in (WAITING, QUEUED):
                return old
            if old is None:
                c.execute(
                    f"INSERT INTO filesets({self._FS_COLS}) VALUES (?,?,?,?,?,0,'',NULL,?,?,NULL,NULL,'')",
                    (fileset_id, column_text(user), path_blob(key), column_text(fmt), WAITING, now, now),
                )
                state = WAITING
                self._history(
                    c,
                    "fileset",
                    fileset_id,
                    WAITING,
                    path=key,
                    user=user,
                    reason=f"new fileset, {len(members)} file(s), format {fmt}",
                    at=now,
                )
            else:
                state = old.state
                c.execute(
                    "UPDATE filesets SET user = ?, key = ?, format = ?, updated = ? WHERE id = ?",
                    (column_text(user), path_blob(key), column_text(fmt), now, fileset_id),
                )
                if state == FilesetState.QUEUED:  # (its user may have changed: give the new one turns)
                    c.execute("INSERT OR IGNORE INTO queue_users(user) VALUES (?)", (column_text(user),))
                if (old.key, old.members, old.format) != (key, tuple(members), fmt):
                    self._history(
                        c,
                        "fileset",
                        fileset_id,
                        state,
                        old_state=state,
                        path=key,
                        user=user,
                        reason=f"revised, {len(members)} file(s), format {fmt}",
                        at=now,
                    )
            c.execute("DELETE FROM fileset_members WHERE fileset_id = ?", (fileset_id,))
            c.executemany(
                "INSERT INTO fileset_members(fileset_id, position, path) VALUES (?,?,?)",
                [(fileset_id, i, path_blob(m)) for i, m in enumerate(members)],
            )
            self._link_members(c, fileset_id, members, state, "", now)
            c.execute("DELETE FROM fileset_missing WHERE fileset_id = ?", (fileset_id,))
            if missing:
                c.executemany(
                    "INSERT OR IGNORE INTO fileset_missing(fileset_id, path) VALUES (?,?)",
                    [(fileset_id, path_blob(m)) for m in missing],
                )
            if old is None:
                # The row just written, as _fileset would read it back.
                return FilesetRecord(
                    id=fileset_id,
                    user=column_text(user) or "",
                    key=blob_path(path_blob(key)),
                    members=tuple(blob_path(path_blob(m)) for m in members),
                    format=column_text(fmt) or "",
                    state=FilesetState.WAITING,
                    attempts=0,
                    last_error="",
                    next_attempt_at=None,
                    created=now,
                    updated=now,
                    started=None,
                    finished=None,
                )
            rec = self._fileset(c, fileset_id)
            assert rec is not None
            return rec

    def _link_members(
        self,
        c: sqlite3.Connection,
        fid: str,
        members: Iterable[str],
        state: str,
        reason: str,
        now: float,
    ) -> None:
        for m in members:
            rec = self._latest_for_path(c, m)
            if rec is None or rec.identity is None:
                continue
            if rec.fileset_id not in (None, fid) and rec.state in (FileState.IMPORTED, FileState.IMPORTING):
                continue  # belongs to another fileset that already used it
            c.execute(
                "UPDATE files SET fileset_id = ?, state = ?, reason = ?, updated = ? WHERE id = ?",
                (fid, state, stored_reason(reason), now, rec.id),
            )

    def transition(
        self,
        fileset_id: str,
        new_state: str,
        *,
        reason: str = "",
        next_attempt_at: float | None = None,
    ) -> None:
        """Move a fileset to ``new_state`` (see ``TRANSITIONS``), in one transaction.

        Entering ``importing`` bumps ``attempts`` and sets ``started``; entering a
        terminal state sets ``finished``; ``failed``, ``skipped`` and a re-queue after
        ``importing`` store ``reason`` as ``last_error``.  The fileset's member files
        take the new state; every change is appended to the history.

        The state machine itself; the service moves filesets through the queue operations
        (:meth:`enqueue`, :meth:`claim_next`, :meth:`finish`, :meth:`recover_interrupted`).
        """
        try:
            target = FilesetState(new_state)
        except ValueError:
            raise InvalidTransitionError(
                f"unknown fileset state {new_state!r}; allowed: {', '.join(FILESET_STATES)}"
            ) from None
        with self._tx() as c:
            self._transition(c, fileset_id, target, reason, next_attempt_at, time.time())

    def _transition(
        self,
        c: sqlite3.Connection,
        fileset_id: str,
        new_state: FilesetState,
        reason: str,
        next_attempt_at: float | None,
        now: float,
    ) -> FilesetState:
        """:meth:`transition` inside the caller's transaction; returns the state left.

        Every change of a fileset's state is written here, so this is also where a fileset
        entering ``queued`` gets its place in the queue (``due_at``) and its user a turn.
        """
        row = c.execute("SELECT state, user, key FROM filesets WHERE id = ?", (fileset_id,)).fetchone()
        if row is None:
            raise JournalError(f"unknown fileset {fileset_id}")
        old_state, user, key = FilesetState(row[0]), row[1], row[2]
        if new_state not in TRANSITIONS[old_state]:
            raise InvalidTransitionError(f"fileset {fileset_id}: cannot go from {old_state} to {new_state}")
        queued = new_state == FilesetState.QUEUED
        sets, args = transition_sets(old_state, new_state, reason, next_attempt_at, now, "?")
        args.append(fileset_id)
        c.execute(f"UPDATE filesets SET {', '.join(sets)} WHERE id = ?", args)
        if queued:
            c.execute("INSERT OR IGNORE INTO queue_users(user) VALUES (?)", (user,))
        self._propagate(c, fileset_id, new_state, reason, now)
        self._history(
            c,
            "fileset",
            fileset_id,
            new_state,
            old_state=old_state,
            path=blob_path(key),
            user=user,
            reason=reason,
            at=now,
        )
        return old_state

    def _propagate(self, c: sqlite3.Connection, fid: str, state: str, reason: str, now: float) -> None:
        file_reason = reason if state in (FilesetState.FAILED, FilesetState.SKIPPED) else ""
        c.execute(
            "UPDATE files SET state = ?, reason = ?, updated = ? WHERE fileset_id = ?",
            (str(state), stored_reason(file_reason), now, fid),
        )

    # -- the import queue (queue_store.QueueStore) ----------------------------------------

    def enqueue(
        self, fileset_id: str, reason: str, *, requeue: bool = False, plan: str | None = None
    ) -> FilesetState:
        """Put a fileset in the import queue: the one way work enters it.  Returns the state
        the fileset was in.

        ``waiting`` moves to ``queued`` (due now).  With ``requeue`` (an operator's retry),
        ``failed`` and ``skipped`` move too, and ``attempts`` starts again from 0.  Anything
        else is left as it is, so asking twice is harmless: ``queued`` and ``importing`` are
        in the queue already, ``imported`` is never imported again.  An unknown id raises
        :class:`JournalError`.  ``plan`` (the folder settings in force, as JSON) is stored
        with a fileset that moves.
        """
        movable = {FilesetState.WAITING}
        if requeue:
            movable |= {FilesetState.FAILED, FilesetState.SKIPPED}
        with self._tx() as c:
            row = c.execute("SELECT state FROM filesets WHERE id = ?", (fileset_id,)).fetchone()
            if row is None:
                raise JournalError(f"unknown fileset {fileset_id}")
            state = FilesetState(row[0])
            if state in movable:
                self._transition(c, fileset_id, FilesetState.QUEUED, reason, None, time.time())
                if plan is not None:
                    c.execute("UPDATE filesets SET plan = ? WHERE id = ?", (plan, fileset_id))
                if requeue:
                    c.execute("UPDATE filesets SET attempts = 0 WHERE id = ?", (fileset_id,))
            return state

    def requeue(self, fileset_id: str, reason: str = "re-queued by operator") -> None:
        """Operator retry of a failed or skipped fileset (resets ``attempts``)."""
        state = self.enqueue(fileset_id, reason, requeue=True)
        if state in (FilesetState.IMPORTING, FilesetState.IMPORTED):
            raise InvalidTransitionError(f"fileset {fileset_id}: cannot go from {state} to queued")

    def claim_next(
        self,
        now: float,
        *,
        worker: str,
        max_running: int,
        per_user_limit: int | None = None,
    ) -> Claim | None:
        """Claim the next fileset to import, in one write transaction; None if none may start.

        Nothing starts while ``max_running`` filesets are ``importing`` (whoever claimed them).
        Of the users with a ``queued`` fileset due at ``now`` (and, with ``per_user_limit``,
        fewer than that many importing), the one whose last claim is oldest (never claimed
        first) gets the turn: its fileset due first moves to ``importing``, stamped with a new
        fencing token that :meth:`finish` must be given.
        """
        with self._tx() as c:
            (running,) = c.execute(
                "SELECT COUNT(*) FROM filesets WHERE state = ?", (FilesetState.IMPORTING.value,)
            ).fetchone()
            if running >= max_running:
                return None
            limit = (
                ""
                if per_user_limit is None
                else "AND (SELECT COUNT(*) FROM filesets i WHERE i.state = ?3 AND i.user = u.user) < ?4"
            )
            args: list[object] = [FilesetState.QUEUED.value, now]
            if per_user_limit is not None:
                args += [FilesetState.IMPORTING.value, per_user_limit]
            row = c.execute(
                "SELECT u.user, (SELECT f.id FROM filesets f WHERE f.state = ?1 AND f.user = u.user"
                " AND f.due_at <= ?2 ORDER BY f.due_at LIMIT 1) AS fid"
                f" FROM queue_users u WHERE fid IS NOT NULL {limit}"
                " ORDER BY u.last_claim, u.rowid LIMIT 1",
                args,
            ).fetchone()
            if row is None:
                return None
            user, fid = row
            (token,) = c.execute(
                "UPDATE queue_clock SET last_token = last_token + 1 WHERE id = 1 RETURNING last_token"
            ).fetchone()
            self._transition(c, fid, FilesetState.IMPORTING, "", None, now)
            c.execute(
                "UPDATE filesets SET claim_token = ?, claimed_by = ?, claimed_at = ? WHERE id = ?",
                (token, column_text(worker), now, fid),
            )
            c.execute("UPDATE queue_users SET last_claim = ? WHERE user = ?", (token, user))
            rec = self._fileset(c, fid)
            assert rec is not None
            return Claim(rec, int(token))

    def finish(
        self,
        fileset_id: str,
        token: int,
        state: str,
        reason: str = "",
        next_attempt_at: float | None = None,
    ) -> None:
        """Record the outcome of the claim ``token`` of ``fileset_id``: ``imported``,
        ``failed``, or ``queued`` again (a retry, due at ``next_attempt_at``).

        :class:`StaleClaimError` if that claim is no longer the fileset's current one (the
        fileset was recovered after a restart, or claimed again since): a late result of a
        worker that lost its claim is never recorded over another's.
        """
        target = FilesetState(state)
        with self._tx() as c:
            row = c.execute("SELECT state, claim_token FROM filesets WHERE id = ?", (fileset_id,)).fetchone()
            if row is None or row[0] != FilesetState.IMPORTING or row[1] != token:
                now_is = "gone" if row is None else f"{row[0]}, claim {row[1]}"
                raise StaleClaimError(
                    f"fileset {fileset_id}: claim {token} is no longer current (now {now_is}); "
                    f"its result ({target}) is not recorded"
                )
            self._transition(c, fileset_id, target, reason, next_attempt_at, time.time())

    def recover_interrupted(self) -> list[FilesetRecord]:
        """At start-up: filesets left ``importing`` by a crash go back to ``queued``.

        This is the only case in which an import may run twice, and the history says
        so.  Their ``attempts`` keep counting, so an import that crashes the service
        every time ends up ``failed`` instead of looping.  Only the one service that holds
        the state directory (its StateLock) may call this: anything ``importing`` is then a
        dead process's.
        """
        with self._tx() as c:
            ids = [
                r[0]
                for r in c.execute("SELECT id FROM filesets WHERE state = ?", (FilesetState.IMPORTING.value,))
            ]
            now = time.time()
            for fid in ids:
                self._transition(c, fid, FilesetState.QUEUED, INTERRUPTED_REASON, None, now)
            return [r for r in (self._fileset(c, fid) for fid in ids) if r is not None]

    def next_due_at(self) -> float | None:
        """When the earliest ``queued`` fileset is due (epoch seconds; maybe past), or None."""
        with self._read() as c:
            row = c.execute(
                "SELECT MIN(due_at) FROM filesets WHERE state = ?", (FilesetState.QUEUED.value,)
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def queue_counts(self, now: float) -> tuple[int, int]:
        """``(ready, delayed)``: ``queued`` filesets due at ``now``, and those in back-off."""
        with self._read() as c:
            q = FilesetState.QUEUED.value
            (ready,) = c.execute(
                "SELECT COUNT(*) FROM filesets WHERE state = ? AND due_at <= ?", (q, now)
            ).fetchone()
            (delayed,) = c.execute(
                "SELECT COUNT(*) FROM filesets WHERE state = ? AND due_at > ?", (q, now)
            ).fetchone()
        return int(ready), int(delayed)

    def exhausted(self, max_attempts: int) -> list[FilesetRecord]:
        """``queued`` filesets already tried ``max_attempts`` times: only crashes during their
        imports (attempts keep counting, see :meth:`recover_interrupted`) or a lower limit
        leave them so."""
        with self._read() as c:
            return self._filesets(
                c,
                "state = ? AND attempts >= ? ORDER BY created, id",
                (FilesetState.QUEUED.value, max_attempts),
            )

    def give_up(self, fileset_id: str, reason: str) -> bool:
        """A ``queued`` fileset goes to ``failed`` without another attempt; False if it is
        no longer queued."""
        with self._tx() as c:
            row = c.execute("SELECT state FROM filesets WHERE id = ?", (fileset_id,)).fetchone()
            if row is None or row[0] != FilesetState.QUEUED:
                return False
            self._transition(c, fileset_id, FilesetState.FAILED, reason, None, time.time())
            return True

    def pending(self) -> list[FilesetRecord]:
        """``waiting`` and ``queued`` filesets, oldest first, to resume after a restart."""
        with self._read() as c:
            return self._filesets(c, "state IN (?, ?) ORDER BY created, id", (WAITING, QUEUED))

    def filesets(self, state: str | None = None, limit: int | None = None) -> list[FilesetRecord]:
        """Filesets (optionally in one state), most recently updated first."""
        where = "1=1" if state is None else "state = ?"
        args: list[object] = [] if state is None else [state]
        sql = f"{where} ORDER BY updated DESC, id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._read() as c:
            return self._filesets(c, sql, args)

    def counts(self, kind: str = "filesets") -> dict[str, dict[str, int]]:
        """``{user: {state: n}}`` for ``"filesets"`` (default) or ``"files"``."""
        table = {"filesets": "filesets", "files": "files"}.get(kind)
        if table is None:
            raise ValueError(f"counts(kind={kind!r}): kind must be 'filesets' or 'files'")
        out: dict[str, dict[str, int]] = {}
        with self._read() as c:
            for user, state, n in c.execute(
                f"SELECT COALESCE(user, ''), state, COUNT(*) FROM {table} GROUP BY 1, 2 ORDER BY 1, 2"
            ):
                out.setdefault(user, {})[state] = int(n)
        return out

    def recent(self, limit: int = 50, state: str | None = None) -> list[HistoryEntry]:
        """The newest history entries first, optionally only those entering ``state``."""
        sql = "SELECT id, at, kind, subject, path, user, old_state, new_state, reason FROM history"
        args: list[object] = []
        if state is not None:
            sql += " WHERE new_state = ?"
            args.append(state)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(int(limit))
        with self._read() as c:
            return [
                HistoryEntry(
                    id=r[0],
                    at=r[1],
                    kind=r[2],
                    subject=r[3],
                    path=blob_path(r[4]) if r[4] is not None else None,
                    user=r[5],
                    old_state=r[6],
                    new_state=r[7],
                    reason=r[8],
                )
                for r in c.execute(sql, args)
            ]

    def history_of(self, subject: str) -> list[HistoryEntry]:
        """Every history entry of one fileset id (or file path), oldest first."""
        with self._read() as c:
            rows = c.execute(
                "SELECT id, at, kind, subject, path, user, old_state, new_state, reason"
                " FROM history WHERE subject = ? ORDER BY id",
                (column_text(subject),),
            ).fetchall()
        return [
            HistoryEntry(r[0], r[1], r[2], r[3], blob_path(r[4]) if r[4] is not None else None, *r[5:])
            for r in rows
        ]

    # -- operator actions: `omero-dropbox retry` / `forget`, the status page ------------

    def queued_ids(self) -> list[str]:
        """Ids of every ``queued`` fileset (cheap: no members read)."""
        with self._read() as c:
            return [
                r[0] for r in c.execute("SELECT id FROM filesets WHERE state = ? ORDER BY created", (QUEUED,))
            ]

    def resolve_fileset(self, ref: str) -> FilesetRecord:
        """The fileset whose id is ``ref`` or starts with ``ref`` (at least 6 characters)."""
        ref = ref.strip().lower()
        with self._read() as c:
            rec = self._fileset(c, ref)
            if rec is not None:
                return rec
            if len(ref) < 6 or not all(ch in "0123456789abcdef" for ch in ref):
                raise JournalError(
                    f"no fileset {ref!r}; give its id (or the first 6+ characters of it) "
                    "as printed by `omero-dropbox status`"
                )
            ids = [
                r[0] for r in c.execute("SELECT id FROM filesets WHERE substr(id, 1, ?) = ?", (len(ref), ref))
            ]
            if not ids:
                raise JournalError(f"no fileset id starts with {ref!r}; `omero-dropbox status` lists them")
            if len(ids) > 1:
                raise JournalError(
                    f"fileset id prefix {ref!r} is ambiguous ({len(ids)} filesets); give more characters"
                )
            got = self._fileset(c, ids[0])
            assert got is not None
            return got

    def retry(self, fileset_id: str, actor: str) -> FilesetRecord:
        """Operator retry of a ``failed`` (or ``skipped``) fileset; the history says who asked.

        A running service's workers find it within a second (the journal is their queue);
        otherwise the next start does.
        """
        with self._tx() as c:
            rec = self._fileset(c, fileset_id)
            if rec is None:
                raise JournalError(f"no fileset {fileset_id}")
            if rec.state not in (FAILED, SKIPPED):
                hint = {
                    IMPORTED: "it is already imported; `omero-dropbox forget PATH` and copy it again "
                    "to import it once more",
                    IMPORTING: "it is being imported right now",
                }.get(rec.state, "it is already waiting to be imported")
                raise JournalError(f"cannot retry fileset {fileset_id} ({display_path(rec.key)}): {hint}")
            self.requeue(fileset_id, reason=f"retry requested by {actor}")
            got = self._fileset(c, fileset_id)
            assert got is not None
            return got

    def forget(self, path: str, actor: str) -> list[HistoryEntry]:
        """Forget ``path`` (a file, or every file recorded under a directory), so a copy
        dropped again is imported again.

        Every fileset the path belongs to is forgotten with all its member files (else a
        companion still recorded as imported would keep the fileset from forming again).
        Filesets that are waiting, queued or importing are refused: forgetting them would
        race with the running import.  Returns the history entries written
        (``new_state`` ``"forgotten"``); the rows themselves are removed, the history stays.
        Files still on disk are remembered as they are now: the service does not import them
        again when it finds them at a restart, only when they are written again (a new copy).
        """
        enc = path_blob(path)
        prefix = enc.rstrip(b"/") + b"/"
        now = time.time()
        with self._tx() as c:
            rows = c.execute(
                f"SELECT {self._FILE_COLS} FROM files WHERE path = ? OR substr(path, 1, ?) = ?",
                (enc, len(prefix), prefix),
            ).fetchall()
            files = [f for f in (self._file(r) for r in rows) if f is not None]
            fids = {f.fileset_id for f in files if f.fileset_id}
            fids.update(
                r[0]
                for r in c.execute(
                    "SELECT DISTINCT fileset_id FROM fileset_members"
                    " WHERE path = ? OR substr(path, 1, ?) = ?",
                    (enc, len(prefix), prefix),
                )
            )
            if not files and not fids:
                raise JournalError(
                    f"nothing is recorded for {display_path(path)}; `omero-dropbox status` shows what the "
                    "journal knows (paths are absolute, as the service saw them)"
                )
            filesets = [r for r in (self._fileset(c, fid) for fid in sorted(fids)) if r is not None]
            busy = [r for r in filesets if r.state in (WAITING, QUEUED, IMPORTING)]
            if busy:
                raise JournalError(
                    f"cannot forget {display_path(path)}: fileset {busy[0].id} ({display_path(busy[0].key)}) "
                    f"is {busy[0].state}; wait until it is imported or failed"
                )
            reason = f"forgotten by {actor}; a copy dropped again will be imported again"
            written: list[HistoryEntry] = []
            for fs in filesets:
                for r in c.execute(f"SELECT {self._FILE_COLS} FROM files WHERE fileset_id = ?", (fs.id,)):
                    f = self._file(r)
                    if f is not None and f.id not in {x.id for x in files}:
                        files.append(f)
                c.execute("DELETE FROM fileset_members WHERE fileset_id = ?", (fs.id,))
                c.execute("DELETE FROM fileset_missing WHERE fileset_id = ?", (fs.id,))
                c.execute("DELETE FROM filesets WHERE id = ?", (fs.id,))
                written.append(self._forgotten(c, "fileset", fs.id, fs.key, fs.user, fs.state, reason, now))
            for f in files:
                c.execute("DELETE FROM files WHERE id = ?", (f.id,))
                written.append(self._forgotten(c, "file", f.path, f.path, f.user, f.state, reason, now))
                self._tombstone(c, f, now)
            return written

    @staticmethod
    def _tombstone(c: sqlite3.Connection, f: FileRecord, now: float) -> None:
        """Remember a forgotten file as it is on disk now: a restart's scan finds it again and
        must not import it; a copy dropped again (a new write) is imported."""
        try:
            st = os.lstat(f.path)
        except OSError:
            return  # gone: nothing on disk to mistake for a new copy
        if f.identity is not None and (st.st_ino, st.st_size) != (f.identity.ino, f.identity.size):
            return  # already another file: a new copy, to be imported
        c.execute(
            "INSERT OR REPLACE INTO forgotten(path, ino, size, mtime_ns, at) VALUES (?,?,?,?,?)",
            (path_blob(f.path), st.st_ino, st.st_size, st.st_mtime_ns, now),
        )

    def record_objects(self, fileset_id: str, objects: Sequence[str]) -> None:
        """Note the OMERO objects an import created (``"Image:12"``...) in the history."""
        if not objects:
            return
        with self._tx() as c:
            row = c.execute("SELECT state, user, key FROM filesets WHERE id = ?", (fileset_id,)).fetchone()
            if row is None:
                return
            self._history(
                c,
                "fileset",
                fileset_id,
                row[0],
                old_state=row[0],
                path=blob_path(row[2]),
                user=row[1],
                reason=OBJECTS_PREFIX + ", ".join(objects),
            )

    def filesets_of_user(self, user: str, limit: int) -> list[FilesetRecord]:
        """``user``'s most recently changed filesets, newest first."""
        with self._read() as c:
            return self._filesets(c, "user = ? ORDER BY updated DESC LIMIT ?", (user, limit))

    def users(self) -> list[str]:
        """Every user with a fileset (by index)."""
        with self._read() as c:
            return [str(r[0]) for r in c.execute("SELECT DISTINCT user FROM filesets")]

    def last_change_of_user(self, user: str) -> float:
        """When a fileset of ``user`` last changed (0 for none): cheap, by index."""
        with self._read() as c:
            row = c.execute("SELECT MAX(updated) FROM filesets WHERE user = ?", (user,)).fetchone()
        return float(row[0] or 0.0)

    # -- after-import actions (omero.fs.ng.afterImport) -----------------------------------

    def after_import_begin(self, fileset_id: str, action: str) -> bool:
        """Note that ``action`` is due for an imported fileset (False: noted before)."""
        with self._tx() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO after_import(fileset_id, action, state, updated) VALUES (?,?,?,?)",
                (fileset_id, action, "pending", time.time()),
            )
            return cur.rowcount == 1

    def after_import_end(self, fileset_id: str, *, done: bool, partial: bool, reason: str) -> None:
        """Record how the action went: ``done``, ``partial`` (files left), or still pending."""
        state = "partial" if partial else "done" if done else "pending"
        with self._tx() as c:
            c.execute(
                "UPDATE after_import SET state = ?, reason = ?, attempts = attempts + 1, updated = ?"
                " WHERE fileset_id = ?",
                (state, stored_reason(reason), time.time(), fileset_id),
            )
            if state != "pending":
                self._note(c, fileset_id, f"after import: {reason}")

    def after_import_pending(self) -> list[tuple[str, str, int]]:
        """``(fileset id, action, attempts)`` of every action not yet run to the end."""
        with self._read() as c:
            rows = c.execute(
                "SELECT fileset_id, action, attempts FROM after_import"
                " WHERE state = 'pending' ORDER BY updated"
            ).fetchall()
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]

    def after_import_state(self, fileset_id: str) -> tuple[str, str] | None:
        """``(state, reason)`` of a fileset's after-import action, if one was due."""
        with self._read() as c:
            row = c.execute(
                "SELECT state, reason FROM after_import WHERE fileset_id = ?", (fileset_id,)
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def _note(self, c: sqlite3.Connection, fileset_id: str, reason: str) -> None:
        """A history entry for a fileset that keeps its state (what happened after its import)."""
        row = c.execute("SELECT state, user, key FROM filesets WHERE id = ?", (fileset_id,)).fetchone()
        if row is not None:
            self._history(
                c,
                "fileset",
                fileset_id,
                row[0],
                old_state=row[0],
                path=blob_path(row[2]),
                user=row[1],
                reason=reason,
            )

    # -- key-value pairs and tags attached after the import (dropbox.toml) -----------------

    def annotations_begin(self, fileset_id: str) -> bool:
        """Note that an imported fileset's annotations are due (False: noted before)."""
        with self._tx() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO annotations(fileset_id, state, updated) VALUES (?,?,?)",
                (fileset_id, "pending", time.time()),
            )
            return cur.rowcount == 1

    def annotations_end(self, fileset_id: str, *, done: bool, final: bool, reason: str) -> None:
        """Record an attempt: ``done``; ``failed`` for good (``final``); else still pending."""
        state = "done" if done else "failed" if final else "pending"
        with self._tx() as c:
            c.execute(
                "UPDATE annotations SET state = ?, reason = ?, attempts = attempts + 1, updated = ?"
                " WHERE fileset_id = ?",
                (state, stored_reason(reason), time.time(), fileset_id),
            )
            # A change the user's report shows (it is rewritten when her filesets change).
            c.execute("UPDATE filesets SET updated = ? WHERE id = ?", (time.time(), fileset_id))
            self._note(c, fileset_id, f"annotations: {reason}")

    def annotations_pending(self) -> list[tuple[str, int, float]]:
        """``(fileset id, attempts, last change)`` of every fileset whose annotations are
        still to attach, oldest first."""
        with self._read() as c:
            rows = c.execute(
                "SELECT fileset_id, attempts, updated FROM annotations WHERE state = 'pending'"
                " ORDER BY updated"
            ).fetchall()
        return [(str(r[0]), int(r[1]), float(r[2])) for r in rows]

    def annotations_failed(self) -> list[str]:
        """Fileset ids whose annotations failed for good (for ``retry --all-failed``)."""
        with self._read() as c:
            rows = c.execute("SELECT fileset_id FROM annotations WHERE state = 'failed'").fetchall()
        return [str(r[0]) for r in rows]

    def annotations_state(self, fileset_id: str) -> tuple[str, str] | None:
        """``(state, reason)`` of a fileset's annotations, if it has any to attach."""
        with self._read() as c:
            row = c.execute(
                "SELECT state, reason FROM annotations WHERE fileset_id = ?", (fileset_id,)
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def annotations_unfinished(self, fileset_ids: Iterable[str]) -> dict[str, str]:
        """``{fileset id: reason}`` of those of ``fileset_ids`` whose annotations are not
        attached yet (pending or failed), read in one transaction."""
        out: dict[str, str] = {}
        with self._read() as c:
            for fid in fileset_ids:
                row = c.execute(
                    "SELECT reason FROM annotations WHERE fileset_id = ? AND state != 'done'", (fid,)
                ).fetchone()
                if row is not None:
                    out[fid] = str(row[0])
        return out

    def annotations_retry(self, fileset_id: str, actor: str) -> bool:
        """An operator's retry of failed annotations (False: none failed); the history says
        who asked.  A running service attaches them within seconds, else the next start."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE annotations SET state = 'pending', attempts = 0, updated = ?,"
                " reason = 'retry requested' WHERE fileset_id = ? AND state = 'failed'",
                (time.time(), fileset_id),
            )
            if cur.rowcount != 1:
                return False
            self._note(c, fileset_id, f"annotations: retry requested by {actor}")
            return True

    def objects_of(self, fileset_ids: Iterable[str]) -> dict[str, list[str]]:
        """``{fileset id: ["Image:12", ...]}`` as noted by :meth:`record_objects` (latest note wins)."""
        out: dict[str, list[str]] = {}
        with self._read() as c:
            for fid in fileset_ids:
                row = c.execute(
                    "SELECT reason FROM history WHERE subject = ? AND kind = 'fileset'"
                    " AND substr(reason, 1, ?) = ?"
                    " ORDER BY id DESC LIMIT 1",
                    (fid, len(OBJECTS_PREFIX), OBJECTS_PREFIX),
                ).fetchone()
                if row is not None:
                    out[fid] = [o.strip() for o in row[0][len(OBJECTS_PREFIX) :].split(",") if o.strip()]
        return out

    def imported_since(self, since: float) -> dict[str, int]:
        """``{user: n}`` imports completed at or after ``since`` (epoch seconds), from the history,
        so a fileset forgotten and imported again counts twice, as it was imported twice."""
        with self._read() as c:
            return {
                (u or ""): int(n)
                for u, n in c.execute(
                    "SELECT user, COUNT(*) FROM history WHERE new_state = ? AND kind = 'fileset'"
                    " AND old_state = ? AND at >= ? GROUP BY user",
                    (IMPORTED, IMPORTING, since),
                )
            }


#: History reason prefix of :meth:`Journal.record_objects` notes.
OBJECTS_PREFIX = "OMERO objects: "
