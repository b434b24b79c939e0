"""The filesystem changes under the service: files deleted, truncated or rewritten while they wait,
directories renamed and moved in and out, permissions flipped, ``touch``, and a polled
share with partial writes.

Driven through the real CLI on real directories, with a recording program standing in for
OMERO (no OMERO server runs here) that also records each file's size when it ran.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from omero_dropbox import aggregator
from omero_dropbox.config import load_config
from omero_dropbox.engine import DropBox, UserList
from tests.support.faults import check_imports, write_file, write_fileset
from tests.support.records import Key, Record
from tests.support.service import Service, running
from tests.support.waiting import wait_for

USERS = ["amy", "zak"]
# Single .tif files wait the full dirImportWait: time enough to change them while they wait.
WAITING = {"dirImportWait": "3", "ng.completeWait": "0.5"}


def _service(shm_dir: Path, **props: str) -> Service:
    return Service(
        shm_dir,
        shm_dir / "DropBox",
        shm_dir / "state",
        users=USERS,
        props={**WAITING, **props},
        log_level="DEBUG",
    )


def _waiting(service: Service, path: Path | bytes) -> None:
    """Until the engine holds ``path`` in its pool, waiting for its fileset to complete."""
    shown = os.fsdecode(path)
    assert wait_for(lambda: f"Waiting: {shown} (" in service.text(), 30), service.tail()


def _by_key(records: list[Record]) -> dict[Key, Record]:
    return {r.key: r for r in records}


def _one(path: Path) -> Key:
    return frozenset({os.fsencode(path)})


def test_files_deleted_truncated_or_rewritten_while_waiting_import_once_with_their_final_content(
    shm_dir: Path,
) -> None:
    service = _service(shm_dir)
    amy = service.dropbox / "amy"
    amy.mkdir(parents=True)
    with running(service):
        deleted, truncated, rewritten = amy / "deleted.tif", amy / "truncated.tif", amy / "rewritten.tif"
        for p in (deleted, truncated, rewritten):
            write_file(p, b"II*\x00" + b"first version " * 1000)
        for p in (deleted, truncated, rewritten):
            _waiting(service, p)
        os.unlink(deleted)
        os.truncate(truncated, 100)
        write_file(rewritten, b"II*\x00" + b"second, longer version " * 2000)
        expected = {_one(truncated): "amy", _one(rewritten): "amy"}
        assert wait_for(lambda: len(service.records()) >= 2, 30), service.tail()
        time.sleep(4)  # one more dirImportWait: a second import of either would show up now
    check_imports(service.records(), expected, service.state)
    got = _by_key(service.records())
    assert got[_one(truncated)].sizes == (100,), "imported before it was truncated"
    assert got[_one(rewritten)].sizes == (rewritten.stat().st_size,), "imported before it was rewritten"


def test_directories_renamed_or_moved_in_and_out_while_waiting_or_after_import_import_once(
    shm_dir: Path,
) -> None:
    service = _service(shm_dir)
    dropbox = service.dropbox
    rng = random.Random(21)
    staging = shm_dir / "staging"
    (dropbox / "amy").mkdir(parents=True)
    with running(service):
        # While waiting: renamed, moved out of the DropBox, moved to another user.
        write_file(dropbox / "amy" / "exp1" / "renamed.tif", b"II*\x00one")
        write_file(dropbox / "amy" / "exp2" / "moved-out.tif", b"II*\x00two")
        write_file(dropbox / "amy" / "exp3" / "to-zak.tif", b"II*\x00three")
        for p in ("exp1/renamed.tif", "exp2/moved-out.tif", "exp3/to-zak.tif"):
            _waiting(service, dropbox / "amy" / p)
        os.rename(dropbox / "amy" / "exp1", dropbox / "amy" / "exp1-renamed")
        staging.mkdir()
        os.rename(dropbox / "amy" / "exp2", staging / "exp2")
        (dropbox / "zak").mkdir()
        os.rename(dropbox / "amy" / "exp3", dropbox / "zak" / "exp3")
        # Moved in from outside, with filesets inside.
        outside = {write_fileset(staging / "batch", f"m{i}", i, rng): "amy" for i in range(5)}
        os.rename(staging / "batch", dropbox / "amy" / "batch")
        expected = {
            _one(dropbox / "amy" / "exp1-renamed" / "renamed.tif"): "amy",
            _one(dropbox / "zak" / "exp3" / "to-zak.tif"): "zak",
            **{
                frozenset(f.replace(b"/staging/batch/", b"/DropBox/amy/batch/") for f in k): u
                for k, u in outside.items()
            },
        }
        assert wait_for(lambda: len(service.records()) >= len(expected), 60), service.tail()
        first = len(service.records())

        # After import: renamed, moved out and back in, copied elsewhere in the same tree.
        os.rename(dropbox / "amy" / "batch", dropbox / "amy" / "batch-renamed")
        os.rename(dropbox / "zak" / "exp3", staging / "exp3")
        os.rename(staging / "exp3", dropbox / "zak" / "exp3-back")
        assert wait_for(lambda: "exp3-back/to-zak.tif (" in service.text(), 30), service.tail()
        time.sleep(4)  # one more dirImportWait: a re-import would show up now
        assert len(service.records()) == first, [r.files for r in service.records()[first:]]
    check_imports(service.records(), expected, service.state)
    assert "Already imported" in service.text()


def test_permission_flips_and_touch_never_reimport_even_across_a_restart(shm_dir: Path) -> None:
    service = _service(shm_dir)
    dropbox = service.dropbox
    rng = random.Random(22)
    (dropbox / "amy").mkdir(parents=True)
    with running(service):
        expected = {write_fileset(dropbox / u / "exp", f"p{i}", i, rng): u for u in USERS for i in range(5)}
        # While waiting: the directory and a file flip to unreadable and back.
        flipping = dropbox / "amy" / "flip" / "flip.tif"
        write_file(flipping, b"II*\x00flip")
        _waiting(service, flipping)
        os.chmod(flipping, 0o000)
        os.chmod(flipping.parent, 0o000)
        os.chmod(flipping.parent, 0o755)
        os.chmod(flipping, 0o644)
        expected[_one(flipping)] = "amy"
        assert wait_for(lambda: len(service.records()) >= len(expected), 60), service.tail()

        # After import: chmod and touch everything, files and directories.
        for dirpath, dirnames, filenames in os.walk(dropbox):
            for name in filenames:
                p = os.path.join(dirpath, name)
                os.chmod(p, 0o600)
                os.utime(p)
                os.chmod(p, 0o644)
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o700)
        time.sleep(4)  # one more dirImportWait: a re-import would show up now
        assert len(service.records()) == len(expected)
    # A restart scans everything again: still nothing imported twice.
    with running(service):
        assert wait_for(lambda: service.text().count("Started OMERO.fs DropBox client") == 2, 30)
        write_file(dropbox / "zak" / "after-restart.tif", b"II*\x00new")
        expected[_one(dropbox / "zak" / "after-restart.tif")] = "zak"
        assert wait_for(lambda: len(service.records()) >= len(expected), 60), service.tail()
    check_imports(service.records(), expected, service.state)


def test_companion_still_being_copied_after_dir_import_wait_keeps_its_fileset_waiting(shm_dir: Path) -> None:
    """The header of a two-file fileset is complete at once, its data file takes longer than
    dirImportWait to copy: the fileset must wait for it, not be imported without it."""
    service = _service(shm_dir, dirImportWait="1.5")
    amy = service.dropbox / "amy"
    amy.mkdir(parents=True)
    rng = random.Random(24)
    with running(service):
        header = write_file(amy / "big.ics", b"\t\nics_version\t1.0\n")
        _waiting(service, header)
        with open(amy / "big.ids", "wb") as fh:
            for _ in range(12):
                fh.write(rng.randbytes(10_000))
                fh.flush()
                time.sleep(0.3)
        expected = {frozenset({header, os.fsencode(amy / "big.ids")}): "amy"}
        assert wait_for(lambda: len(service.records()) >= 1, 30), service.tail()
        time.sleep(2.5)  # one more dirImportWait: a second import would show up now
    check_imports(service.records(), expected, service.state)
    (record,) = service.records()
    assert sorted(record.sizes) == sorted([os.path.getsize(header), 120_000])


def test_data_file_first_then_a_header_written_longer_than_dir_import_wait_import_together(
    shm_dir: Path,
) -> None:
    """The data file (.ids) of a two-file fileset is complete first, its header (.ics) is still
    being written after dirImportWait: the data file must wait for the header on disk, not be
    skipped as a companion whose key never came (the header would then go alone). A mass copy
    whose overflow rescan reports the header late is the same case."""
    service = _service(shm_dir, dirImportWait="1.5")
    amy = service.dropbox / "amy"
    amy.mkdir(parents=True)
    with running(service):
        data = write_file(amy / "late.ids", random.Random(25).randbytes(50_000))
        _waiting(service, data)
        with open(amy / "late.ics", "wb") as fh:
            fh.write(b"\t\nics_version\t1.0\n")
            for i in range(10):  # 3 s in all, twice dirImportWait
                fh.write(f"history\tline {i}\n".encode())
                fh.flush()
                time.sleep(0.3)
        expected = {frozenset({data, os.fsencode(amy / "late.ics")}): "amy"}
        assert wait_for(lambda: len(service.records()) >= 1, 30), service.tail()
        time.sleep(2.5)  # one more dirImportWait: a second import would show up now
    check_imports(service.records(), expected, service.state)
    assert "never arrived" not in service.text()


def test_companion_whose_key_is_on_disk_but_never_reported_is_skipped_naming_the_key(
    shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A header left open by its writer is never reported complete; its data file gives up
    after dirImportWait plus the missing-member grace, with a reason that names the header.
    In-process (the real engine, watcher and journal) to shorten the 60 s grace to 1 s."""
    monkeypatch.setattr(aggregator, "MISSING_MEMBER_GRACE", 1.0)
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    amy = dropbox / "amy"
    amy.mkdir(parents=True)
    props = {"watchDir": str(dropbox), "dirImportWait": "1", "ng.settle": "0.2", "throttleImport": "0"}
    config = load_config(overrides=[f"omero.fs.{k}={v}" for k, v in props.items()])
    imported: list[tuple[str, ...]] = []
    box = DropBox(config, lambda r: not imported.append(r.files), state_dir=state, users=UserList(["amy"]))
    box.start()
    try:
        data = os.fsdecode(write_file(amy / "held.ids", b"\0" * 5000))
        header = amy / "held.ics"
        with open(header, "wb") as fh:
            fh.write(b"\t\nics_version\t1.0\n")
            fh.flush()
            os.utime(header, (time.time() - 3600, time.time() - 3600))  # not being written
            deadline = time.monotonic() + 30
            skipped = None
            while time.monotonic() < deadline and skipped is None:
                box.step()
                rec = box.journal.file_state(data)
                skipped = rec if rec is not None and rec.state == "skipped" else None
            assert skipped is not None, "the data file never gave up waiting"
            assert "key file held.ics is on disk but was not reported complete within 2 s" in skipped.reason
            assert imported == []
        # Closed at last: the header is imported, without the data file it no longer waits for.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not imported:
            box.step()
        assert imported == [(str(header),)]
    finally:
        box.stop()
        box.shutdown(drain_timeout=10)


