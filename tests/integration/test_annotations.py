"""Key-value pairs and tags attached after the import: durable, retried, never re-importing.

A real journal; the annotator stands in for OMERO (no server can run here), so the tests that
use it say ``fake_omero_server``. What reaches a real server is omero-py's
(:mod:`omero_dropbox.ice.omero_steps`), not exercised here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from omero_dropbox.annotations import AnnotationError, Annotations
from omero_dropbox.folder_settings import ImportPlan
from omero_dropbox.identity import file_identity, fileset_id
from omero_dropbox.journal import Journal
from tests.support.waiting import wait_for

PLAN = ImportPlan(dataset="D", target="Dataset:name:D", key_values=(("Stain", "DAPI"),), tags=("confocal",))


class Annotator:
    """Records what it was asked to attach; fails as told first."""

    def __init__(self, failures: Sequence[Exception] = ()) -> None:
        self.failures = list(failures)
        self.attached: list[tuple[str, ImportPlan, tuple[str, ...]]] = []
        self.lock = threading.Lock()

    def annotate(self, user: str, plan: ImportPlan, objects: Sequence[str]) -> None:
        with self.lock:
            if self.failures:
                raise self.failures.pop(0)
            self.attached.append((user, plan, tuple(objects)))


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state")
    yield j
    j.close()


def imported(j: Journal, tmp_path: Path, name: str, objects: Sequence[str] = ("Image:7",)) -> str:
    """A fileset journaled with ``PLAN`` and imported (``objects`` as the importer reported)."""
    path = tmp_path / f"{name}.tif"
    path.write_bytes(os.urandom(64))
    ident = file_identity(str(path))
    j.record_file(str(path), "amy", ident)
    fid = fileset_id([ident])
    j.upsert_fileset(fid, "amy", str(path), [str(path)], "TIFF")
    j.enqueue(fid, "queued", plan=PLAN.to_json())
    j.transition(fid, "importing")
    j.transition(fid, "imported")
    j.record_objects(fid, list(objects))
    return fid


def test_annotations_are_attached_once_to_the_imported_objects_fake_omero_server(
    journal: Journal, tmp_path: Path
) -> None:
    fid = imported(journal, tmp_path, "a", ["Image:7", "Image:8"])
    annotator = Annotator()
    duty = Annotations(journal, annotator, retry_every=0.1)
    duty.imported(fid, PLAN)
    assert annotator.attached == [("amy", PLAN, ("Image:7", "Image:8"))]
    assert journal.annotations_state(fid) == ("done", "attached 1 key-value pair and 1 tag")
    duty.imported(fid, PLAN)  # told twice (a restart between): attached once
    duty.start()
    try:
        assert not wait_for(lambda: len(annotator.attached) > 1, 0.5)
    finally:
        duty.stop()
    reasons = [h.reason for h in journal.history_of(fid)]
    assert "annotations: attached 1 key-value pair and 1 tag" in reasons


def test_omero_down_keeps_them_pending_and_they_are_attached_when_it_is_back_fake_omero_server(
    journal: Journal, tmp_path: Path
) -> None:
    fid = imported(journal, tmp_path, "a")
    annotator = Annotator([ConnectionRefusedError("server down"), ConnectionRefusedError("server down")])
    duty = Annotations(journal, annotator, retry_every=0.1)
    duty.imported(fid, PLAN)
    state, reason = journal.annotations_state(fid) or ("", "")
    assert state == "pending" and "server down" in reason and "tried again in 0.1 s" in reason
    duty.start()
    try:
        assert wait_for(lambda: (journal.annotations_state(fid) or ("",))[0] == "done", 10)
    finally:
        duty.stop()
    assert len(annotator.attached) == 1
    assert journal.fileset_by_id(fid).state == "imported"  # type: ignore[union-attr]  # never re-imported


def test_pending_annotations_survive_a_restart(tmp_path: Path) -> None:
    with Journal(tmp_path / "state") as j:
        fid = imported(j, tmp_path, "a")
        assert j.annotations_begin(fid)  # the service stopped before it could attach them
    with Journal(tmp_path / "state") as j:
        annotator = Annotator()
        duty = Annotations(j, annotator, retry_every=0.1)
        duty.start()
        try:
            assert wait_for(lambda: (j.annotations_state(fid) or ("",))[0] == "done", 10)
        finally:
            duty.stop()
        assert [objs for _u, _p, objs in annotator.attached] == [("Image:7",)]


def test_a_final_failure_is_kept_with_the_reason_until_the_operator_retries_fake_omero_server(
    journal: Journal, tmp_path: Path
) -> None:
    fid = imported(journal, tmp_path, "a")
    annotator = Annotator([AnnotationError("tag 'confocal' belongs to another group", final=True)])
    duty = Annotations(journal, annotator, retry_every=0.1)
    duty.imported(fid, PLAN)
    state, reason = journal.annotations_state(fid) or ("", "")
    assert state == "failed" and "another group" in reason and "omero-dropbox retry" in reason
    duty.start()
    try:
        assert not wait_for(lambda: bool(annotator.attached), 0.5)  # not retried by itself
        assert journal.annotations_retry(fid, "operator")
        assert not journal.annotations_retry(fid, "operator")  # nothing failed any more
        assert wait_for(lambda: (journal.annotations_state(fid) or ("",))[0] == "done", 10)
    finally:
        duty.stop()
    assert any("retry requested by operator" in h.reason for h in journal.history_of(fid))


def test_transient_failures_give_up_after_the_attempts_allowed_fake_omero_server(
    journal: Journal, tmp_path: Path
) -> None:
    fid = imported(journal, tmp_path, "a")
    annotator = Annotator([TimeoutError("no reply")] * 3)
    duty = Annotations(journal, annotator, retry_every=0.05, max_attempts=3)
    duty.imported(fid, PLAN)
    duty.start()
    try:
        assert wait_for(lambda: (journal.annotations_state(fid) or ("",))[0] == "failed", 10)
    finally:
        duty.stop()
    assert (
        not annotator.attached and "TimeoutError: no reply" in (journal.annotations_state(fid) or ("", ""))[1]
    )


def test_nothing_to_attach_to_is_a_final_failure_that_says_what_to_do(
    journal: Journal, tmp_path: Path
) -> None:
    fid = imported(journal, tmp_path, "a", objects=[])
    duty = Annotations(journal, Annotator())
    duty.imported(fid, PLAN)
    state, reason = journal.annotations_state(fid) or ("", "")
    assert state == "failed" and "no imported objects" in reason and "OMERO.web" in reason


def test_without_an_annotator_or_anything_to_attach_nothing_is_recorded(
    journal: Journal, tmp_path: Path
) -> None:
    fid = imported(journal, tmp_path, "a")
    Annotations(journal, None).imported(fid, PLAN)
    Annotations(journal, Annotator()).imported(fid, ImportPlan(dataset="D"))
    assert journal.annotations_state(fid) is None
