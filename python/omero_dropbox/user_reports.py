"""Keeps each user's ``DROPBOX-STATUS.txt`` (and ``.json``) up to date (``omero.fs.ng.userReport``).

Every ``every`` seconds the engine thread asks :meth:`UserReports.tick`; a user's report is
rewritten only when her filesets changed in the journal or what she waits for changed, so an
idle DropBox is not written to. What the files say and how they are written safely is in
:mod:`omero_dropbox.user_report`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from omero_dropbox.at_use import FileRefused
from omero_dropbox.journal import Journal, JournalError, display_path
from omero_dropbox.omero_objects import omero_web_link
from omero_dropbox.ownership import Ownership
from omero_dropbox.states import FilesetState
from omero_dropbox.user_report import ReportEntry, ReportState, write_report

__all__ = ["UserReports", "WaitingView"]

log = logging.getLogger("omero_dropbox.user_report")

#: ``user -> [(key path, files, why, due at on the monotonic clock)]``
WaitingView = Callable[[str], list[tuple[str, int, str, float]]]

_SHOWN: dict[str, ReportState] = {
    FilesetState.WAITING: "waiting",
    FilesetState.QUEUED: "queued",
    FilesetState.IMPORTING: "importing",
    FilesetState.IMPORTED: "imported",
    FilesetState.FAILED: "failed",
}


class UserReports:
    """The reports of every user with filesets (nothing when disabled)."""

    def __init__(
        self,
        journal: Journal,
        ownership: Ownership,
        waiting: WaitingView,
        *,
        enabled: bool,
        omero_web: str | None = None,
        every: float = 10.0,
        max_entries: int = 200,
    ) -> None:
        self.journal = journal
        self.ownership = ownership
        self.waiting = waiting
        self.enabled = enabled
        self.omero_web = omero_web
        self.every = every
        self.max_entries = max_entries
        self._next = 0.0
        self._written: dict[str, object] = {}  # user -> what her last report was made from
        self._failed: set[str] = set()  # users whose last write failed (logged once)

    def tick(self, now: float, users: set[str]) -> None:
        """Rewrite the reports that changed (``now``: monotonic; ``users``: those in the pools)."""
        if not self.enabled or now < self._next:
            return
        self._next = now + self.every
        try:
            known = users | set(self.journal.users())
        except JournalError as exc:
            log.error("Cannot read the journal for the users' reports: %s", exc)
            return
        for user in sorted(known):
            try:
                self._one(user, now)
            except JournalError as exc:
                log.error("Cannot read the journal for %s's report: %s", display_path(user), exc)
                return

    def _one(self, user: str, now: float) -> None:
        waiting = self.waiting(user)
        signature = (self.journal.last_change_of_user(user), tuple((k, n, w) for k, n, w, _ in waiting))
        if self._written.get(user) == signature:
            return
        owner = self.ownership.of_user(user)
        trusted, root = str(owner.monitor.watch_dir), owner.root
        if not os.path.isdir(root):
            return
        wall = time.time()
        entries = [
            ReportEntry("waiting", key, n, wall, why, until=wall + max(0.0, due - now))
            for key, n, why, due in waiting
        ]
        records = self.journal.filesets_of_user(user, self.max_entries)
        objects = self.journal.objects_of([r.id for r in records]) if self.omero_web else {}
        unattached = self.journal.annotations_unfinished(
            r.id for r in records if r.plan and r.state == FilesetState.IMPORTED
        )
        for rec in records:
            state = _SHOWN.get(rec.state)
            if state is None:
                continue
            link = None
            if state == "imported" and self.omero_web:
                links = [omero_web_link(self.omero_web, o) for o in objects.get(rec.id, [])]
                link = next((x for x in links if x), None)
            reason = rec.last_error if state == "failed" else ""
            if rec.id in unattached:
                reason = unattached[rec.id] or "key-value pairs and tags: not attached yet"
            entries.append(ReportEntry(state, rec.key, len(rec.members), rec.updated, reason, link=link))
        try:
            write_report(user, entries, trusted=trusted, root=root, now=wall)
        except (OSError, ValueError, FileRefused) as exc:
            if user not in self._failed:
                log.warning("Cannot write the report in %s: %s", display_path(root), exc)
                self._failed.add(user)
            return
        self._failed.discard(user)
        self._written[user] = signature
