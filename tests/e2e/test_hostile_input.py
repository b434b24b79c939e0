"""Hostile input: what a lab user can do to files that are already waiting, queued or failed.

A lab user controls every name under her ``DropBox/<user>/``. Between the moment a file is
reported and the moment the importer reads it, she can rename a symbolic link, a hard link
or a FIFO over it, or replace a directory on its path by a link to another user's folder.
Each test drives the real ``omero-dropbox run`` process on real directories; a recording
program stands in for the OMERO importer (no OMERO server runs here): it records the exact
paths it was given and how often it ran.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from omero_dropbox.journal import Journal, display_path
from tests.support.faults import file_reason, write_file
from tests.support.service import CLI, Service, running
from tests.support.waiting import wait_for

USERS = ["amy", "zak"]


def _imported(service: Service) -> set[bytes]:
    return {f for r in service.records() for f in r.files}


def _waiting(service: Service, path: Path, timeout: float = 30) -> None:
    """Until the engine holds ``path`` in its pool (the DEBUG line ``Waiting: PATH``)."""
    line = f"Waiting: {display_path(str(path))} "
    assert wait_for(lambda: line in service.text(), timeout), service.tail()


def _queued(service: Service, path: Path, timeout: float = 30) -> None:
    line = f"Fileset {display_path(str(path))} ("
    assert wait_for(lambda: any(line in ln and "queued" in ln for ln in service.text().splitlines()), timeout)


def _importer_started(service: Service, runs: int, timeout: float = 60) -> None:
    """Until the recording importer has been started ``runs`` times in all."""
    attempts = service.record.parent / (service.record.name + ".attempts")

    def started() -> int:
        return sum(p.stat().st_size for p in attempts.iterdir()) if attempts.exists() else 0

    assert wait_for(lambda: started() >= runs, timeout), service.tail()


def _swap(link_to: Path | str, over: Path, *, hard: bool = False) -> None:
    """Rename a fresh link over ``over`` in one step, as ``ln -s X .l && mv -T .l over`` does."""
    tmp = over.parent / ".swap"
    if hard:
        os.link(link_to, tmp)
    else:
        os.symlink(link_to, tmp)
    os.rename(tmp, over)


def _fileset_of(state: Path, path: Path) -> tuple[str, str]:
    """``(state, last_error)`` of the newest fileset that has ``path`` as a member."""
    with Journal(state, readonly=True, check=False) as journal:
        filesets = [fs for fs in journal.filesets() if str(path) in fs.members]
    assert filesets, f"no fileset has {path} as a member"
    newest = max(filesets, key=lambda fs: fs.created)
    return newest.state, newest.last_error


def _fileset_reaches(state: Path, path: Path, wanted: str, timeout: float = 60) -> tuple[str, str]:
    def reached() -> bool:
        try:
            return _fileset_of(state, path)[0] == wanted
        except AssertionError:
            return False

    assert wait_for(reached, timeout), _fileset_of(state, path)
    return _fileset_of(state, path)


def test_a_symlink_renamed_over_a_waiting_file_is_never_imported(shm_dir: Path) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    secret = write_file(shm_dir / "etc" / "admin-password", b"hunter2")
    waiting = Path(os.fsdecode(write_file(dropbox / "amy" / "waiting.tif", b"II*\x00amy")))
    service = Service(shm_dir, dropbox, state, users=USERS, props={"dirImportWait": "4"}, log_level="DEBUG")
    with running(service):
        _waiting(service, waiting)
        _swap(os.fsdecode(secret), waiting)
        assert wait_for(lambda: (file_reason(state, waiting) or ("", ""))[0] == "skipped", 30), service.tail()
        other = write_file(dropbox / "zak" / "z.tif", b"II*\x00zak")
        assert wait_for(lambda: other in _imported(service), 60), service.tail()
    assert os.fsencode(waiting) not in _imported(service)
    reason = file_reason(state, waiting)
    assert reason is not None and "symbolic link" in reason[1], reason


def test_a_link_to_another_users_file_renamed_over_a_waiting_file_takes_nothing_from_him(
    shm_dir: Path,
) -> None:
    """amy points her waiting file at zak's file before zak's copy is complete: she gets nothing,
    and zak's own import is not refused as "already imported" (the link was never fingerprinted
    as zak's file)."""
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    waiting = Path(os.fsdecode(write_file(dropbox / "amy" / "waiting.tif", b"II*\x00amy")))
    zak_file = dropbox / "zak" / "z.tif"
    zak_file.parent.mkdir(parents=True)
    service = Service(shm_dir, dropbox, state, users=USERS, props={"dirImportWait": "2"}, log_level="DEBUG")
    with running(service):
        _waiting(service, waiting)
        with open(zak_file, "wb") as copying:  # zak's copy is still open: not reported yet
            copying.write(b"II*\x00zak's data")
            copying.flush()
            _swap("../zak/z.tif", waiting)
            # A barrier: once amy's next file is imported, her folder's earlier files were handled.
            barrier = write_file(dropbox / "amy" / "barrier.tif", b"II*\x00barrier")
            assert wait_for(lambda: barrier in _imported(service), 60), service.tail()
        assert wait_for(lambda: os.fsencode(zak_file) in _imported(service), 60), service.tail()
    assert os.fsencode(waiting) not in _imported(service)
    zak_imports = [r for r in service.records() if os.fsencode(zak_file) in r.files]
    assert len(zak_imports) == 1 and zak_imports[0].user == "zak", zak_imports
    assert "Already imported" not in service.text()


