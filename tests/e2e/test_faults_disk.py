"""The disk holding the state directory fills up: stop taking work, say why, resume when space returns.

The state directory is a real, small tmpfs mounted for the test (needs root); the
journal is real SQLite, which reports ``database or disk is full``.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from omero_dropbox.import_queue import ImportQueue
from omero_dropbox.journal import QUEUED, Journal
from tests.support.faults import check_imports, journal_counts, write_fileset
from tests.support.queue import Recorder, add
from tests.support.service import Service, running
from tests.support.waiting import wait_for

USERS = ["amy", "zak"]


@pytest.fixture
def small_state_dir(shm_dir: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs for the state directory, always unmounted afterwards.

    Not smaller: SQLite lets the write-ahead log grow to ~4 MiB (1,000 pages) before it
    checkpoints, so on a 4 MiB disk the journal fills it by itself once the filler is gone."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the state directory needs root")
    state = shm_dir / "state"
    state.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(state)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(directory: Path) -> Path:
    """Use up every free block of the filesystem holding ``directory``; returns the filler file."""
    filler = directory / "filler"
    # Unbuffered: a buffered file would raise ENOSPC again when closed.
    with open(filler, "wb", buffering=0) as fh:
        for size in (65536, 4096, 512):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


@pytest.mark.needs_root
def test_full_state_disk_stops_new_work_with_a_clear_error_and_resumes_when_space_returns(
    shm_dir: Path, small_state_dir: Path
) -> None:
    dropbox, state = shm_dir / "DropBox", small_state_dir
    rng = random.Random(7)
    service = Service(shm_dir, dropbox, state, users=USERS, props={"dirImportWait": "1"})
    with running(service):
        before = {write_fileset(dropbox / u / "before", f"b{i}", i, rng): u for u in USERS for i in range(5)}
        assert wait_for(lambda: journal_counts(state).get("imported") == len(before), 60), service.tail()
        filler = fill(state)

        after = {write_fileset(dropbox / u / "after", f"a{i}", i, rng): u for u in USERS for i in range(5)}
        # The service says what is wrong and where, and how to fix it ...
        assert wait_for(lambda: "is full" in service.text(), 60), service.tail()
        text = service.text()
        full_lines = [ln for ln in text.splitlines() if "is full" in ln]
        assert any(str(state) in ln and "free some space" in ln for ln in full_lines), full_lines
        # ... keeps running, and imports nothing it cannot record.
        assert service.alive(), service.tail()
        assert not {r.key for r in service.records()} & set(after)

        os.unlink(filler)
        assert wait_for(lambda: journal_counts(state).get("imported") == len(before) + len(after), 90), (
            service.tail()
        )
        assert wait_for(lambda: len({r.key for r in service.records()}) == len(before) + len(after), 30)
    assert "space available again" in service.text()
    check_imports(service.records(), {**before, **after}, state)
    assert journal_counts(state) == {"imported": len(before) + len(after)}


@pytest.mark.needs_root
def test_disk_filling_during_an_import_keeps_its_result_and_never_imports_it_twice(
    shm_dir: Path, small_state_dir: Path
) -> None:
    dropbox, state = shm_dir / "DropBox", small_state_dir
    service = Service(
        shm_dir,
        dropbox,
        state,
        users=USERS,
        props={"dirImportWait": "1", "ng.maxConcurrentImports": "1"},
        env={"IMPORT_DELAY": "3"},
    )
    with running(service):
        expected = {write_fileset(dropbox / "amy", "slow", 1, random.Random(8)): "amy"}
        assert wait_for(lambda: "Importing " in service.text(), 60), service.tail()
        filler = fill(state)  # while the import runs: its result cannot be recorded
        assert wait_for(lambda: "cannot record it" in service.text(), 60), service.tail()
        assert service.records(), "the import itself finished"
        os.unlink(filler)
        assert wait_for(lambda: journal_counts(state) == {"imported": 1}, 30), service.tail()
    # After a restart nothing runs again: the result was recorded once space returned.
    with running(service):
        more = {write_fileset(dropbox / "zak", "later", 0, random.Random(9)): "zak"}
        assert wait_for(lambda: journal_counts(state).get("imported") == 2, 60), service.tail()
    check_imports(service.records(), {**expected, **more}, state)
    assert "has space again" in service.text()


@pytest.mark.needs_root
def test_a_full_journal_disk_is_one_error_a_minute_not_one_per_import_start(
    small_state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The workers try to start the next import each second while the disk is full; the operator
    # needs the reason once, not a screenful a second.
    journal = Journal(small_state_dir)
    fileset_ids = [add(journal, f"f{i}") for i in range(20)]
    for fid in fileset_ids:
        journal.transition(fid, QUEUED)
    filler = fill(small_state_dir)
    importer = Recorder()
    queue = ImportQueue(journal, importer, max_concurrent=4, backoff_initial=0.0)
    caplog.set_level(logging.DEBUG, logger="omero_dropbox.queue")

    def failed_starts() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("Cannot start import")]

    queue.start()
    try:
        # The workers keep trying to start the next import (a second apart) ...
        assert wait_for(lambda: len(failed_starts()) >= 5, 30), len(failed_starts())
        errors = [r for r in failed_starts() if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert "is full" in errors[0].getMessage() or "disk" in errors[0].getMessage(), errors[0].getMessage()
        assert importer.calls == []
        # ... and all start once there is space again.
        os.unlink(filler)
        assert wait_for(lambda: journal.counts().get("amy") == {"imported": len(fileset_ids)}, 30)
    finally:
        queue.stop()
        journal.close()
    assert sorted(fid for fid, _ in importer.calls) == sorted(fileset_ids)
