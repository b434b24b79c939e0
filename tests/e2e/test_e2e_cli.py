"""End to end through the CLI on real directories, with a recording importer standing in for OMERO.

No OMERO server can run here, so `--importer-command` runs a small script that records
its argv; everything else (watcher, grouping, journal, queue, process handling) is real.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from omero_dropbox.grouping import FilesetGrouper
from omero_dropbox.journal import INTERRUPTED_REASON, Journal
from tests.support.records import Record
from tests.support.service import Service
from tests.support.waiting import wait_for

USERS = [f"user{i:02d}" for i in range(20)]
ODD_NAMES = [
    "with spaces.tif",
    "quote'and\"double.tif",
    "new\nline.tif",
    "$(touch PWNED).tif",
    "`tick`.tif",
    "semi;colon.tif",
    "-leading-dash.tif",
]
RAW_ODD = b"caf\xe9-latin1.tif"


def _write(path: Path | bytes, data: bytes) -> None:
    p = os.fsencode(path)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as fh:
        fh.write(data)


def make_dataset(base: Path, rng: random.Random, filesets_per_user: int) -> None:
    """Mixed single- and multi-file formats under base/<user>/..., plus the traps."""
    for user in USERS:
        for i in range(filesets_per_user):
            d = base / user / f"exp{i % 7}"
            kind = i % 4
            if kind == 0:
                _write(d / f"img{i}.tif", b"II*\x00" + rng.randbytes(64))
            elif kind == 1:
                _write(d / f"cell{i}.ics", b"\t\nics_version\t1.0\nfilename\tcell\n")
                _write(d / f"cell{i}.ids", rng.randbytes(128))
            elif kind == 2:
                _write(d / f"brain{i}.hdr", b"\x5c\x01\x00\x00" + bytes(344))
                _write(d / f"brain{i}.img", rng.randbytes(256))
            else:
                _write(d / f"deconv{i}.dv", rng.randbytes(1024))
                _write(d / f"deconv{i}.dv.log", b"log\n")
        for name in ODD_NAMES:
            _write(base / user / "odd" / name, rng.randbytes(32))
        _write(os.fsencode(base / user / "odd") + b"/" + RAW_ODD, rng.randbytes(32))
    for ghost in ("ghost", "nobody-here"):
        _write(base / ghost / "g.tif", b"ghost")
    _write(base / "in-the-root.tif", b"root")


def expected_filesets(base: Path) -> dict[tuple[str, ...], str]:
    """{sorted member files: user} for every importable fileset of the known users."""
    out: dict[tuple[str, ...], str] = {}
    grouper = FilesetGrouper(None)
    for user in USERS:
        files = []
        for dirpath, _, names in os.walk(os.fsencode(base / user)):
            files.extend(os.fsdecode(os.path.join(dirpath, n)) for n in names)
        for fs in grouper.group(files).filesets:
            out[tuple(sorted(fs.files))] = user
    return out


def relocate(expected: dict[tuple[str, ...], str], src: Path, dst: Path) -> dict[tuple[str, ...], str]:
    """The same filesets, as they are once copied from `src` to `dst`."""
    return {tuple(f.replace(str(src), str(dst), 1) for f in k): u for k, u in expected.items()}


#: The harness defaults, with longer waits and four imports at a time for thousands of filesets.
PROPS = {"dirImportWait": "3", "ng.completeWait": "1", "ng.maxConcurrentImports": "4"}


def files_of(record: Record) -> tuple[str, ...]:
    return tuple(sorted(os.fsdecode(f) for f in record.files))


def _check(records: list[Record], expected: dict[tuple[str, ...], str], state: Path) -> None:
    got = Counter(files_of(r) for r in records)
    users = {files_of(r): r.user for r in records}
    missing = set(expected) - set(got)
    extra = set(got) - set(expected)
    assert not missing, f"{len(missing)} filesets never imported, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} unexpected imports, e.g. {sorted(extra)[:3]}"
    wrong_user = {k for k, u in users.items() if expected[k] != u}
    assert not wrong_user, f"imported as the wrong user: {sorted(wrong_user)[:3]}"
    twice = [k for k, n in got.items() if n > 1]
    if twice:
        # Only an import that was running when the process died may run again, and the journal says so.
        fileset_ids = {files_of(r): r.fileset for r in records}
        with Journal(state) as journal:
            for k in twice:
                reasons = [h.reason for h in journal.history_of(str(fileset_ids[k]))]
                assert INTERRUPTED_REASON in reasons, f"imported twice without a crash: {k} {reasons}"
                assert got[k] == 2


@pytest.mark.slow
def test_cli_imports_every_fileset_once_as_the_right_user_with_recording_importer_instead_of_omero(
    shm_dir: Path,
) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    dropbox.mkdir()
    staging = shm_dir / "staging"
    make_dataset(staging, random.Random(1), filesets_per_user=60)
    expected = expected_filesets(staging)
    assert len(expected) > 1000
    service = Service(shm_dir, dropbox, state, users=USERS, props=PROPS)
    service.start()
    try:
        # Copy at full speed: move each user's tree in while the service runs, in parallel.
        def copy(user: str) -> None:
            subprocess.run(["cp", "-r", str(staging / user), str(dropbox / user)], check=True)

        threads = [threading.Thread(target=copy, args=(u,)) for u in [*USERS, "ghost", "nobody-here"]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        subprocess.run(["cp", str(staging / "in-the-root.tif"), str(dropbox)], check=True)
        expected_here = relocate(expected, staging, dropbox)
        assert wait_for(lambda: len(service.records()) >= len(expected_here), 240, 0.5), service.tail()
        time.sleep(4)  # longer than dirImportWait: anything imported twice would show up now
    finally:
        rc = service.stop()
    assert rc == 0, service.tail()
    _check(service.records(), expected_here, state)
    log = service.log.read_bytes()
    assert b"user unknown: no OMERO user named 'ghost'" in log
    assert b"outside user directories" in log
    assert not (Path.cwd() / "PWNED").exists()
    out = subprocess.run(
        [sys.executable, "-m", "omero_dropbox.cli", "status", "--state-dir", str(state), "--json"],
        capture_output=True,
        check=True,
    )
    status = json.loads(out.stdout)
    imported = sum(c.get("imported", 0) for c in status["filesets"].values())
    assert imported == len(expected_here)


@pytest.mark.slow
def test_cli_kill_9_during_copy_then_restart_loses_nothing_with_recording_importer_instead_of_omero(
    shm_dir: Path,
) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    dropbox.mkdir()
    staging = shm_dir / "staging"
    make_dataset(staging, random.Random(2), filesets_per_user=25)
    expected = expected_filesets(staging)
    expected_here = relocate(expected, staging, dropbox)
    service = Service(shm_dir, dropbox, state, users=USERS, props=PROPS, env={"IMPORT_DELAY": "0.05"})
    service.start()
    half = len(USERS) // 2
    for user in USERS[:half]:
        subprocess.run(["cp", "-r", str(staging / user), str(dropbox / user)], check=True)
    # Kill in the middle: some filesets imported, some importing, some waiting, some not yet copied.
    assert wait_for(lambda: len(service.records()) >= 20, 120, 0.1), service.tail()
    service.kill9()
    for user in USERS[half:]:
        subprocess.run(["cp", "-r", str(staging / user), str(dropbox / user)], check=True)
    service.start()
    try:
        assert wait_for(
            lambda: len({files_of(r) for r in service.records()}) >= len(expected_here),
            240,
            0.5,
        ), service.tail()
        time.sleep(4)
    finally:
        rc = service.stop()
    assert rc == 0, service.tail()
    _check(service.records(), expected_here, state)