def test_poll_backend_on_a_share_never_imports_partial_writes_and_imports_everything_once(
    shm_dir: Path,
) -> None:
    service = _service(shm_dir, **{"ng.backend": "poll", "ng.pollInterval": "0.2", "ng.settle": "1.0"})
    dropbox = service.dropbox
    rng = random.Random(23)
    (dropbox / "amy").mkdir(parents=True)
    with running(service):
        assert "backend=poll" in service.text()
        expected = {write_fileset(dropbox / u / "exp", f"q{i}", i, rng): u for u in USERS for i in range(10)}
        # Written slowly, in pieces, with pauses shorter than the settle time: a single file
        # and the data file of a two-file fileset (whose header is complete early).
        slow = dropbox / "amy" / "slow" / "slow.tif"
        slow.parent.mkdir()
        header = write_file(dropbox / "amy" / "slow" / "pair.ics", b"\t\nics_version\t1.0\n")
        data = dropbox / "amy" / "slow" / "pair.ids"
        with open(slow, "wb") as a, open(data, "wb") as b:
            for _ in range(10):
                a.write(rng.randbytes(10_000))
                b.write(rng.randbytes(10_000))
                a.flush()
                b.flush()
                time.sleep(0.3)
        expected[_one(slow)] = "amy"
        expected[frozenset({header, os.fsencode(data)})] = "amy"
        assert wait_for(lambda: len(service.records()) >= len(expected), 60), service.tail()
        time.sleep(4)  # one more dirImportWait: a second import would show up now
    check_imports(service.records(), expected, service.state)
    got = _by_key(service.records())
    assert got[_one(slow)].sizes == (100_000,), "imported while still being written"
    pair = got[frozenset({header, os.fsencode(data)})]
    assert sorted(pair.sizes) == sorted([os.path.getsize(header), 100_000]), "imported before complete"
