"""The import queue's stores: claims in SQL (round robin, back-off, concurrency), fencing
tokens, recovery after a crash, for the SQLite journal and the PostgreSQL store alike (on real
SQLite files and a private PostgreSQL server); then the journal's schema 2 -> 3 migration and
several processes sharing one journal."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from omero_dropbox import journal as journal_module
from omero_dropbox.identity import FileIdentity
from omero_dropbox.journal import INTERRUPTED_REASON, FilesetRecord, Journal, JournalError, StaleClaimError
from omero_dropbox.queue_store import Claim, QueueStore
from omero_dropbox.states import FilesetState

if TYPE_CHECKING:  # psycopg is only needed where the PostgreSQL store runs
    from omero_dropbox.pg_store import PgQueueStore

    Store = Journal | PgQueueStore

FIXTURE_V2 = Path(__file__).parents[1] / "fixtures" / "journal_v2.sql"


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state")
    yield j
    j.close()


# The behaviour below is the QueueStore contract: every store must pass it.  The PostgreSQL
# store runs against a private server (tests/support/postgres.py); tests/integration/
# test_pg_store.py has what only a shared, multi-host store does (leases, reclaims).
@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store
    if request.param == "sqlite":
        s = Journal(tmp_path / "state")
    else:
        pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install 'psycopg[binary]')")
        from omero_dropbox.pg_store import PgQueueStore

        s = PgQueueStore(request.getfixturevalue("pg_dsn"))
    yield s
    s.close()


def add(j: Store, fid: str, user: str = "amy", queue: bool = True) -> str:
    key = f"/drop/{user}/{fid}.tif"
    if isinstance(j, Journal):
        j.record_file(key, user, FileIdentity(1, abs(hash(key)), 1, fid))
        j.upsert_fileset(fid, user, key, [key], "Fake")
    else:  # the PostgreSQL store holds filesets, not files
        j.add_fileset(fid, user, key, [key], "Fake")
    if queue:
        assert j.enqueue(fid, "complete; queued for import") == FilesetState.WAITING
    return fid


def restart(j: Store) -> list[FilesetRecord]:
    """What a restart of the one service does: every claim is a dead process's."""
    if isinstance(j, Journal):
        return j.recover_interrupted()
    return j.recover_interrupted(now=math.inf)  # shared: only expired leases, so expire them all


def claim(j: Store, now: float | None = None, max_running: int = 100, **kw: object) -> Claim | None:
    when = time.time() + 1 if now is None else now
    return j.claim_next(when, worker="test", max_running=max_running, **kw)  # type: ignore[arg-type]


def drain_order(j: Store) -> list[str]:
    """Claim and finish everything due, one at a time: the order the queue serves."""
    order = []
    while (c := claim(j)) is not None:
        order.append(c.id)
        j.finish(c.id, c.token, FilesetState.IMPORTED, "attempt 1")
    return order


def test_the_store_is_a_queue_store(store: Store) -> None:
    protocol: QueueStore = store  # the protocol the worker pool depends on; mypy checks it
    assert protocol.next_due_at() is None and protocol.queue_counts(time.time()) == (0, 0)


def test_claims_serve_users_in_turn_and_each_users_filesets_in_order(store: Store) -> None:
    for i in range(6):
        add(store, f"a{i}", "alice")
    for i in range(2):
        add(store, f"b{i}", "bob")
    add(store, "c0", "carol")
    order = drain_order(store)
    # alice queued first; bob and carol never had a turn, so they come next; then alternate.
    assert order == ["a0", "b0", "c0", "a1", "b1", "a2", "a3", "a4", "a5"]
    # a user arriving later goes before the user who had the last turn
    for i in range(3):
        add(store, f"a{i + 6}", "alice")
    first = claim(store)
    assert first is not None and first.id == "a6"
    add(store, "d0", "dave")
    second = claim(store)
    assert second is not None and second.id == "d0"


