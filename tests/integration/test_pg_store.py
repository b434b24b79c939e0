"""The PostgreSQL queue store where it differs from the journal: several processes with their
own connections, leases and heartbeats, reclaims after a worker is killed, a server restart.

All against a private PostgreSQL server (tests/support/postgres.py), with real processes.  The
QueueStore contract both stores share is in test_queue_store.py.  Nothing here waits by
sleeping and hoping: every wait is for a condition, with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar

import pytest

try:
    import psycopg
except ImportError:
    pytest.skip("psycopg 3 is not installed (pip install 'psycopg[binary]')", allow_module_level=True)

import omero_dropbox
from omero_dropbox.journal import RECLAIMED_REASON, JournalBusyError, JournalError, StaleClaimError
from omero_dropbox.pg_store import (
    PG_SCHEMA,
    PG_SCHEMA_VERSION,
    PgQueueStore,
    StoreUnavailableError,
    redact_dsn,
)
from omero_dropbox.states import FilesetState
from tests.support.postgres import PostgresServer

T = TypeVar("T")
PACKAGE_ROOT = str(Path(omero_dropbox.__file__).resolve().parents[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 60.0, every: float = 0.05) -> T:
    """``check()``'s first truthy result; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def add_many(store: PgQueueStore, n: int, users: int = 5) -> list[str]:
    ids = [f"f{i:03d}" for i in range(n)]
    for i, fid in enumerate(ids):
        key = f"/drop/u{i % users}/{fid}.tif"
        store.add_fileset(fid, f"u{i % users}", key, [key], "Fake", queue=True)
    return ids


@pytest.fixture
def store(pg_dsn: str) -> Iterator[PgQueueStore]:
    s = PgQueueStore(pg_dsn)
    yield s
    s.close()


# --- the schema, the DSN, records ---------------------------------------------------------


def test_the_schema_is_created_once_in_its_own_schema_with_a_version(pg_dsn: str) -> None:
    with PgQueueStore(pg_dsn), PgQueueStore(pg_dsn):
        pass
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute(f"SELECT version FROM {PG_SCHEMA}.schema_version").fetchall() == [
            (PG_SCHEMA_VERSION,)
        ]
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (PG_SCHEMA,)
            )
        }
        assert {"filesets", "fileset_members", "queue_users", "queue_clock", "history"} <= tables
        public = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        assert public.fetchone() == (0,)  # the database may be shared: nothing outside our schema


def test_a_schema_from_a_newer_version_is_refused(pg_dsn: str) -> None:
    PgQueueStore(pg_dsn).close()
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(f"UPDATE {PG_SCHEMA}.schema_version SET version = 99")
    with pytest.raises(JournalError, match=r"version 99.*upgrade omero-dropbox"):
        PgQueueStore(pg_dsn)


def test_the_dsn_is_shown_without_its_password() -> None:
    assert redact_dsn("postgresql://amy:s3cret@db.example:5433/q") == "postgresql://amy:***@db.example:5433/q"
    assert (
        redact_dsn("postgresql://db/q?user=amy&password=s3cret") == "postgresql://db/q?user=amy&password=***"
    )
    shown = redact_dsn("host=db user=amy password='s 3cret' dbname=q")
    assert "s 3cret" not in shown and "password=***" in shown and "host=db" in shown
    assert redact_dsn("postgresql://db/q") == "postgresql://db/q"


def test_a_wrong_password_or_a_missing_database_say_what_to_fix(
    postgres_server: PostgresServer, pg_dsn: str
) -> None:
    wrong = pg_dsn.replace(postgres_server.password, "not-the-password")
    with pytest.raises(JournalError, match=r"cannot log in .*:\*\*\*@.*check the user and password") as e:
        PgQueueStore(wrong)
    assert "not-the-password" not in str(e.value) and not isinstance(e.value, StoreUnavailableError)
    with pytest.raises(JournalError, match=r"does not exist.*create it first"):
        PgQueueStore(pg_dsn.rsplit("/", 1)[0] + "/no_such_db")


def test_member_paths_are_kept_as_bytes(store: PgQueueStore) -> None:
    key = os.fsdecode(b"/drop/amy/caf\xe9/scan\xff.ome.tif")  # not UTF-8: surrogate escapes
    other = os.fsdecode(b"/drop/amy/caf\xe9/scan\xff.companion.ome")
    store.add_fileset("f", "amy", key, [other], "OMETiff", plan='{"dataset": "x"}', queue=True)
    rec = store.fileset_by_id("f")
    assert rec is not None and rec.key == key and rec.members == (key, other)
    assert rec.state == FilesetState.QUEUED and rec.plan == '{"dataset": "x"}'
    revised = store.add_fileset("f", "amy", key, [other, key], "OMETiff")  # no plan given: kept
    assert revised.plan == '{"dataset": "x"}' and revised.members == (other, key)
    with psycopg.connect(store.dsn) as conn:
        row = conn.execute(f"SELECT key FROM {PG_SCHEMA}.filesets WHERE id = 'f'").fetchone()
        assert row == (b"/drop/amy/caf\xe9/scan\xff.ome.tif",)


