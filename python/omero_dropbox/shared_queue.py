"""A watcher node on the shared PostgreSQL queue (``run --queue``): the stores, the sync, the leases.

What :class:`~omero_dropbox.engine.DropBox` holds instead of using its journal as the queue:

* the queue store its :class:`~omero_dropbox.import_queue.ImportQueue` claims from (role
  ``all``: this node imports too; role ``watcher``: the queue is never started);
* a :class:`~omero_dropbox.queue_sync.QueueSync`, which sends the journal's due filesets to the
  shared queue and mirrors their outcomes back;
* with role ``all``, a :class:`~omero_dropbox.leases.LeaseKeeper` for this node's claims.

Each has a connection of its own, so that a slow or held call of one never stalls the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from omero_dropbox.import_queue import ImportQueue
from omero_dropbox.journal import Journal
from omero_dropbox.leases import LeaseKeeper
from omero_dropbox.pg_store import PgQueueStore
from omero_dropbox.queue_store import ROLES, SharedQueue
from omero_dropbox.queue_sync import QueueSync

__all__ = ["SharedLink"]

log = logging.getLogger("omero_dropbox.dropbox")


class SharedLink:
    """The shared queue's parts for one watcher node.  Connects now: a database that cannot be
    used raises :class:`~omero_dropbox.journal.JournalError` naming the DSN (password hidden)."""

    def __init__(self, shared: SharedQueue, journal: Journal, on_imported: Callable[[str], None]) -> None:
        if shared.role not in ROLES:
            raise ValueError(f"role {shared.role!r}: choose one of {', '.join(ROLES)}")
        self.shared = shared
        self._stores: list[PgQueueStore] = []
        try:
            self.store = self._open()
            self.sync = QueueSync(journal, self._open(), on_imported)
            self._lease_store = self._open() if shared.role == "all" else None
        except BaseException:
            self.close()
            raise
        self.keeper: LeaseKeeper | None = None

    def _open(self) -> PgQueueStore:
        store = PgQueueStore(self.shared.dsn, lease=self.shared.lease)
        self._stores.append(store)
        return store

    def start(self, queue: ImportQueue) -> list[str]:
        """Start the sync, and with role ``all`` the workers and their lease keeper."""
        self.sync.start()
        resumed: list[str] = []
        if self._lease_store is not None:
            resumed = queue.start(resume=True)
            self.keeper = LeaseKeeper(self._lease_store, queue)
            self.keeper.start()
        log.info(
            "Import queue shared in PostgreSQL %s (role %s: %s)",
            self.store.shown_dsn,
            self.shared.role,
            "watching and importing" if self._lease_store is not None else "watching only; workers import",
        )
        return resumed

    def stop(self) -> None:
        """After the queue drained: stop heartbeats, send what is left, close the connections."""
        if self.keeper is not None:
            self.keeper.stop()
        self.sync.stop()
        self.close()

    def close(self) -> None:
        for store in self._stores:
            store.close()