def test_a_symlink_renamed_over_a_file_queued_behind_a_slow_import_is_refused_before_the_importer_runs(
    shm_dir: Path,
) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    zak_file = write_file(dropbox / "zak" / "private.tif", b"II*\x00zak's data")
    service = Service(
        shm_dir,
        dropbox,
        state,
        users=USERS,
        props={"ng.maxConcurrentImports": "1", "dirImportWait": "1"},
        env={"IMPORT_DELAY": "3"},
        log_level="DEBUG",
    )
    with running(service):
        assert wait_for(lambda: os.fsencode(zak_file) in _imported(service), 60), service.tail()
        slow = Path(os.fsdecode(write_file(dropbox / "amy" / "slow.tif", b"II*\x00first")))
        _importer_started(service, 2)
        queued = Path(os.fsdecode(write_file(dropbox / "amy" / "queued.tif", b"II*\x00second")))
        _queued(service, queued)
        assert os.fsencode(slow) not in _imported(service), "the first import should still be running"
        _swap(zak_file, queued)
        got = _fileset_reaches(state, queued, "failed")
        assert wait_for(lambda: os.fsencode(slow) in _imported(service), 60)
    assert "symbolic link" in got[1] and got[1].startswith("not imported"), got
    assert os.fsencode(queued) not in _imported(service)


def test_a_directory_on_the_path_of_a_queued_file_replaced_by_a_link_to_another_users_folder(
    shm_dir: Path,
) -> None:
    """The file name stays the same; a directory above it now leads into zak's tree."""
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    zak_dir = dropbox / "zak" / "run"
    zak_file = write_file(zak_dir / "cells.tif", b"II*\x00zak's cells")
    service = Service(
        shm_dir,
        dropbox,
        state,
        users=USERS,
        props={"ng.maxConcurrentImports": "1", "dirImportWait": "1"},
        env={"IMPORT_DELAY": "3"},
        log_level="DEBUG",
    )
    with running(service):
        assert wait_for(lambda: os.fsencode(zak_file) in _imported(service), 60), service.tail()
        write_file(dropbox / "amy" / "slow.tif", b"II*\x00first")
        _importer_started(service, 2)
        queued = Path(os.fsdecode(write_file(dropbox / "amy" / "run" / "cells.tif", b"II*\x00amy's cells")))
        _queued(service, queued)
        # Moved out of the tree (a rename inside it is followed by the journal), then the link.
        os.rename(dropbox / "amy" / "run", shm_dir / "amy-run-elsewhere")
        os.symlink(zak_dir, dropbox / "amy" / "run")
        got = _fileset_reaches(state, queued, "failed")
    assert "symbolic link" in got[1], got
    amy_records = [r for r in service.records() if r.user == "amy"]
    assert all(os.fsencode(queued) not in r.files for r in amy_records), amy_records


def test_a_symlink_renamed_over_a_failed_file_waiting_for_its_retry_is_refused(shm_dir: Path) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    secret = write_file(shm_dir / "etc" / "secret", b"hunter2")
    service = Service(
        shm_dir,
        dropbox,
        state,
        users=USERS,
        props={"ng.retryBackoff": "4", "dirImportWait": "1"},
        env={"FAULT_MODE": "fail", "FAULT_MATCH": "retry-me", "FAULT_RC": "1"},
    )
    with running(service):
        failing = Path(os.fsdecode(write_file(dropbox / "amy" / "retry-me.tif", b"II*\x00bad")))
        assert wait_for(lambda: "will be retried" in service.text(), 60), service.tail()
        _swap(os.fsdecode(secret), failing)
        got = _fileset_reaches(state, failing, "failed")
    assert "symbolic link" in got[1], got
    attempts = service.record.parent / "imports.jsonl.attempts"
    runs = [p.stat().st_size for p in attempts.iterdir()]
    assert runs == [1], f"the importer ran {runs} time(s); the retry must not run it again"