def test_adding_a_fileset_is_idempotent_also_from_concurrent_watchers(store: PgQueueStore) -> None:
    store.add_fileset("f", "amy", "/d/amy/a.tif", ["/d/amy/a.tif"], "Fake", queue=True)
    store.add_fileset("f", "amy", "/d/amy/a.tif", ["/d/amy/a.tif", "/d/amy/b.tif"], "Fake", queue=True)
    rec = store.fileset_by_id("f")
    assert rec is not None and rec.state == FilesetState.QUEUED and len(rec.members) == 2  # revised
    c = store.claim_next(time.time(), worker="w", max_running=5)
    assert c is not None
    again = store.add_fileset("f", "bob", "/d/bob/x.tif", ["/d/bob/x.tif"], "Other", queue=True)
    assert again.state == FilesetState.IMPORTING and again.user == "amy"  # started: left alone
    moves = [(h.old_state, h.new_state) for h in store.history_of("f")]
    assert moves == [(None, "waiting"), ("waiting", "queued"), ("queued", "importing")]

    # Four watchers (own connections) send the same 40 filesets at once: one row each, queued once.
    errors: list[BaseException] = []

    def watcher() -> None:
        try:
            with PgQueueStore(store.dsn) as s:
                add_many(s, 40)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=watcher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert len(store.queued_ids()) == 40
    for fid in ("f000", "f017", "f039"):
        moves = [(h.old_state, h.new_state) for h in store.history_of(fid)]
        assert moves == [(None, "waiting"), ("waiting", "queued")]


def test_the_concurrency_cap_is_global_across_connections(store: PgQueueStore) -> None:
    add_many(store, 4)
    with PgQueueStore(store.dsn) as other:
        assert store.claim_next(time.time(), worker="a", max_running=2) is not None
        assert other.claim_next(time.time(), worker="b", max_running=2) is not None
        assert other.claim_next(time.time(), worker="b", max_running=2) is None
        assert store.claim_next(time.time(), worker="a", max_running=2) is None


# --- leases ----------------------------------------------------------------------------------


def test_a_live_claim_is_not_taken_back_and_an_expired_one_is(pg_dsn: str) -> None:
    with PgQueueStore(pg_dsn, lease=1.0) as store:
        add_many(store, 1)
        c = store.claim_next(time.time(), worker="w", max_running=5)
        assert c is not None
        token, lease_until = store.claim_of(c.id)
        assert token == c.token and lease_until is not None
        assert store.recover_interrupted(now=lease_until - 0.5) == []  # at start-up: not a dead claim
        assert store.reclaim_expired(now=lease_until - 0.5) == []
        wait_for("the lease to run out", lambda: store.server_time() > lease_until)
        assert store.reclaim_expired() == [c.id]
        assert store.heartbeat(c.id, c.token) is False  # the worker must stop
        with pytest.raises(StaleClaimError, match=rf"claim {c.token} is no longer current \(now queued"):
            store.finish(c.id, c.token, FilesetState.IMPORTED)
        rec = store.fileset_by_id(c.id)
        assert rec is not None and rec.state == FilesetState.QUEUED and rec.attempts == 1
        assert rec.last_error == RECLAIMED_REASON


def test_heartbeats_keep_a_claim_past_its_lease(pg_dsn: str) -> None:
    lease = 2.0
    with PgQueueStore(pg_dsn, lease=lease) as worker, PgQueueStore(pg_dsn) as reaper:
        add_many(worker, 1)
        c = worker.claim_next(time.time(), worker="w", max_running=5)
        assert c is not None
        _, first_lease = worker.claim_of(c.id)
        assert first_lease is not None
        assert worker.heartbeat(c.id, c.token)
        # The lease moved: a reaper at the first lease's end finds nothing expired.
        assert reaper.reclaim_expired(now=first_lease) == []

        # A reaper keeps reclaiming while the worker heartbeats, until well past the first lease.
        def alive() -> bool:
            assert worker.heartbeat(c.id, c.token), "the claim was lost while heartbeating"
            assert reaper.reclaim_expired() == []
            return reaper.server_time() > first_lease + 2 * lease

        wait_for("the server clock to pass two leases", alive, every=lease / 10)
        worker.finish(c.id, c.token, FilesetState.IMPORTED, "done")
        assert worker.heartbeat(c.id, c.token) is False  # finished: the claim is over
        rec = worker.fileset_by_id(c.id)
        assert rec is not None and rec.state == FilesetState.IMPORTED and rec.attempts == 1


