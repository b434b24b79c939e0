"""A journal with filesets in it, and an in-process importer that plays scripted outcomes."""

from __future__ import annotations

import threading
import time

from omero_dropbox.importers import ImportRequest, ImportResult
from omero_dropbox.journal import FileIdentity, Journal


def add(j: Journal, fid: str, user: str = "amy") -> str:
    key = f"/drop/{user}/{fid}.tif"
    j.record_file(key, user, FileIdentity(1, abs(hash(key)), 1, fid))
    j.upsert_fileset(fid, user, key, [key], "Fake")
    return fid


class Recorder:
    """A callable importer that records calls and plays scripted outcomes."""

    def __init__(
        self,
        outcomes: dict[str, list[ImportResult | Exception]] | None = None,
        hold: float = 0.0,
    ) -> None:
        self.outcomes = outcomes or {}
        self.hold = hold
        self.lock = threading.Lock()
        self.calls: list[tuple[str, float]] = []
        self.active: set[str] = set()
        self.overlap_same_id = False

    def __call__(self, req: ImportRequest) -> ImportResult:
        with self.lock:
            self.calls.append((req.fileset_id, time.monotonic()))
            if req.fileset_id in self.active:
                self.overlap_same_id = True
            self.active.add(req.fileset_id)
            script = self.outcomes.get(req.fileset_id)
            outcome = script.pop(0) if script else ImportResult.success()
        try:
            if self.hold:
                time.sleep(self.hold)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        finally:
            with self.lock:
                self.active.discard(req.fileset_id)

    @property
    def order(self) -> list[str]:
        return [c[0] for c in self.calls]
