"""``omero-dropbox worker``: imports filesets from the queue shared in PostgreSQL.

A worker has no watch and no journal of files: watcher nodes (``run --queue``) group and
journal the files and enqueue each due fileset; any number of workers, on any hosts that see
the same files at the same paths, claim them (:class:`~omero_dropbox.pg_store.PgQueueStore`)
and import them with the configured importer.  The worker is an
:class:`~omero_dropbox.import_queue.ImportQueue` over the shared store (claims, retries, a held
result while the database is away) plus a :class:`~omero_dropbox.leases.LeaseKeeper`
(heartbeats, taking back the claims of dead workers).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omero_dropbox.import_queue import ImportQueue
from omero_dropbox.importers import ImportRequest
from omero_dropbox.leases import LeaseKeeper
from omero_dropbox.pg_store import PgQueueStore
from omero_dropbox.queue_store import UNCAPPED
from omero_dropbox.shared_queue import NotingObjects
from omero_dropbox.statelock import StateLock

__all__ = ["Worker", "WorkerSettings", "default_worker_name"]

log = logging.getLogger("omero_dropbox.worker")


def default_worker_name() -> str:
    """``host:pid``: what the queue's ``claimed_by`` shows for this process's claims."""
    return f"{os.uname().nodename}:{os.getpid()}"


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker imports: its concurrency, the global cap and the retry policy."""

    concurrency: int = 2
    max_running: int | None = None  # global cap on importing filesets (all hosts); None: none
    throttle: float = 0.0
    max_attempts: int = 5
    backoff_initial: float = 30.0
    name: str = ""


class Worker:
    """Claims filesets from the shared queue at ``dsn`` and imports them; see the module docstring.

    Raises :class:`~omero_dropbox.journal.JournalError` (naming the DSN, password hidden, and
    what to fix) when the database cannot be used at start.
    """

    def __init__(
        self,
        dsn: str,
        importer: Callable[[ImportRequest], Any],
        settings: WorkerSettings,
        *,
        state_dir: Path,
        lease: float = 60.0,
    ) -> None:
        self.name = settings.name or default_worker_name()
        # One process per state directory, as `run`: it owns the importers recorded there, so a
        # worker restarted after kill -9 first ends the importers its last run left behind.
        self._state_lock = StateLock(state_dir)
        self._stores: list[PgQueueStore] = []
        try:
            self.store = self._open(dsn, lease)
            # A connection of its own: a heartbeat never waits behind a claim or a held result.
            self._lease_store = self._open(dsn, lease)
        except BaseException:
            self._close()
            raise
        self.queue = ImportQueue(
            self.store,
            NotingObjects(importer, self.store),
            max_concurrent=settings.concurrency,
            max_running=settings.max_running or UNCAPPED,
            throttle=settings.throttle,
            max_attempts=settings.max_attempts,
            backoff_initial=settings.backoff_initial,
            name=self.name,
        )
        self.keeper = LeaseKeeper(self._lease_store, self.queue)
        self._stop = threading.Event()

    def run(self, drain_timeout: float | None = 300.0) -> bool:
        """Import until :meth:`stop`; then let running imports finish (up to ``drain_timeout``).

        Returns whether every running import finished in time.
        """
        self.queue.start(resume=True)
        self.keeper.start()
        log.info(
            "Worker %s claiming from the queue in %s (%d at a time, lease %g s)",
            self.name,
            self.store.shown_dsn,
            self.queue.max_concurrent,
            self.store.lease,
        )
        try:
            self._stop.wait()
        finally:
            finished = self.shutdown(drain_timeout)
        return finished

    def stop(self) -> None:
        """Stop claiming (safe from signal handlers): :meth:`run` then drains and returns."""
        self._stop.set()

    def shutdown(self, drain_timeout: float | None) -> bool:
        finished = self.queue.drain(timeout=drain_timeout)
        if not finished:
            log.warning(
                "Imports still running at the drain deadline were ended; their claims' leases run out "
                "and another worker imports them again"
            )
        self.queue.stop()
        # Heartbeats stop only now: a draining import keeps its claim until it is recorded.
        self.keeper.stop()
        self._close()
        log.info("Worker %s stopped", self.name)
        return finished

    def _open(self, dsn: str, lease: float) -> PgQueueStore:
        store = PgQueueStore(dsn, lease=lease)
        self._stores.append(store)
        return store

    def _close(self) -> None:
        for store in self._stores:
            store.close()
        self._state_lock.release()