# --- real worker processes -------------------------------------------------------------------

WORKER = """
import os, sys, time
from omero_dropbox.journal import JournalBusyError, JournalError, StaleClaimError
from omero_dropbox.pg_store import PgQueueStore

name, mode = sys.argv[1], sys.argv[2]
gate, workers = sys.argv[3], int(sys.argv[4])
max_running, lease = int(sys.argv[5]), float(sys.argv[6])
store = PgQueueStore(os.environ["ODB_TEST_DSN"], lease=lease)

def say(*words):
    print(*words, flush=True)

def until(what, check):
    deadline = time.monotonic() + 120
    while not check():
        if time.monotonic() > deadline:
            say("timeout", what)
            sys.exit(3)
        time.sleep(0.01)

say("ready")
sys.stdin.readline()  # every process starts claiming together
claims = 0
while True:
    try:
        c = store.claim_next(time.time(), worker=name, max_running=max_running)
    except JournalError as e:
        say("error", type(e).__name__)
        time.sleep(0.05)  # the server is restarting: a worker polls again
        continue
    if c is None:
        try:
            if not store.ids_in(["queued", "importing"]):
                break
            store.reclaim_expired()
        except JournalError as e:
            say("error", type(e).__name__)
        time.sleep(0.01)
        continue
    claims += 1
    say("claim", c.id, c.token)
    if mode == "hold":  # keep this claim until the test says so, then stop dead
        say("holding")
        sys.stdin.readline()
        time.sleep(3600)
    running = len(store.ids_in(["importing"]))
    if running > max_running:
        say("over", running)
    if mode in ("together", "restart") and claims == (1 if mode == "together" else 5):
        # Hold this claim until every worker holds one: the claims overlap, whatever the load.
        open(os.path.join(gate, name), "w").close()
        until("the other workers", lambda: len([n for n in os.listdir(gate) if n != "go"]) >= workers)
        if mode == "restart":
            until("the server restart", lambda: os.path.exists(os.path.join(gate, "go")))
    while True:
        try:
            store.finish(c.id, c.token, "imported", "by " + name)
            say("done", c.id)
            break
        except StaleClaimError:
            say("stale", c.id)
            break
        except JournalError as e:
            say("error", type(e).__name__)
            time.sleep(0.05)
store.close()
"""


