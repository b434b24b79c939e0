"""Runs the after-import action (``omero.fs.ng.afterImport``) of every imported fileset, durably.

The action is noted in the journal (``pending``) as soon as the import is recorded, run
right away on the import worker's thread, and marked ``done`` or ``partial`` (with the files
left in place and why). A pending action, one cut off by a crash or one that failed (a full
or unwritable area), is run again at start-up and every ``retry_every`` seconds, by one
background thread. The file work itself is in :mod:`omero_dropbox.after_import`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from omero_dropbox.after_import import FileOutcome, apply_after_import
from omero_dropbox.choices import AfterImport
from omero_dropbox.fileset_duty import FilesetDuty
from omero_dropbox.identity import FileIdentity
from omero_dropbox.journal import IMPORTED, Journal, display_path
from omero_dropbox.ownership import NotOwned, Ownership

__all__ = ["AfterImports"]

log = logging.getLogger("omero_dropbox.after_import")


def _summary(outcomes: list[FileOutcome]) -> str:
    done = [o for o in outcomes if o.done]
    left = [o for o in outcomes if not o.done]
    parts = []
    if done:
        parts.append(f"{len(done)} file{'s' if len(done) != 1 else ''} {done[0].detail.split(' ')[0]}")
    for o in left[:3]:
        parts.append(f"{display_path(o.path)} {o.detail}")
    if len(left) > 3:
        parts.append(f"and {len(left) - 3} more left in place")
    return "; ".join(parts) or "no files"


class AfterImports(FilesetDuty):
    """The after-import duty of one service (nothing to do for ``keep``)."""

    name = "after-import"

    def __init__(
        self,
        journal: Journal,
        ownership: Ownership,
        action: AfterImport,
        area: Path | None,
        *,
        retry_every: float = 300.0,
    ) -> None:
        super().__init__(log, retry_every)
        self.journal = journal
        self.ownership = ownership
        self.action = action
        self.area = None if area is None else str(area)
        self.retry_every = retry_every

    @property
    def active(self) -> bool:
        return self.action != "keep"

    def imported(self, fileset_id: str) -> None:
        """A fileset's import was just journaled: note its action, then run it."""
        if not self.active:
            return
        if self.journal.after_import_begin(fileset_id, self.action):
            self.run(fileset_id)

    def due(self) -> Iterable[str]:
        """Every pending action: a failed one is retried each ``retry_every`` seconds."""
        return [fid for fid, _action, _attempts in self.journal.after_import_pending()]

    def _run(self, fid: str) -> None:
        rec = self.journal.fileset_by_id(fid)
        if rec is None or rec.state != IMPORTED:
            self.journal.after_import_end(
                fid, done=False, partial=True, reason="the fileset is no longer imported; files kept"
            )
            return
        files: list[tuple[str, FileIdentity]] = []
        for path in rec.members:
            record = self.journal.file_state(path)
            if record is not None and record.identity is not None:
                files.append((path, record.identity))
        owner = self.ownership.owner(rec.key)
        if isinstance(owner, NotOwned):
            self.journal.after_import_end(fid, done=False, partial=True, reason=f"files kept: {owner.reason}")
            return
        try:
            outcomes = apply_after_import(
                self.action,
                fid,
                files,
                trusted=str(owner.monitor.watch_dir),
                root=owner.root,
                area=self.area,
            )
        except (OSError, ValueError) as exc:
            reason = f"{self.action} failed ({exc}); tried again in {self.retry_every:g} s"
            log.warning("After-import action of %s: %s", display_path(rec.key), reason)
            self.journal.after_import_end(fid, done=False, partial=False, reason=reason)
            return
        left = [o for o in outcomes if not o.done]
        summary = _summary(outcomes)
        (log.warning if left else log.info)("After import of %s: %s", display_path(rec.key), summary)
        self.journal.after_import_end(fid, done=not left, partial=bool(left), reason=summary)
