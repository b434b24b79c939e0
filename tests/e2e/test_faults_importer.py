"""The importer misbehaves: it hangs, crashes, or fails forever. The service keeps going.

Driven through the real CLI with a recording importer standing in for OMERO (no OMERO
server runs here); the watcher, journal, queue and process handling are real.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from omero_dropbox.journal import Journal
from tests.support.faults import check_imports, journal_counts, write_fileset
from tests.support.service import Service, running
from tests.support.waiting import wait_for

USERS = ["amy", "zak"]


def _write_some(dropbox: Path, per_user: int) -> dict[frozenset[bytes], str]:
    rng = random.Random(4)
    return {
        write_fileset(dropbox / user / "exp", f"s{i}", i, rng): user
        for user in USERS
        for i in range(per_user)
    }


def _attempts(service: Service, fileset: str) -> int:
    path = Path(f"{service.record}.attempts") / fileset
    return path.stat().st_size if path.exists() else 0


def _history(state: Path, path: Path) -> tuple[str, list[str]]:
    """(fileset id, reasons in its history) of the fileset whose key is ``path``."""
    with Journal(state, readonly=True) as journal:
        rec = journal.file_state(str(path))
        assert rec is not None and rec.fileset_id is not None, f"{path} is not in the journal"
        return rec.fileset_id, [h.reason for h in journal.history_of(rec.fileset_id)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(") ", 1)[1][0] != "Z"


def test_hanging_importer_is_killed_with_its_children_at_the_timeout_and_retried_with_recorder_importer(
    shm_dir: Path,
) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    service = Service(
        shm_dir,
        dropbox,
        state,
        users=USERS,
        props={"ng.importTimeout": "2", "ng.maxConcurrentImports": "1"},
        env={"FAULT_MODE": "hang", "FAULT_MATCH": "hangs.tif"},
    )
    with running(service):
        hang = dropbox / "amy" / "hangs.tif"
        expected = {write_fileset(hang.parent, "hangs", 0, random.Random(1)): "amy"}
        hung_pids = Path(f"{service.record}.hung-pids")
        assert wait_for(hung_pids.exists, 30), service.tail()
        # While one import hangs, more work arrives; it must not be lost behind the hang.
        expected.update(_write_some(dropbox, 3))
        assert wait_for(lambda: len({r.key for r in service.records()}) >= len(expected), 90), service.tail()
    outcome = check_imports(service.records(), expected, state)
    assert outcome.imported == len(expected)
    leader, child = map(int, hung_pids.read_text().split())
    assert not _alive(leader) and not _alive(child), "the hung importer or its child survived the timeout"
    fid, reasons = _history(state, hang)
    assert any("timed out after 2 s and was killed" in r for r in reasons), reasons
    assert _attempts(service, fid) == 2
    assert "will be retried" in service.text()


def test_importer_killed_by_a_signal_is_retried_and_imports_once_with_recorder_importer(
    shm_dir: Path,
) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    service = Service(
        shm_dir, dropbox, state, users=USERS, env={"FAULT_MODE": "crash", "FAULT_MATCH": "crashes"}
    )
    with running(service):
        crash_set = write_fileset(dropbox / "zak" / "crashes", "c", 1, random.Random(2))
        expected = {crash_set: "zak", **_write_some(dropbox, 3)}
        assert wait_for(lambda: len({r.key for r in service.records()}) >= len(expected), 90), service.tail()
    check_imports(service.records(), expected, state)
    key = dropbox / "zak" / "crashes" / "c.ics"
    fid, reasons = _history(state, key)
    assert any("killed by SIGKILL" in r for r in reasons), reasons
    assert _attempts(service, fid) == 2
    assert journal_counts(state) == {"imported": len(expected)}


def test_importer_failing_forever_ends_failed_with_its_stderr_and_the_queue_keeps_moving_with_recorder(
    shm_dir: Path,
) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    service = Service(
        shm_dir,
        dropbox,
        state,
        users=USERS,
        props={"ng.maxAttempts": "3", "ng.maxConcurrentImports": "1"},
        env={"FAULT_MODE": "fail", "FAULT_RC": "1", "FAULT_MATCH": "broken"},
    )
    with running(service):
        broken = dropbox / "amy" / "broken.tif"
        write_fileset(broken.parent, "broken", 0, random.Random(3))
        expected = _write_some(dropbox, 4)
        assert wait_for(lambda: journal_counts(state).get("failed") == 1, 90), service.tail()
        assert wait_for(lambda: len({r.key for r in service.records()}) >= len(expected), 90), service.tail()
    check_imports(service.records(), expected, state)
    assert journal_counts(state) == {"imported": len(expected), "failed": 1}
    fid, reasons = _history(state, broken)
    assert _attempts(service, fid) == 3
    final = reasons[-1]
    assert final.startswith("gave up after 3 attempt(s)"), reasons
    assert "exited with status 1" in final and f"cannot read plane 3 of {broken}" in final
    assert f"Import of {broken} failed=1" in service.text()
    assert broken.exists(), "a failed import must leave the file where it was"


def test_importer_exiting_with_a_permanent_code_fails_at_once_with_recorder_importer(shm_dir: Path) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    service = Service(
        shm_dir,
        dropbox,
        state,
        users=USERS,
        props={"ng.maxAttempts": "5"},
        env={"FAULT_MODE": "fail", "FAULT_RC": "65", "FAULT_MATCH": "bad-data"},
    )
    with running(service):
        bad = dropbox / "zak" / "bad-data.tif"
        write_fileset(bad.parent, "bad-data", 0, random.Random(5))
        expected = _write_some(dropbox, 2)
        assert wait_for(lambda: journal_counts(state).get("failed") == 1, 60), service.tail()
        assert wait_for(lambda: len({r.key for r in service.records()}) >= len(expected), 60), service.tail()
    check_imports(service.records(), expected, state)
    fid, reasons = _history(state, bad)
    assert _attempts(service, fid) == 1
    assert "exited with status 65" in reasons[-1] and "gave up" not in reasons[-1]