def test_a_fileset_in_back_off_is_not_claimed_before_its_time(store: Store) -> None:
    base = time.time()
    add(store, "f")
    c = claim(store)
    assert c is not None
    store.finish("f", c.token, FilesetState.QUEUED, "server down", next_attempt_at=base + 60)
    add(store, "g", "bob")
    assert store.next_due_at() is not None
    got = claim(store)
    assert got is not None and got.id == "g"
    store.finish("g", got.token, FilesetState.IMPORTED)
    assert claim(store, now=base + 59) is None
    assert store.next_due_at() == base + 60
    assert store.queue_counts(base + 59) == (0, 1) and store.queue_counts(base + 60) == (1, 0)
    later = claim(store, now=base + 60)
    assert later is not None and later.id == "f" and later.record.attempts == 2
    assert later.record.last_error == "server down"


def test_no_claim_beyond_the_concurrency_cap(store: Store) -> None:
    for i in range(4):
        add(store, f"a{i}", "alice")
    add(store, "b0", "bob")
    first, second = claim(store, max_running=2), claim(store, max_running=2)
    assert first is not None and second is not None
    assert claim(store, max_running=2) is None  # two importing: the cap
    store.finish(first.id, first.token, FilesetState.IMPORTED)
    third = claim(store, max_running=2)
    assert third is not None and claim(store, max_running=2) is None
    assert len(store.filesets(FilesetState.IMPORTING)) == 2


def test_no_claim_beyond_the_per_user_limit(store: Store) -> None:
    for i in range(3):
        add(store, f"a{i}", "alice")
    add(store, "b0", "bob")
    got = [claim(store, per_user_limit=1) for _ in range(3)]
    assert [c.id if c else None for c in got] == ["a0", "b0", None]  # alice has one importing
    assert got[0] is not None
    store.finish("a0", got[0].token, FilesetState.IMPORTED)
    nxt = claim(store, per_user_limit=1)
    assert nxt is not None and nxt.id == "a1"


def test_a_stale_claim_cannot_record_its_result(store: Store) -> None:
    add(store, "f")
    old = claim(store)
    assert old is not None
    restart(store)  # a restart took it back
    new = claim(store)
    assert new is not None and new.token > old.token
    with pytest.raises(StaleClaimError, match=rf"claim {old.token} is no longer current"):
        store.finish("f", old.token, FilesetState.FAILED, "late result")
    rec = store.fileset_by_id("f")
    assert rec is not None and rec.state == FilesetState.IMPORTING
    store.finish("f", new.token, FilesetState.IMPORTED)
    with pytest.raises(StaleClaimError):
        store.finish("f", new.token, FilesetState.IMPORTED)  # twice: the claim is over
    with pytest.raises(StaleClaimError, match="gone"):
        store.finish("nope", 1, FilesetState.IMPORTED)


def test_enqueue_is_idempotent_and_the_one_way_in(store: Store) -> None:
    add(store, "f", queue=False)
    assert store.enqueue("f", "complete") == FilesetState.WAITING
    assert store.enqueue("f", "complete") == FilesetState.QUEUED
    assert store.queued_ids() == ["f"]
    c = claim(store)
    assert c is not None
    assert store.enqueue("f", "again") == FilesetState.IMPORTING
    store.finish("f", c.token, FilesetState.FAILED, "corrupt")
    assert store.enqueue("f", "again") == FilesetState.FAILED  # not without an operator
    assert store.fileset_by_id("f").state == FilesetState.FAILED  # type: ignore[union-attr]
    assert store.enqueue("f", "retry requested by ann", requeue=True) == FilesetState.FAILED
    rec = store.fileset_by_id("f")
    assert rec is not None and rec.state == FilesetState.QUEUED and rec.attempts == 0
    moves = [(h.old_state, h.new_state) for h in store.history_of("f")]
    assert moves.count(("waiting", "queued")) == 1 and moves.count(("failed", "queued")) == 1
    with pytest.raises(JournalError, match="unknown fileset"):
        store.enqueue("nope", "x")


