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
from collections.abc import Callable, Sequence

from omero_dropbox.import_queue import ImportQueue
from omero_dropbox.importers import BaseImporter, ImportRequest, ImportResult, as_importer
from omero_dropbox.journal import Journal, JournalError
from omero_dropbox.leases import LeaseKeeper
from omero_dropbox.omero_objects import parse_omero_objects
from omero_dropbox.pg_store import PgQueueStore
from omero_dropbox.queue_store import ROLES, SharedQueue
from omero_dropbox.queue_sync import QueueSync

__all__ = ["NotingObjects", "SharedLink"]

log = logging.getLogger("omero_dropbox.dropbox")


class SharedLink:
    """The shared queue's parts for one watcher node.  Connects now: a database that cannot be
    used raises :class:`~omero_dropbox.journal.JournalError` naming the DSN (password hidden)."""

    def __init__(
        self, shared: SharedQueue, journal: Journal, on_imported: Callable[[str, Sequence[str]], None]
    ) -> None:
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

    def noting(self, importer: object) -> NotingObjects:
        """``importer``, noting the OMERO objects of each import in the shared queue."""
        return NotingObjects(importer, self.store)

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


class NotingObjects(BaseImporter):
    """Runs ``inner``; after a successful import, notes the OMERO objects it created in the
    shared queue (:meth:`~omero_dropbox.pg_store.PgQueueStore.record_objects`) *before* the
    queue records the result, so that the watcher node owning the fileset finds them with the
    outcome and attaches the fileset's key-value pairs and tags.

    ``__call__`` is overridden, not ``run``: the inner importer already logs.
    """

    def __init__(self, inner: object, store: PgQueueStore) -> None:
        self.inner = as_importer(inner)
        self.store = store

    def __call__(self, request: ImportRequest) -> ImportResult:
        result = self.inner(request)
        if result.ok:
            objects = result.objects or parse_omero_objects(result.output)
            try:
                self.store.record_objects(request.fileset_id, objects)
            except JournalError as e:
                # The import itself is done and is recorded (the queue holds its result).
                log.error(
                    "Cannot note the OMERO objects of fileset %s (%s) in the shared queue: %s; its "
                    "watcher node will report its key-value pairs and tags as not attached",
                    request.fileset_id,
                    ", ".join(objects[:5]),
                    e,
                )
        return result

    def __repr__(self) -> str:
        return repr(self.inner)
