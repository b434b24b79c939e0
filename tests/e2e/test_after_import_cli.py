"""omero.fs.ng.afterImport through the real CLI (the importer is the RECORDER stand-in for
OMERO): files moved only after the import is journaled, a failed move resumed after a
restart, unsafe combinations refused at start-up, failed imports never touched."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
from pathlib import Path

from tests.support.service import Service, run_cli
from tests.support.waiting import wait_for


def _after_import_rows(state: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(f"file:{state / 'journal.sqlite3'}?mode=ro", uri=True)
    try:
        return [(str(r[0]), str(r[1])) for r in conn.execute("SELECT state, reason FROM after_import")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def service(tmp_path: Path, **props: str) -> Service:
    s = Service(
        tmp_path,
        tmp_path / "DropBox",
        tmp_path / "state",
        props={"dirImportWait": "0.5", **props},
    )
    (s.dropbox / "amy").mkdir(parents=True)
    return s


def test_imported_files_are_moved_to_the_area_keeping_their_path(tmp_path: Path) -> None:
    area = tmp_path / "Imported"
    s = service(tmp_path, **{"ng.afterImport": "move", "ng.importedArea": str(area)})
    with s:
        run = s.dropbox / "amy" / "run42"
        run.mkdir()
        (run / "a.tif").write_bytes(b"II*\0" + os.urandom(2000))
        moved = area / "amy" / "run42" / "a.tif"
        assert wait_for(moved.exists, 60), s.tail()
        assert len(s.records()) == 1  # imported first, once
        assert not (run / "a.tif").exists()
        assert wait_for(lambda: [st for st, _ in _after_import_rows(s.state)] == ["done"], 30)
    shown = run_cli("status", "--state-dir", str(s.state))
    assert shown.returncode == 0 and "after import: 1 file moved" in shown.stdout, shown.stdout


def test_a_failed_import_leaves_the_files_in_place(tmp_path: Path) -> None:
    s = service(tmp_path, **{"ng.afterImport": "delete", "ng.maxAttempts": "1"})
    s.env = {"FAULT_MODE": "fail", "FAULT_MATCH": "bad"}
    with s:
        bad = s.dropbox / "amy" / "bad.tif"
        bad.write_bytes(b"II*\0" + os.urandom(100))
        assert wait_for(lambda: _fileset_states(s.state) == ["failed"], 60), s.tail()
        assert bad.exists()
        assert _after_import_rows(s.state) == []


def _fileset_states(state: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{state / 'journal.sqlite3'}?mode=ro", uri=True)
    try:
        return [str(r[0]) for r in conn.execute("SELECT state FROM filesets")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def test_a_move_that_failed_is_resumed_after_a_restart(tmp_path: Path) -> None:
    area = tmp_path / "Imported"
    area.mkdir()
    blocker = area / "amy"
    blocker.write_text("a file where the user's folder in the area should be")
    s = service(tmp_path, **{"ng.afterImport": "move", "ng.importedArea": str(area)})
    with s:
        f = s.dropbox / "amy" / "a.tif"
        f.write_bytes(b"II*\0" + os.urandom(500))
        assert wait_for(lambda: [st for st, _ in _after_import_rows(s.state)] == ["pending"], 60), s.tail()
        reason = _after_import_rows(s.state)[0][1]
        assert "move failed" in reason and "tried again" in reason
        assert f.exists()  # still visible to the scientist under its own name
    blocker.unlink()
    with s:
        assert wait_for(lambda: (area / "amy" / "a.tif").exists(), 60), s.tail()
        assert not f.exists()
        assert len(s.records()) == 1  # the restart re-ran the move, not the import


def test_delete_with_an_in_place_import_is_refused_at_start_up(tmp_path: Path) -> None:
    s = service(tmp_path, **{"ng.afterImport": "delete", "importArgs": "--transfer=ln_s"})
    s.start(wait=False)
    assert s.proc is not None
    assert s.proc.wait(timeout=60) != 0
    assert "would break the image in OMERO" in s.text()


def test_a_service_killed_mid_move_finishes_the_move_after_restart_without_reimporting(
    tmp_path: Path,
) -> None:
    """kill -9 of the service while it copies an imported file to an area on another
    filesystem: the restart finishes the move from the journal; nothing is lost or imported twice."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        area = Path(shm) / "Imported"
        s = service(tmp_path, **{"ng.afterImport": "move", "ng.importedArea": str(area)})
        big = s.dropbox / "amy" / "run" / "big.tif"
        big.parent.mkdir()
        with open(big, "wb") as fh:  # 256 MiB: the copy to tmpfs takes long enough to be caught
            for _ in range(256):
                fh.write(b"II*\0" + os.urandom((1 << 20) - 4))
        digest = _sha256(big)
        partial = area / "amy" / "run" / ".big.tif.partial"
        s.start()
        try:
            caught = wait_for(partial.exists, 120, interval=0.001)
            s.kill9()
        finally:
            if s.alive():
                s.kill9()
        assert caught, s.tail()
        with s:
            moved = area / "amy" / "run" / "big.tif"
            assert wait_for(lambda: [st for st, _ in _after_import_rows(s.state)] == ["done"], 120), s.tail()
            assert moved.exists() and not big.exists()
            assert _sha256(moved) == digest
            assert not partial.exists()
            assert len(s.records()) == 1  # the import ran once; only the move was resumed


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