class Workers:
    """Worker processes running :data:`WORKER`, each with its own connection."""

    def __init__(self, tmp: Path, dsn: str) -> None:
        self.script = tmp / "worker.py"
        self.script.write_text(textwrap.dedent(WORKER))
        self.gate = tmp / "gate"
        self.gate.mkdir()
        self.env = {**os.environ, "ODB_TEST_DSN": dsn}
        self.env["PYTHONPATH"] = os.pathsep.join(
            [PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        self.procs: list[subprocess.Popen[str]] = []
        self.lines: dict[int, list[str]] = {}
        self._readers: list[threading.Thread] = []

    def start(self, n: int, mode: str, max_running: int = 1000, lease: float = 60.0) -> None:
        for i in range(n):
            args = [f"w{i}", mode, str(self.gate), str(n), str(max_running), str(lease)]
            p = subprocess.Popen(
                [sys.executable, str(self.script), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=self.env,
            )
            self.procs.append(p)
        for p in self.procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in self.procs:
            self.lines[p.pid] = []
            assert p.stdout is not None
            t = threading.Thread(target=self._read, args=(p.stdout, self.lines[p.pid]), daemon=True)
            t.start()
            self._readers.append(t)
        for p in self.procs:
            self.tell(p)

    @staticmethod
    def _read(out: IO[str], into: list[str]) -> None:
        for line in out:
            into.append(line.strip())

    @staticmethod
    def tell(p: subprocess.Popen[str]) -> None:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()

    def wait(self, timeout: float = 180) -> list[int]:
        codes = [p.wait(timeout) for p in self.procs]
        for t in self._readers:
            t.join(30)
        return codes

    def said(self, word: str) -> list[list[str]]:
        return [
            line.split()[1:]
            for lines in self.lines.values()
            for line in list(lines)
            if line.split()[0] == word
        ]

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)


@pytest.fixture
def workers(tmp_path: Path, pg_dsn: str) -> Iterator[Workers]:
    w = Workers(tmp_path, pg_dsn)
    try:
        yield w
    finally:
        w.kill_all()


def test_four_processes_claim_200_filesets_each_exactly_once(store: PgQueueStore, workers: Workers) -> None:
    ids = add_many(store, 200)
    workers.start(4, "together")
    assert workers.wait() == [0, 0, 0, 0], workers.lines
    claims = workers.said("claim")
    claimed = Counter(fid for fid, _ in claims)
    assert sorted(claimed) == ids and set(claimed.values()) == {1}, claimed.most_common(3)
    assert len({token for _, token in claims}) == 200  # one counter: no token twice
    assert sorted(fid for (fid,) in workers.said("done")) == ids
    assert workers.said("stale") == [] and workers.said("over") == []
    assert all(any(line.startswith("claim") for line in lines) for lines in workers.lines.values())
    assert len(os.listdir(workers.gate)) == 4  # every worker held a claim while the others did
    done = store.filesets(FilesetState.IMPORTED)
    assert len(done) == 200 and {r.attempts for r in done} == {1}


def test_the_cap_holds_with_four_processes_claiming(store: PgQueueStore, workers: Workers) -> None:
    add_many(store, 60)
    workers.start(4, "cap", max_running=2)
    assert workers.wait() == [0, 0, 0, 0], workers.lines
    assert workers.said("over") == []  # no worker ever saw more than 2 importing
    assert len(store.filesets(FilesetState.IMPORTED)) == 60


def test_a_killed_workers_claim_is_reclaimed_and_its_token_refused(pg_dsn: str, workers: Workers) -> None:
    with PgQueueStore(pg_dsn, lease=1.0) as store:
        add_many(store, 1)
        workers.start(1, "hold", lease=1.0)
        (victim,) = workers.procs
        wait_for("the worker to hold its claim", lambda: "holding" in workers.lines[victim.pid])
        ((fid, old_token),) = workers.said("claim")
        _, lease_until = store.claim_of(fid)
        assert lease_until is not None
        assert store.reclaim_expired(now=lease_until - 0.5) == []  # a live lease is left alone
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL
        assert store.claim_next(time.time(), worker="other", max_running=5) is None  # still claimed
        assert wait_for("the dead worker's lease to be reclaimed", store.reclaim_expired) == [fid]
        new = store.claim_next(time.time(), worker="other", max_running=5)
        assert new is not None and new.id == fid and new.token > int(old_token)
        assert new.record.attempts == 2 and new.record.last_error == RECLAIMED_REASON
        assert store.heartbeat(fid, int(old_token)) is False
        with pytest.raises(StaleClaimError, match=rf"claim {old_token} is no longer current"):
            store.finish(fid, int(old_token), FilesetState.IMPORTED, "late result of the dead worker")
        store.finish(fid, new.token, FilesetState.IMPORTED, "by other")
        rec = store.fileset_by_id(fid)
        assert rec is not None and rec.state == FilesetState.IMPORTED
        moves = [(h.old_state, h.new_state, h.reason) for h in store.history_of(fid)][-3:]
        assert moves == [
            ("importing", "queued", RECLAIMED_REASON),
            ("queued", "importing", ""),
            ("importing", "imported", "by other"),
        ]


# --- the server goes away --------------------------------------------------------------------


def test_after_a_server_restart_the_next_call_uses_a_fresh_connection(
    postgres_server: PostgresServer, store: PgQueueStore
) -> None:
    add_many(store, 3)
    held = [store.claim_next(time.time(), worker="w", max_running=5) for _ in range(2)]
    postgres_server.restart()  # cuts this store's connection
    for c in held:
        assert c is not None
        assert store.heartbeat(c.id, c.token)  # nothing claimed was lost
        store.finish(c.id, c.token, FilesetState.IMPORTED)
    assert len(store.queued_ids()) == 1

    postgres_server.stop()
    try:
        with pytest.raises(StoreUnavailableError, match=r"cannot connect to PostgreSQL .*:\*\*\*@") as e:
            store.queued_ids()
        assert postgres_server.password not in str(e.value) and "is the server running" in str(e.value)
        with pytest.raises(StoreUnavailableError):
            store.claim_next(time.time(), worker="w", max_running=5)
    finally:
        postgres_server.start()
    c = store.claim_next(time.time(), worker="w", max_running=5)
    assert c is not None and c.record.attempts == 1
    store.finish(c.id, c.token, FilesetState.IMPORTED)
    assert len(store.filesets(FilesetState.IMPORTED)) == 3


def test_a_server_restart_while_four_workers_hold_claims_loses_nothing(
    postgres_server: PostgresServer, store: PgQueueStore, workers: Workers
) -> None:
    ids = add_many(store, 200)
    workers.start(4, "restart")
    # Every worker holds its fifth claim (its connection idle) when the server restarts.
    wait_for("every worker to hold a claim", lambda: len(os.listdir(workers.gate)) >= 4, timeout=120)
    held = store.ids_in(["importing"])
    assert len(held) == 4
    postgres_server.restart()
    (workers.gate / "go").touch()
    assert workers.wait() == [0, 0, 0, 0], workers.lines
    done = store.filesets(FilesetState.IMPORTED)
    assert sorted(r.id for r in done) == ids and {r.attempts for r in done} == {1}
    claimed = Counter(fid for fid, _ in workers.said("claim"))
    assert set(claimed.values()) == {1} and set(held) <= {fid for (fid,) in workers.said("done")}
    assert workers.said("stale") == []


# --- the worker pool on it ---------------------------------------------------------------------


def test_the_import_queue_runs_on_the_postgresql_store(store: PgQueueStore) -> None:
    from omero_dropbox.import_queue import ImportQueue
    from omero_dropbox.importers import ImportRequest, ImportResult

    ids = add_many(store, 20, users=3)
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    def importer(request: ImportRequest) -> ImportResult:
        with lock:
            seen.append((request.fileset_id, request.attempt))
        if request.fileset_id == "f003" and request.attempt == 1:
            return ImportResult.failure("server busy", transient=True)
        if request.fileset_id == "f007":
            return ImportResult.failure("corrupt file", transient=False)
        return ImportResult.success()

    queue = ImportQueue(store, importer, max_concurrent=3, backoff_initial=0.05, backoff_max=0.05)
    assert sorted(queue.start()) == ids
    try:
        assert queue.wait_idle(120)
    finally:
        queue.drain(30)
    assert sorted(seen) == sorted([(fid, 1) for fid in ids] + [("f003", 2)])
    failed = store.filesets(FilesetState.FAILED)
    assert [r.id for r in failed] == ["f007"] and failed[0].last_error.startswith("corrupt file")
    f003 = store.fileset_by_id("f003")
    assert f003 is not None and f003.state == FilesetState.IMPORTED and f003.attempts == 2
    assert len(store.filesets(FilesetState.IMPORTED)) == 19


def test_a_fileset_taken_back_from_a_dead_worker_runs_again_as_an_interrupted_import(pg_dsn: str) -> None:
    # The dead worker may have imported it already: the next attempt is told so, and the OMERO
    # importer then passes --exclude=clientpath, so OMERO skips what is already in.
    from omero_dropbox.import_queue import ImportQueue
    from omero_dropbox.importers import ImportRequest, ImportResult

    with PgQueueStore(pg_dsn, lease=1.0) as store:
        (fid,) = add_many(store, 1)
        dead = store.claim_next(time.time(), worker="dead", max_running=5)
        assert dead is not None
        _token, lease_until = store.claim_of(fid)
        assert lease_until is not None
        wait_for("the lease to run out", lambda: store.server_time() > lease_until)
        assert store.reclaim_expired() == [fid]
        requests: list[ImportRequest] = []

        def importer(request: ImportRequest) -> ImportResult:
            requests.append(request)
            return ImportResult.success()

        queue = ImportQueue(store, importer, max_concurrent=1)
        queue.start()
        try:
            assert queue.wait_idle(60)
        finally:
            queue.drain(30)
        assert [(r.fileset_id, r.attempt, r.interrupted) for r in requests] == [(fid, 2, True)]


def test_a_session_stuck_holding_the_claim_lock_makes_claims_fail_not_hang(pg_dsn: str) -> None:
    with PgQueueStore(pg_dsn, lock_timeout=0.5) as store:
        add_many(store, 2)
        # A client frozen in the middle of a claim: it holds the token counter's row.
        with psycopg.connect(pg_dsn) as frozen:
            frozen.execute(f"SELECT last_token FROM {PG_SCHEMA}.queue_clock FOR UPDATE")
            with pytest.raises(JournalBusyError, match=r"lock timeout.*another session holds a lock"):
                store.claim_next(time.time(), worker="w", max_running=5)
            assert store.queue_counts(time.time()) == (2, 0)  # reads need no lock
            frozen.rollback()
        c = store.claim_next(time.time(), worker="w", max_running=5)  # the same store, at once
        assert c is not None and c.token == 1
