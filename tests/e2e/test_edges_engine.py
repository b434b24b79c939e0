"""The core promise at its edges: rewrites, incomplete filesets, re-runs after a crash, forget.

Each test drives the real ``omero-dropbox run`` process on real directories; a recording
program stands in for the OMERO importer (no OMERO server runs here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.faults import file_reason, write_file
from tests.support.service import CLI, Service, running
from tests.support.waiting import wait_for

USERS = ["amy", "zak"]


def _imports_of(service: Service, path: Path) -> list[int]:
    """The sizes ``path`` had in each import that included it."""
    p = os.fsencode(path)
    return [r.sizes[r.files.index(p)] for r in service.records() if p in r.files]


def _count(service: Service, path: Path) -> int:
    return len(_imports_of(service, path))


def _barrier(service: Service, dropbox: Path, name: str) -> None:
    """Once this later file of amy's is imported, everything amy wrote before was handled."""
    marker = write_file(dropbox / "amy" / "barrier" / name, b"II*\x00" + name.encode())
    assert wait_for(lambda: any(marker in r.files for r in service.records()), 60), service.tail()


def test_a_same_size_rewrite_with_new_content_is_imported_and_a_touch_is_not(shm_dir: Path) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    service = Service(shm_dir, dropbox, state, users=USERS, props={"dirImportWait": "1"})
    with running(service):
        image = Path(os.fsdecode(write_file(dropbox / "amy" / "cells.tif", b"II*\x00version-1")))
        assert wait_for(lambda: _count(service, image) == 1, 60), service.tail()
        os.utime(image)  # touch: same content
        _barrier(service, dropbox, "b1.tif")
        assert _count(service, image) == 1
        with open(image, "r+b") as fh:  # the same size, new content, in place (same inode)
            fh.write(b"II*\x00version-2")
        assert wait_for(lambda: _count(service, image) == 2, 60), service.tail()
        assert "rewritten in place with new content" in service.text()
        _barrier(service, dropbox, "b2.tif")
    assert _count(service, image) == 2


def test_a_failed_file_fixed_or_copied_again_is_imported_again(shm_dir: Path) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    service = Service(
        shm_dir,
        dropbox,
        state,
        users=USERS,
        props={"dirImportWait": "1"},
        env={"FAULT_MODE": "fail", "FAULT_MATCH": "bad", "FAULT_RC": "65"},  # permanent failure
    )
    with running(service):
        bad = Path(os.fsdecode(write_file(dropbox / "amy" / "bad.tif", b"II*\x00broken!!")))
        assert wait_for(lambda: (file_reason(state, bad) or ("", ""))[0] == "failed", 60), service.tail()
        # The user fixes the file: the same size, other bytes, copied over the old one.
        write_file(bad, b"II*\x00repaired")
        assert wait_for(lambda: (file_reason(state, bad) or ("", ""))[0] == "failed", 60)
        runs = service.record.parent / "imports.jsonl.attempts"
        assert wait_for(lambda: len(list(runs.iterdir())) == 2, 60), service.tail()
        # And copies it once more with the same content: that asks for a retry.
        write_file(bad, b"II*\x00repaired")
        assert wait_for(lambda: "was written again after its import failed" in service.text(), 60)
        assert wait_for(lambda: sum(p.stat().st_size for p in runs.iterdir()) == 3, 60), service.tail()


def test_an_incomplete_fileset_says_so_and_a_late_member_is_reported_against_it(shm_dir: Path) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    service = Service(shm_dir, dropbox, state, users=USERS, props={"dirImportWait": "1"})
    with running(service):
        header = Path(os.fsdecode(write_file(dropbox / "amy" / "run" / "cell.ics", b"ics_version\t1.0\n")))
        assert wait_for(lambda: _count(service, header) == 1, 60), service.tail()
        line = next(ln for ln in service.text().splitlines() if "cell.ics" in ln and "queued" in ln)
        assert "is incomplete" in line and "cell.ids" in line, line
        late = Path(os.fsdecode(write_file(dropbox / "amy" / "run" / "cell.ids", b"\x00" * 64)))
        assert wait_for(lambda: (file_reason(state, late) or ("", ""))[0] == "skipped", 60), service.tail()
    reason = (file_reason(state, late) or ("", ""))[1]
    assert "arrived after its fileset" in reason and "cell.ics" in reason, reason
    assert _count(service, late) == 0


RECORD_ENV = textwrap.dedent(
    """
    import json, os, sys, time
    with open(os.environ["ENV_RECORD"], "a") as fh:
        fh.write(json.dumps({"argv": sys.argv[1:], "attempt": os.environ.get("OMERO_DROPBOX_ATTEMPT"),
                             "interrupted": os.environ.get("OMERO_DROPBOX_INTERRUPTED")}) + "\\n")
    time.sleep(float(os.environ.get("SLEEP", "0")))
    """
)