def test_a_member_swapped_while_the_importer_reads_it_is_reported_and_not_counted_imported(
    shm_dir: Path,
) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    secret = write_file(shm_dir / "etc" / "secret", b"hunter2")
    service = Service(
        shm_dir, dropbox, state, users=USERS, props={"dirImportWait": "1"}, env={"IMPORT_DELAY": "3"}
    )
    attempts = service.record.parent / "imports.jsonl.attempts"
    with running(service):
        target = Path(os.fsdecode(write_file(dropbox / "amy" / "during.tif", b"II*\x00amy")))
        assert wait_for(lambda: attempts.exists() and any(attempts.iterdir()), 60), service.tail()
        _swap(os.fsdecode(secret), target)
        got = _fileset_reaches(state, target, "failed")
        assert "changed while it was imported" in service.text()
    assert "changed while it was imported" in got[1] and "symbolic link" in got[1], got
    status = subprocess.run(
        [*CLI, "status", "--state-dir", str(state), "--json"], capture_output=True, text=True, check=True
    )
    assert json.loads(status.stdout)["totals"]["imported"] == 0, status.stdout


def test_a_fifo_renamed_over_a_waiting_key_file_stalls_nobody(shm_dir: Path) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    key = Path(os.fsdecode(write_file(dropbox / "amy" / "scan.pattern", b"scan_<1-3>.tif\n")))
    write_file(dropbox / "amy" / "scan_1.tif", b"II*\x00one")
    service = Service(shm_dir, dropbox, state, users=USERS, props={"dirImportWait": "3"}, log_level="DEBUG")
    with running(service):
        _waiting(service, key)
        fifo = key.parent / ".fifo"
        os.mkfifo(fifo)
        os.rename(fifo, key)
        other = write_file(dropbox / "zak" / "z.tif", b"II*\x00zak")
        assert wait_for(lambda: other in _imported(service), 60), service.tail()
        assert wait_for(lambda: (file_reason(state, key) or ("", ""))[0] == "skipped", 30), service.tail()
    assert "not a regular file" in (file_reason(state, key) or ("", ""))[1]


# ------------------------------------------------------------------ key file content


def _victim_imported_despite(service: Service, dropbox: Path) -> None:
    """zak's plain file is imported while amy's hostile key file is around."""
    zak_file = write_file(dropbox / "zak" / "plain.tif", b"II*\x00zak")
    assert wait_for(lambda: zak_file in _imported(service), 60), service.tail()


def test_a_pattern_naming_another_users_files_is_refused_with_the_reference(shm_dir: Path) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    for i in (1, 2):
        write_file(dropbox / "zak" / f"p_{i}.tif", b"II*\x00zak's plane")
    service = Service(shm_dir, dropbox, state, users=USERS, props={"dirImportWait": "1"})
    with running(service):
        assert wait_for(lambda: len(_imported(service)) == 2, 60), service.tail()
        key = Path(os.fsdecode(write_file(dropbox / "amy" / "steal.pattern", b"../zak/p_<1-2>.tif\n")))
        assert wait_for(lambda: (file_reason(state, key) or ("", ""))[0] == "skipped", 60), service.tail()
        _victim_imported_despite(service, dropbox)
    reason = (file_reason(state, key) or ("", ""))[1]
    assert "../zak/p_1.tif" in reason and "outside" in reason, reason
    assert all(r.user == "zak" for r in service.records()), service.records()


def test_a_pattern_that_would_backtrack_for_ever_stalls_nobody(shm_dir: Path) -> None:
    """Bio-Formats reads a pattern without <blocks> as a regular expression over the folder."""
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    write_file(dropbox / "amy" / "evil" / ("a" * 60 + ".tif"), b"II*\x00amy")
    service = Service(shm_dir, dropbox, state, users=USERS, props={"dirImportWait": "1"})
    with running(service):
        write_file(dropbox / "amy" / "evil" / "hang.pattern", b"(a|aa)*c\n")
        _victim_imported_despite(service, dropbox)
    # SIGTERM was honoured (running() checks the exit status): the engine thread was never pinned.


def test_a_metamorph_nd_declaring_ten_billion_files_is_refused_naming_the_cap(shm_dir: Path) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    nd = (
        b'"NDInfoFile", Version 1.0\r\n"DoTimelapse", TRUE\r\n"NTimePoints", 100000\r\n'
        b'"DoStage", TRUE\r\n"NStagePositions", 100000\r\n"DoWave", FALSE\r\n"EndFile"\r\n'
    )
    service = Service(shm_dir, dropbox, state, users=USERS, props={"dirImportWait": "1"})
    with running(service):
        key = Path(os.fsdecode(write_file(dropbox / "amy" / "huge.nd", nd)))
        assert wait_for(lambda: (file_reason(state, key) or ("", ""))[0] == "skipped", 60), service.tail()
        _victim_imported_despite(service, dropbox)
    reason = (file_reason(state, key) or ("", ""))[1]
    assert "10,000,000,000" in reason, reason
