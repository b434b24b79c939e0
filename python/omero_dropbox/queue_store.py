"""The import queue's store: the narrow interface the worker pool (``ImportQueue``) needs.

The queue *is* the store: a fileset is in the queue while its state is ``queued``, and a
worker takes one with :meth:`QueueStore.claim_next`, which decides in one transaction whose
turn it is (per-user round robin), whether its back-off time has come and whether another
import may start at all.  Nothing is copied into memory, so every process sharing the store
sees the same queue.

A claim carries a fencing token: :meth:`QueueStore.finish` records a result only for the
fileset's current claim, so a worker that lost its claim (its fileset was recovered after a
restart and claimed again) cannot overwrite the newer outcome.

:class:`~omero_dropbox.journal.Journal` implements it on SQLite.  A PostgreSQL store (claims
with ``FOR UPDATE SKIP LOCKED``, leases kept alive by heartbeats, the same fencing tokens)
implements the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from omero_dropbox.journal import FilesetRecord
    from omero_dropbox.states import FilesetState

__all__ = ["ROLES", "UNCAPPED", "Claim", "QueueStore", "SharedQueue"]

#: ``max_running`` on a shared queue when no global cap is asked for: each process's own
#: concurrency bounds it.
UNCAPPED = 1_000_000

#: ``run --role``: ``all`` watches, journals and imports; ``watcher`` only watches and journals.
ROLES = ("all", "watcher")


@dataclass(frozen=True)
class SharedQueue:
    """``run --queue``: the import queue is in the PostgreSQL database ``dsn``, shared by hosts.

    ``role``: one of :data:`ROLES`.  ``lease``: seconds a claim stays this node's workers'
    without a heartbeat.  ``max_running``: global cap on running imports (None: none).
    """

    dsn: str
    role: str = "all"
    lease: float = 60.0
    max_running: int | None = None
    worker_name: str = ""


@dataclass(frozen=True)
class Claim:
    """A fileset a worker may import now: its record (already ``importing``, the attempt
    counted) and the fencing token its result must carry."""

    record: FilesetRecord
    token: int

    @property
    def id(self) -> str:
        return self.record.id


class QueueStore(Protocol):
    """What :class:`~omero_dropbox.import_queue.ImportQueue` asks of the store."""

    def enqueue(self, fileset_id: str, reason: str, *, requeue: bool = False) -> FilesetState:
        """Put a ``waiting`` fileset (with ``requeue``, also a failed or skipped one) in the
        queue, due now; anything else stays as it is.  Returns the state it was in."""
        ...

    def claim_next(
        self, now: float, *, worker: str, max_running: int, per_user_limit: int | None = None
    ) -> Claim | None:
        """The next due fileset, now ``importing`` under a new token; None if none may start."""
        ...

    def finish(
        self,
        fileset_id: str,
        token: int,
        state: str,
        reason: str = "",
        next_attempt_at: float | None = None,
    ) -> None:
        """Record the outcome of claim ``token``; a stale token raises ``StaleClaimError``."""
        ...

    def recover_interrupted(self) -> list[FilesetRecord]:
        """At start-up: what a dead process left ``importing`` goes back to ``queued``."""
        ...

    def next_due_at(self) -> float | None:
        """When the earliest queued fileset is due (epoch seconds), or None if none is queued."""
        ...

    def queue_counts(self, now: float) -> tuple[int, int]:
        """``(ready, delayed)``: queued filesets due at ``now`` and those in back-off."""
        ...

    def queued_ids(self) -> list[str]:
        """Ids of every queued fileset."""
        ...

    def exhausted(self, max_attempts: int) -> list[FilesetRecord]:
        """Queued filesets already tried ``max_attempts`` times (crashes during their imports)."""
        ...

    def give_up(self, fileset_id: str, reason: str) -> bool:
        """A queued fileset goes to ``failed`` untried; False if it is no longer queued."""
        ...
