"""The durable journal: identity, states, history, crash safety, bad state files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omero_dropbox.identity import FileIdentity, file_identity, fileset_id
from omero_dropbox.journal import (
    DB_NAME,
    INTERRUPTED_REASON,
    InvalidTransitionError,
    Journal,
    JournalError,
    JournalFullError,
)

PYTHON_DIR = str(Path(__file__).resolve().parents[2] / "python")


def _write(path: Path | str | bytes, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return os.fsdecode(path)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state")
    yield j
    j.close()


def _fileset(j: Journal, tmp_path: Path, name: str, user: str = "amy", n: int = 2) -> str:
    paths = [_write(tmp_path / f"{name}.{i}", f"{name} {i}".encode()) for i in range(n)]
    ids = [file_identity(p) for p in paths]
    for p, i in zip(paths, ids, strict=True):
        j.record_file(p, user, i)
    fid = fileset_id(ids)
    j.upsert_fileset(fid, user, paths[0], paths, "Fake")
    return fid


# --- identity -------------------------------------------------------------------------


def test_identity_survives_rename_touch_chmod(tmp_path: Path) -> None:
    p = _write(tmp_path / "a.tif", os.urandom(200_000))
    ident = file_identity(p)
    os.utime(p, (1, 1))
    assert file_identity(p) == ident
    os.chmod(p, 0o600)
    assert file_identity(p) == ident
    q = str(tmp_path / "renamed.tif")
    os.rename(p, q)
    assert file_identity(q) == ident


def test_rewrite_is_a_new_identity(tmp_path: Path) -> None:
    p = tmp_path / "a.tif"
    _write(p, b"x" * 300_000)
    before = file_identity(str(p))
    with open(p, "r+b") as f:  # same inode, same size, different tail
        f.seek(300_000 - 10)
        f.write(b"y" * 10)
    assert file_identity(str(p)) != before
    _write(p, b"x" * 300_001)  # same inode, different size
    assert file_identity(str(p)) != before


def test_identity_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        file_identity(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a regular file"):
        file_identity(str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        file_identity(str(fifo))  # must not block


def test_fileset_id_is_order_independent_and_rename_proof(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.ics", b"ics")
    b = _write(tmp_path / "a.ids", b"ids")
    before = fileset_id([file_identity(a), file_identity(b)])
    assert before == fileset_id([file_identity(b), file_identity(a)])
    os.rename(tmp_path, tmp_path.parent / (tmp_path.name + "-moved"))
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    try:
        after = fileset_id([file_identity(str(moved / "a.ids")), file_identity(str(moved / "a.ics"))])
    finally:
        os.rename(moved, tmp_path)
    assert after == before
    assert all(c in "0123456789abcdef" for c in before)
    with pytest.raises(ValueError):
        fileset_id([])


# --- files ----------------------------------------------------------------------------


def test_record_file_is_idempotent_and_follows_renames(journal: Journal, tmp_path: Path) -> None:
    fid = _fileset(journal, tmp_path, "img")
    rec = journal.fileset_by_id(fid)
    assert rec is not None
    old_key = rec.key
    new_key = str(tmp_path / "moved.0")
    os.rename(old_key, new_key)
    ident = file_identity(new_key)
    again = journal.record_file(new_key, "amy", ident)
    assert again.path == new_key
    assert again.fileset_id == fid
    assert journal.find_by_identity(ident) == again
    assert journal.file_state(old_key) is None
    moved = journal.fileset_by_id(fid)
    assert moved is not None
    assert moved.key == new_key and new_key in moved.members and old_key not in moved.members
    assert any("renamed from" in h.reason for h in journal.recent(10))
    # touch + chmod: the very same record, no history noise
    os.utime(new_key, (5, 5))
    os.chmod(new_key, 0o640)
    n = len(journal.recent(1000))
    assert journal.record_file(new_key, "amy", file_identity(new_key)) == journal.file_state(new_key)
    assert len(journal.recent(1000)) == n


def test_rewritten_file_is_a_new_version(journal: Journal, tmp_path: Path) -> None:
    p = _write(tmp_path / "a.tif", b"one")
    first = journal.record_file(p, "amy", file_identity(p))
    _write(p, b"two, longer")
    second = journal.record_file(p, "amy", file_identity(p))
    assert second.id != first.id and second.state == "seen"
    assert journal.file_state(p) == second
    assert journal.recent(1)[0].reason == "new version (content changed)"


def test_remount_with_new_device_number_is_the_same_file(journal: Journal, tmp_path: Path) -> None:
    p = _write(tmp_path / "a.tif", b"data")
    ident = file_identity(p)
    rec = journal.record_file(p, "amy", ident)
    remounted = FileIdentity(ident.dev + 1, ident.ino, ident.size, ident.fingerprint)
    again = journal.record_file(p, "amy", remounted)
    assert again.id == rec.id and again.identity == remounted


def test_skip_file(journal: Journal, tmp_path: Path) -> None:
    p = str(tmp_path / "unreadable.tif")
    journal.skip_file(p, None, "unreadable: permission denied")
    rec = journal.file_state(p)
    assert rec is not None and rec.state == "skipped" and rec.identity is None
    assert rec.reason == "unreadable: permission denied"
    # later readable: a fresh record
    _write(p, b"now readable")
    fresh = journal.record_file(p, "amy", file_identity(p))
    assert fresh.state == "seen" and journal.file_state(p) == fresh
    assert journal.counts("files") == {"": {"skipped": 1}, "amy": {"seen": 1}}


def test_non_utf8_paths_round_trip(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9 \xff\xfe-\n.tif"
    name = os.fsdecode(raw)
    _write(raw, b"latin-1 name")
    ident = file_identity(name)
    with Journal(tmp_path / "state") as j:
        j.record_file(name, "amy", ident)
        j.upsert_fileset("fs1", "amy", name, [name], "Fake")
        j.transition("fs1", "queued", reason=f"for {name}")
    with Journal(tmp_path / "state") as j:
        rec = j.file_state(name)
        assert rec is not None and os.fsencode(rec.path) == raw
        fs = j.fileset_by_id("fs1")
        assert fs is not None and os.fsencode(fs.key) == raw and fs.members == (name,)
        assert rec.state == "queued"
        hist = j.recent(5)
        assert hist[0].path is not None and os.fsencode(hist[0].path) == raw
        assert "\\xe9" in hist[0].reason  # text columns show undecodable bytes escaped


# --- filesets -------------------------------------------------------------------------


def test_state_machine_history_and_propagation(journal: Journal, tmp_path: Path) -> None:
    fid = _fileset(journal, tmp_path, "img", n=3)
    rec = journal.fileset_by_id(fid)
    assert rec is not None and rec.state == "waiting" and rec.attempts == 0
    assert len(rec.members) == 3
    journal.transition(fid, "queued")
    journal.transition(fid, "importing")
    journal.transition(fid, "queued", reason="server down", next_attempt_at=123.0)
    rec = journal.fileset_by_id(fid)
    assert rec is not None
    assert (rec.state, rec.attempts, rec.last_error, rec.next_attempt_at) == (
        "queued",
        1,
        "server down",
        123.0,
    )
    journal.transition(fid, "importing")
    for m in rec.members:
        f = journal.file_state(m)
        assert f is not None and f.state == "importing" and f.fileset_id == fid
    journal.transition(fid, "imported")
    rec = journal.fileset_by_id(fid)
    assert rec is not None and rec.attempts == 2 and rec.finished is not None
    assert rec.started is not None and rec.next_attempt_at is None
    assert journal.was_imported(fid)
    assert all(journal.file_state(m).state == "imported" for m in rec.members)  # type: ignore[union-attr]
    states = [h.new_state for h in journal.history_of(fid)]
    assert states == ["waiting", "queued", "importing", "queued", "importing", "imported"]
    with pytest.raises(InvalidTransitionError, match="cannot go from imported to queued"):
        journal.transition(fid, "queued")
    with pytest.raises(InvalidTransitionError, match="unknown fileset state"):
        journal.transition(fid, "bogus")
    with pytest.raises(JournalError, match="unknown fileset"):
        journal.transition("nope", "queued")
    # an imported fileset is never revised nor re-opened
    same = journal.upsert_fileset(fid, "amy", rec.key, rec.members[:1], "Other")
    assert same.state == "imported" and same.format == "Fake"


def test_failed_reason_and_requeue(journal: Journal, tmp_path: Path) -> None:
    fid = _fileset(journal, tmp_path, "img")
    journal.transition(fid, "queued")
    journal.transition(fid, "importing")
    journal.transition(fid, "failed", reason="corrupt file")
    rec = journal.fileset_by_id(fid)
    assert rec is not None and rec.last_error == "corrupt file" and rec.finished
    f = journal.file_state(rec.key)
    assert f is not None and f.state == "failed" and f.reason == "corrupt file"
    assert [h.subject for h in journal.recent(state="failed")] == [fid]
    journal.requeue(fid)
    rec = journal.fileset_by_id(fid)
    assert rec is not None and rec.state == "queued" and rec.attempts == 0


def test_upsert_revises_a_waiting_fileset(journal: Journal, tmp_path: Path) -> None:
    a = _write(tmp_path / "a.nd", b"nd")
    b = _write(tmp_path / "a_w1.tif", b"tif")
    journal.upsert_fileset("fs", "amy", a, [a], "MetaMorph")
    rec = journal.upsert_fileset("fs", "amy", a, [a, b], "MetaMorph")
    assert rec.members == (a, b) and rec.state == "waiting"
    assert journal.upsert_fileset("fs2", "amy", b, [a], "X").members == (b, a)  # key added


def test_recover_interrupted_pending_counts(journal: Journal, tmp_path: Path) -> None:
    f1 = _fileset(journal, tmp_path, "one")
    f2 = _fileset(journal, tmp_path, "two", user="bob")
    f3 = _fileset(journal, tmp_path, "three")
    journal.transition(f1, "queued")
    journal.transition(f1, "importing")
    journal.transition(f2, "queued")
    claimed = journal.recover_interrupted()
    assert [r.id for r in claimed] == [f1]
    assert claimed[0].state == "queued" and claimed[0].attempts == 1
    assert journal.history_of(f1)[-1].reason == INTERRUPTED_REASON
    assert {r.id for r in journal.pending()} == {f1, f2, f3}
    assert journal.recover_interrupted() == []
    assert journal.counts() == {"amy": {"queued": 1, "waiting": 1}, "bob": {"queued": 1}}
    with pytest.raises(ValueError, match="kind"):
        journal.counts("nope")


def test_concurrent_writers(journal: Journal, tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(20):
                fid = f"t{t}-{i}"
                journal.upsert_fileset(fid, f"u{t}", f"/x/{fid}", [f"/x/{fid}"], "F")
                journal.transition(fid, "queued")
                journal.transition(fid, "importing")
                journal.transition(fid, "imported")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert journal.counts() == {f"u{t}": {"imported": 20} for t in range(8)}


# --- crash safety ---------------------------------------------------------------------

CHILD = """
import os, sys
sys.path.insert(0, {pydir!r})
from omero_dropbox.journal import Journal
j = Journal(sys.argv[1])
mode = sys.argv[2]
if mode == "mid-transaction":
    for i in range(10):
        fid = f"done{{i}}"
        j.upsert_fileset(fid, "amy", f"/d/{{fid}}", [f"/d/{{fid}}", f"/d/{{fid}}.b"], "F")
        j.transition(fid, "queued")
    with j._tx():
        j.upsert_fileset("partial", "amy", "/d/p", ["/d/p"], "F")
        j.transition("done0", "importing")
        os._exit(9)
