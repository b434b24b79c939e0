"""A watcher node's link to the shared queue: its journaled filesets go in, their outcomes come back.

With ``run --queue postgresql://…`` the node journals files and filesets in its own SQLite
journal as always (``queued`` there once due), but imports happen wherever a worker claims
them from the shared queue.  :class:`QueueSync` is the one thread that keeps the two in step,
every :data:`EVERY` s (and when woken):

* a fileset ``queued`` here and unknown to the shared queue is added there
  (``add_fileset``, idempotent on the fileset id), so nothing journaled while the database
  was away is lost;
* the shared state of every unfinished fileset of this node is read in one query and mirrored
  here: ``importing`` (claimed), back to ``queued`` (a retry or a reclaimed claim),
  ``imported`` or ``failed``, so that ``status``, the user report, after-import actions and
  annotations work as on a single host;
* an operator's retry here (``omero-dropbox retry``, the status page) of a fileset that failed
  in the shared queue queues it there again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from omero_dropbox.journal import FilesetRecord, InvalidTransitionError, Journal, JournalError
from omero_dropbox.pg_store import RemoteState
from omero_dropbox.states import FilesetState

__all__ = ["EVERY", "QueueSync", "SharedStore"]

log = logging.getLogger("omero_dropbox.queue_sync")

#: Seconds between two looks at the shared queue.
EVERY = 2.0

_Q, _I = FilesetState.QUEUED, FilesetState.IMPORTING
_T = TypeVar("_T")


class _SharedDown(Exception):
    """The shared queue failed (not the journal): one message per outage."""

    def __init__(self, error: JournalError) -> None:
        super().__init__(str(error))
        self.error = error


class SharedStore(Protocol):
    """What the sync asks of the shared queue (:class:`~omero_dropbox.pg_store.PgQueueStore`)."""

    def add_fileset(
        self,
        fileset_id: str,
        user: str,
        key: str,
        members: list[str],
        fmt: str,
        *,
        plan: str | None = None,
        queue: bool = False,
        reason: str = ...,
    ) -> FilesetRecord: ...

    def enqueue(self, fileset_id: str, reason: str, *, requeue: bool = False) -> FilesetState: ...

    def outcomes(self, fileset_ids: list[str]) -> dict[str, RemoteState]: ...


class QueueSync:
    """Keeps ``journal``'s unfinished filesets in step with ``store``; see the module docstring.

    ``on_imported(fileset_id, objects)`` runs after a fileset is recorded imported here, with
    the OMERO objects its worker noted (annotations, after-import actions).
    """

    def __init__(
        self,
        journal: Journal,
        store: SharedStore,
        on_imported: Callable[[str, Sequence[str]], None],
        *,
        every: float = EVERY,
    ) -> None:
        self.journal = journal
        self.store = store
        self.on_imported = on_imported
        self.every = every
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage_since: float | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="queue-sync", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Something was journaled (committed) here: send it now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Stop, after one last pass (what was journaled just before the stop is sent)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30.0)

    def _run(self) -> None:
        while True:
            self._wake.clear()
            stopping = self._stop.is_set()
            self.step()
            if stopping:
                return
            self._wake.wait(self.every)

    def step(self) -> None:
        """One pass; errors are logged (once per outage for the shared queue), never raised."""
        try:
            unfinished = self.journal.filesets(_Q) + self.journal.filesets(_I)
        except JournalError as e:
            log.error(
                "Cannot read the journal's unfinished filesets: %s; trying again in %g s", e, self.every
            )
            return
        if not unfinished:
            return
        try:
            remote = self._shared(self.store.outcomes, [r.id for r in unfinished])
            for rec in unfinished:
                self._one(rec, remote.get(rec.id))
        except _SharedDown as e:
            self._unreachable(e.error)
            return
        except JournalError as e:
            log.error(
                "Cannot record a shared outcome in the journal: %s; trying again in %g s", e, self.every
            )
            return
        self._answered()

    @staticmethod
    def _shared(call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``call`` on the shared store, its errors told apart from the journal's."""
        try:
            return call(*args, **kwargs)
        except JournalError as e:
            raise _SharedDown(e) from e

    def _one(self, rec: FilesetRecord, remote: RemoteState | None) -> None:
        fid = rec.id
        if remote is None:
            if rec.state == _I:  # the shared row is gone (database replaced): queue it again
                self.journal.transition(fid, _Q, reason="not in the shared queue any more; queued again")
            self._shared(
                self.store.add_fileset,
                fid,
                rec.user,
                rec.key,
                list(rec.members),
                rec.format,
                plan=rec.plan,
                queue=True,
                reason="queued for import by a watcher node",
            )
            log.debug("Fileset %s sent to the shared queue", fid)
            return
        try:
            self._mirror(rec, remote)
        except InvalidTransitionError as e:
            log.warning("Fileset %s: cannot mirror the shared state %s here: %s", fid, remote.state, e)

    def _mirror(self, rec: FilesetRecord, remote: RemoteState) -> None:
        fid, state = rec.id, remote.state
        by = f" by {remote.claimed_by}" if remote.claimed_by else ""
        if state == FilesetState.WAITING:
            self._shared(self.store.enqueue, fid, "queued for import by a watcher node")
        elif state == _Q:
            if rec.state == _I:
                self.journal.transition(
                    fid,
                    _Q,
                    reason=remote.last_error or "queued again in the shared queue",
                    next_attempt_at=remote.next_attempt_at,
                )
        elif state == _I:
            if rec.state == _Q:
                self.journal.transition(fid, _I, reason=f"claimed{by}")
        elif state == FilesetState.IMPORTED:
            self._claimed(rec, by)
            self.journal.transition(fid, FilesetState.IMPORTED, reason=f"imported{by}")
            self.on_imported(fid, remote.objects)
        elif rec.state == _Q and rec.finished is not None:
            # Failed or skipped there, queued here after an earlier end: an operator's retry.
            self._shared(self.store.enqueue, fid, "retry requested on the watcher node", requeue=True)
            log.info("Fileset %s queued again in the shared queue (retry requested here)", fid)
        else:  # failed or skipped there
            self._claimed(rec, by)
            reason = remote.last_error or f"{state} in the shared queue"
            self.journal.transition(fid, FilesetState.FAILED, reason=reason)

    def _claimed(self, rec: FilesetRecord, by: str) -> None:
        # The local state machine goes through importing to an end, as on a single host.
        if rec.state == _Q:
            self.journal.transition(rec.id, _I, reason=f"claimed{by}")

    def _unreachable(self, error: JournalError) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.error(
                "Cannot reach the shared queue: %s. Due filesets stay queued in this node's journal "
                "and are sent when it answers; outcomes are learnt then. Trying again every %g s",
                error,
                self.every,
            )
        else:
            log.debug("Still cannot reach the shared queue: %s", error)

    def _answered(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "The shared queue answers again after %.0f s; queued filesets are sent, outcomes learnt",
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None