def test_a_rerun_after_kill_9_tells_the_importer_it_was_interrupted(shm_dir: Path) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    script, record = shm_dir / "env-importer.py", shm_dir / "env.jsonl"
    script.write_text(RECORD_ENV)
    (dropbox / "amy").mkdir(parents=True)
    argv = [
        *CLI, "run", "--state-dir", str(state), "--users", "amy",
        "-D", f"omero.fs.watchDir={dropbox}", "-D", "omero.fs.dirImportWait=1",
        "-D", "omero.fs.ng.completeWait=0.5", "-D", "omero.fs.throttleImport=0",
        "--importer-command", f"{sys.executable} {script} {{attempt}} {{interrupted}} -- {{files}}",
    ]  # fmt: skip

    def entries() -> list[dict[str, object]]:
        if not record.exists():
            return []
        return [json.loads(ln) for ln in record.read_text().splitlines() if ln.endswith("}")]

    env = dict(os.environ, ENV_RECORD=str(record), SLEEP="30")
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        write_file(dropbox / "amy" / "slow.tif", b"II*\x00amy")
        assert wait_for(lambda: len(entries()) == 1, 60)
    finally:
        first.kill()
        first.wait()
    env["SLEEP"] = "0"
    second = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(entries()) == 2, 60)
    finally:
        second.terminate()
        assert second.wait(60) == 0
    got = entries()
    assert got[0]["argv"][:2] == ["1", "0"] and got[0]["interrupted"] == "0", got
    assert got[1]["argv"][:2] == ["2", "1"] and got[1]["interrupted"] == "1" and got[1]["attempt"] == "2", got


def test_forget_then_restart_imports_nothing_until_a_copy_is_dropped_again(shm_dir: Path) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    service = Service(shm_dir, dropbox, state, users=USERS, props={"dirImportWait": "1"})
    old = dropbox / "amy" / "old"
    images = [Path(os.fsdecode(write_file(old / f"{i}.tif", b"II*\x00%d" % i))) for i in range(5)]
    with running(service):
        assert wait_for(lambda: all(_count(service, p) == 1 for p in images), 60), service.tail()
    forgot = subprocess.run(
        [*CLI, "forget", "--state-dir", str(state), str(dropbox / "amy" / "old")],
        capture_output=True,
        text=True,
    )
    assert forgot.returncode == 0, forgot.stderr
    with running(service):  # the restart's scan finds all five again
        _barrier(service, dropbox, "after-restart.tif")
        assert all(_count(service, p) == 1 for p in images), [_count(service, p) for p in images]
        assert "forgotten by an operator and not written since" in service.text()
        write_file(images[0], b"II*\x000")  # the user drops a copy again
        assert wait_for(lambda: _count(service, images[0]) == 2, 60), service.tail()
        _barrier(service, dropbox, "end.tif")
    assert [_count(service, p) for p in images] == [2, 1, 1, 1, 1]


def test_with_the_bioformats_oracle_a_format_the_rule_table_cannot_decide_is_one_import(
    shm_dir: Path,
) -> None:
    """A Hitachi SEM .txt names its pixel file in its content: without the oracle the .tif is
    imported alone (and the .txt skipped); with ``omero.fs.ng.bioformatsOracle`` they are
    Bio-Formats' one fileset, keyed by the .txt (real Java, real Bio-Formats 7.3.1)."""
    from omero_dropbox.grouping.oracle import BioFormatsOracle
    from tests.support.filesets import write_tiff

    probe = BioFormatsOracle()
    if BioFormatsOracle.unavailable_reason(probe.jar, probe.java):
        pytest.skip("no Java or Bio-Formats jar here (CI installs both)")
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    props = {"dirImportWait": "1", "ng.bioformatsOracle": "true"}
    service = Service(shm_dir, dropbox, state, users=USERS, props=props)
    with running(service):
        folder = dropbox / "amy" / "sem"
        folder.mkdir(parents=True)
        tif = write_tiff(folder / "s1.tif")
        txt = folder / "s1.txt"
        txt.write_text("[SemImageFile]\r\nSampleName=s\r\nImageName=s1.tif\r\nDataSize=4x3\r\n")
        assert wait_for(lambda: _count(service, txt) == 1, 120), service.tail()
    imports = [r for r in service.records() if os.fsencode(txt) in r.files]
    assert len(imports) == 1 and set(imports[0].files) == {os.fsencode(txt), os.fsencode(tif)}, imports
    assert _count(service, tif) == 1
