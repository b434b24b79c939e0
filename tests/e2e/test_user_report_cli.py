"""omero.fs.ng.userReport through the real CLI (the importer is the RECORDER stand-in for
OMERO): the scientist's DROPBOX-STATUS.txt/.json shows imported, waiting and failed
filesets, names no other user's files, and is never imported itself."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.filesets import write_ics
from tests.support.service import Service
from tests.support.waiting import wait_for


def _report(folder: Path) -> dict[str, object]:
    try:
        doc = json.loads((folder / "DROPBOX-STATUS.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _states(folder: Path) -> dict[str, str]:
    rows = _report(folder).get("filesets", [])
    return {str(r["fileset"]): str(r["state"]) for r in rows} if isinstance(rows, list) else {}


def test_the_report_tells_the_scientist_what_happened_to_each_fileset(tmp_path: Path) -> None:
    s = Service(
        tmp_path,
        tmp_path / "DropBox",
        tmp_path / "state",
        # A lone .ics waits dirImportWait for its .ids; complete pairs go after completeWait.
        props={"dirImportWait": "600", "ng.userReport": "true", "ng.maxAttempts": "1"},
        env={"FAULT_MODE": "fail", "FAULT_MATCH": "bad"},
    )
    amy, zak = s.dropbox / "amy", s.dropbox / "zak"
    for d in (amy / "run1", amy / "run2", amy / "run3", zak / "secret-project"):
        d.mkdir(parents=True)
    with s:
        write_ics(amy / "run1", "cells")
        lonely = write_ics(amy / "run2", "lonely")
        [p.unlink() for p in lonely if p.suffix == ".ids"]
        write_ics(amy / "run3", "bad")
        write_ics(zak / "secret-project", "zak")
        expected = {"run1/cells.ics": "imported", "run2/lonely.ics": "waiting", "run3/bad.ics": "failed"}
        assert wait_for(lambda: _states(amy) == expected, 90), (_report(amy), s.tail())
        text = (amy / "DROPBOX-STATUS.txt").read_text()
        assert "waiting for lonely.ids" in text
        assert "[FAILED] run3/bad.ics" in text and "cannot read plane 3" in text
        assert "zak" not in text and "secret" not in json.dumps(_report(amy))
        assert wait_for(lambda: _states(zak) == {"secret-project/zak.ics": "imported"}, 60)
    recorded = [f for r in s.records() for f in r.files]
    assert recorded and not any(b"DROPBOX-STATUS" in f for f in recorded)
    assert "DROPBOX-STATUS" not in s.text()  # not even logged as skipped