def test_recover_interrupted_puts_back_a_dead_process_claims(store: Store) -> None:
    add(store, "f")
    add(store, "g", "bob")
    c = claim(store)
    assert c is not None and c.id == "f"
    back = restart(store)
    assert [r.id for r in back] == ["f"] and back[0].state == FilesetState.QUEUED
    assert back[0].attempts == 1 and back[0].last_error == INTERRUPTED_REASON  # the count goes on
    assert restart(store) == []
    assert sorted(store.queued_ids()) == ["f", "g"]
    # a fileset that crashed the service max_attempts times is given up, untried
    assert [r.id for r in store.exhausted(1)] == ["f"] and store.exhausted(2) == []
    assert store.give_up("f", "gave up after 1 attempt(s); last: interrupted")
    assert not store.give_up("f", "twice")
    rec = store.fileset_by_id("f")
    assert rec is not None and rec.state == FilesetState.FAILED and rec.attempts == 1
    again = claim(store)
    assert again is not None and again.id == "g"


def test_a_version_2_journal_is_migrated_and_its_queue_kept(tmp_path: Path) -> None:
    # tests/fixtures/journal_v2.sql was dumped from a journal the previous code wrote.
    conn = sqlite3.connect(tmp_path / journal_module.DB_NAME)
    conn.executescript(FIXTURE_V2.read_text())
    conn.execute(f"PRAGMA application_id={journal_module.APPLICATION_ID}")
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    with Journal(tmp_path) as j:
        assert j.counts() == {
            "amy": {"imported": 1, "importing": 1, "queued": 1},
            "bob": {"failed": 1, "queued": 1},
            "cy": {"waiting": 1},
        }
        assert [r.id for r in j.recover_interrupted()] == ["crashed_a"]
        assert j.queue_counts(time.time()) == (2, 1)  # later_b keeps its back-off (year 2100)
        assert j.next_due_at() is not None
        order = []
        while (c := j.claim_next(time.time(), worker="t", max_running=5)) is not None:
            order.append(c.id)
        assert order == ["queued_a", "crashed_a"]  # the same user, in the order they were queued
        later = j.fileset_by_id("later_b")
        assert later is not None and later.next_attempt_at == 4102444800.0
        assert j.claim_next(4102444800.0, worker="t", max_running=5).id == "later_b"  # type: ignore[union-attr]
        j.requeue("failed_b")
        assert j.after_import_pending() == []  # the version 4 table exists
        assert j.annotations_pending() == []  # and the version 5 one
        assert j.fileset_by_id("later_b").plan == ""  # type: ignore[union-attr]  # queued before settings
        assert j.enqueue("waiting_c", "complete") == FilesetState.WAITING
    conn = sqlite3.connect(tmp_path / journal_module.DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == journal_module.SCHEMA_VERSION == 5
    conn.close()


WORKER = """
import os, sys, time
from omero_dropbox.import_queue import ImportQueue
from omero_dropbox.importers import ImportResult
from omero_dropbox.journal import Journal

state, out, started = sys.argv[1], sys.argv[2], sys.argv[3]
journal = Journal(state, check=False)

def importer(request):
    with open(out, "a") as f:
        f.write(request.fileset_id + "\\n")
    # Every import waits until each process holds one (3 in all, the journal-wide limit),
    # so that the processes compete for the same rows whatever the machine's load.
    open(os.path.join(started, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(started)) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    return ImportResult.success()

queue = ImportQueue(journal, importer, max_concurrent=1, max_running=3)
print("ready", flush=True)
sys.stdin.readline()  # all processes start claiming together
queue.start(resume=False)  # the test's processes share the queue; none is the service
ok = queue.wait_idle(120)
queue.drain(10)
journal.close()
sys.exit(0 if ok else 1)
"""


def test_processes_sharing_a_journal_never_claim_the_same_fileset(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Journal(state) as j:
        with j.batch():
            for i in range(150):
                add(j, f"f{i:03d}", f"u{i % 5}")
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    outs = [tmp_path / f"out{n}" for n in range(3)]
    started = tmp_path / "started"
    started.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(state), str(out), str(started)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        assert [p.wait(180) for p in procs] == [0, 0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    runs = [line for out in outs if out.exists() for line in out.read_text().split()]
    assert len(runs) == 150 and len(set(runs)) == 150, Counter(runs).most_common(3)
    assert len(os.listdir(started)) == 3  # every process claimed while the others held claims
    with Journal(state) as j:
        assert sum(n.get("imported", 0) for n in j.counts().values()) == 150
        assert all(h.reason == "attempt 1" for h in j.recent(150, state="imported"))