else:
    i = 0
    while True:
        fid = f"loop{{i}}"
        j.upsert_fileset(fid, "amy", f"/d/{{fid}}", [f"/d/{{fid}}"], "F")
        for s in ("queued", "importing", "imported"):
            j.transition(fid, s)
        print(i, flush=True)
        i += 1
"""


def _child(tmp_path: Path) -> Path:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(pydir=PYTHON_DIR)))
    return script


def test_exit_mid_transaction_leaves_a_consistent_journal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    r = subprocess.run([sys.executable, _child(tmp_path), state, "mid-transaction"], timeout=60)
    assert r.returncode == 9
    with Journal(state) as j:
        assert j.fileset_by_id("partial") is None
        assert j.counts() == {"amy": {"queued": 10}}
        rec = j.fileset_by_id("done0")
        assert rec is not None and rec.state == "queued" and rec.attempts == 0
        assert rec.members == ("/d/done0", "/d/done0.b")


def test_sigkill_during_writes_leaves_a_consistent_journal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, _child(tmp_path), state, "loop"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    last = -1
    deadline = time.monotonic() + 60
    while last < 30 and time.monotonic() < deadline:
        last = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    assert last >= 30
    with Journal(state) as j:  # opens with an integrity check
        counts = j.counts()["amy"]
        assert counts["imported"] >= last + 1
        assert sum(counts.values()) <= last + 2  # at most the one being written
        conn = sqlite3.connect(state / DB_NAME)
        try:
            bad = conn.execute(
                "SELECT COUNT(*) FROM history h WHERE h.kind = 'fileset' AND h.id = ("
                " SELECT MAX(id) FROM history WHERE subject = h.subject) AND h.new_state !="
                " (SELECT state FROM filesets WHERE id = h.subject)"
            ).fetchone()[0]
        finally:
            conn.close()
        assert bad == 0  # state and history always written together


# --- bad state files ------------------------------------------------------------------


def test_garbage_state_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError, match=r"is corrupt: .*move it aside to start fresh") as ei:
        Journal(state)
    assert str(state / DB_NAME) in str(ei.value)


def test_damaged_pages_are_reported_as_corrupt(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Journal(state) as j:
        for i in range(300):
            j.upsert_fileset(f"f{i}", "amy", f"/d/{i}" * 20, [f"/d/{i}" * 20], "F")
    db = state / DB_NAME
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(db.read_bytes())
    assert len(data) > 5 * 4096
    data[2 * 4096 : 4 * 4096] = os.urandom(2 * 4096)
    db.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="is corrupt"):
        Journal(state)


def test_newer_schema_and_foreign_database(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Journal(state).close()
    conn = sqlite3.connect(state / DB_NAME)
    conn.execute("PRAGMA user_version=99")
    conn.commit()
    conn.close()
    with pytest.raises(JournalError, match=r"schema version 99.*newer omero-dropbox"):
        Journal(state)
    other = tmp_path / "other"
    other.mkdir()
    conn = sqlite3.connect(other / DB_NAME)
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()
    with pytest.raises(JournalError, match="not an omero-dropbox journal"):
        Journal(other)


def test_readonly_open_for_status(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with pytest.raises(JournalError, match="no state file"):
        Journal(state, readonly=True)
    with Journal(state) as writer:
        writer.upsert_fileset("f", "amy", "/d/f", ["/d/f"], "F")
        with Journal(state, readonly=True) as reader:  # while the service has it open
            assert reader.counts() == {"amy": {"waiting": 1}}
            assert [h.subject for h in reader.recent()] == ["f"]
            with pytest.raises(JournalError, match="readonly"):
                reader.transition("f", "queued")


def test_status_reads_one_state_while_an_import_finishes(journal: Journal, tmp_path: Path) -> None:
    # `status` reads the fileset counts, then today's imports. An import finishing between the
    # two reads (the service's worker, another connection) was counted as both importing and
    # imported today: CI saw "2" for one file. Inside snapshot() both reads see one state.
    fid = _fileset(journal, tmp_path, "scan")
    journal.transition(fid, "queued")
    journal.transition(fid, "importing")
    with Journal(journal.state_dir, readonly=True) as reader:
        with reader.snapshot():
            importing = reader.counts()["amy"]
            journal.transition(fid, "imported")  # the service commits meanwhile
            imported_today = reader.imported_since(0)
        assert (importing, imported_today) == ({"importing": 1}, {})
        assert reader.counts()["amy"] == {"imported": 1}  # the next report sees the import
        assert reader.imported_since(0) == {"amy": 1}


def test_state_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(JournalError, match="cannot create state directory"):
        Journal(blocker / "state")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_state_dir(tmp_path: Path) -> None:  # pragma: no cover - not root
    state = tmp_path / "ro"
    state.mkdir(mode=0o500)
    with pytest.raises(JournalError, match="not writable"):
        Journal(state)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {r.stderr.strip() or r.returncode}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_raises_journal_full_and_keeps_earlier_records(small_fs: Path) -> None:
    state = small_fs / "state"
    j = Journal(state)
    for i in range(5):
        j.upsert_fileset(f"kept{i}", "amy", f"/d/{i}", [f"/d/{i}"], "F")
        j.transition(f"kept{i}", "queued")
    filler = small_fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    with pytest.raises(JournalFullError) as ei:
        for i in range(2000):
            j.upsert_fileset(f"new{i}", "amy", "/d/" + "x" * 3000, [f"/d/{i}" * 500], "F")
    assert str(state) in str(ei.value) and "full" in str(ei.value)
    # still readable, and the failed transaction left nothing half-written
    assert j.fileset_by_id("kept0") is not None
    j.close()
    filler.unlink()
    with Journal(state) as j2:
        assert all(j2.fileset_by_id(f"kept{i}").state == "queued" for i in range(5))  # type: ignore[union-attr]
        j2.upsert_fileset("after", "amy", "/d/after", ["/d/after"], "F")


def test_a_version_1_journal_is_upgraded_in_place_and_keeps_what_it_knew(tmp_path: Path) -> None:
    from omero_dropbox import journal as journal_module

    db = tmp_path / journal_module.DB_NAME
    conn = sqlite3.connect(db)
    for stmt in journal_module._SCHEMA.split(";"):
        if stmt.strip():
            conn.execute(stmt)
    conn.execute(f"PRAGMA application_id={journal_module.APPLICATION_ID}")
    conn.execute("PRAGMA user_version=1")
    conn.execute(
        "INSERT INTO files(path, user, dev, ino, size, fingerprint, identity, state, created, updated)"
        " VALUES (?, 'amy', 1, 2, 3, 'ff', '1:2:3:ff', 'imported', 0, 0)",
        (b"/drop/amy/a.tif",),
    )
    conn.commit()
    conn.close()
    with Journal(tmp_path) as journal:
        rec = journal.file_state("/drop/amy/a.tif")
        assert rec is not None and rec.state == "imported"
        assert journal.seen_mtime(rec.id) is None
        journal.set_seen_mtime(rec.id, 42)
        assert journal.seen_mtime(rec.id) == 42
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == journal_module.SCHEMA_VERSION == 5
    conn.close()
