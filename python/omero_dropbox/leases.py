"""Keeping claims on a shared queue alive: heartbeats for the running imports, and taking back
the claims of workers that died.

A claim on the PostgreSQL queue (:class:`~omero_dropbox.pg_store.PgQueueStore`) is a lease:
without a heartbeat within ``lease`` seconds any host may take it back
(:meth:`~omero_dropbox.pg_store.PgQueueStore.reclaim_expired`) and another worker imports the
fileset.  :class:`LeaseKeeper` is the one thread per process that

* heartbeats every claim the process's :class:`~omero_dropbox.import_queue.ImportQueue` holds,
  every ``lease / 3`` s (two heartbeats may be lost before the lease runs out);
* tells the queue when a heartbeat is refused (the claim was taken back: nothing more is started
  for it, and its late result will be refused by ``finish``);
* takes back expired claims every ``lease`` s, so that a dead worker's fileset is imported again
  even when no watcher node runs.

A database that cannot be reached is logged once per outage; the imports go on, and their
results are recorded when it answers again (the queue holds them) unless their leases ran out
and another worker took them meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from omero_dropbox.import_queue import ImportQueue
from omero_dropbox.journal import JournalError

__all__ = ["LeaseKeeper", "LeaseStore"]

log = logging.getLogger("omero_dropbox.leases")


class LeaseStore(Protocol):
    """What the keeper asks of the shared store (:class:`~omero_dropbox.pg_store.PgQueueStore`)."""

    @property
    def lease(self) -> float: ...

    @property
    def shown_dsn(self) -> str: ...

    def heartbeat(self, fileset_id: str, token: int) -> bool: ...

    def server_time(self) -> float: ...

    def reclaim_expired(self, now: float | None = None) -> list[str]: ...


class LeaseKeeper:
    """Heartbeats ``queue``'s claims and reclaims expired ones, on a thread of its own.

    ``store`` should be a connection of its own (not the queue's), so that a heartbeat never
    waits behind a claim or a held result being retried.
    """

    def __init__(self, store: LeaseStore, queue: ImportQueue, *, reclaim: bool = True) -> None:
        self.store = store
        self.queue = queue
        self.every = max(store.lease / 3.0, 0.05)
        self.reclaim_every = max(store.lease, 0.1)
        self.reclaim = reclaim
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage_since: float | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        next_reclaim = time.monotonic()  # at once: a worker starting takes back what died
        while not self._stop.is_set():
            try:
                self.beat()
                if self._outage_since is not None:
                    self._answered()
                    # Every host was likely cut off too (a server restart): their leases ran out
                    # meanwhile.  One lease before taking any back gives their workers time to
                    # heartbeat again, so that a live import is not run a second time.
                    next_reclaim = time.monotonic() + self.reclaim_every
                if self.reclaim and time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + self.reclaim_every
                    self.take_back()
            except JournalError as e:
                self._unreachable(e)
            self._stop.wait(self.every)

    def beat(self) -> None:
        """One heartbeat for each running claim; a refused one is lost to the queue."""
        claims = self.queue.running_claims()
        if not claims and self._outage_since is not None:
            self.store.server_time()  # nothing to keep alive: is the database back?
        for claim in claims:
            if not self.store.heartbeat(claim.id, claim.token):
                log.warning(
                    "Lost the claim on fileset %s (claim %d): its lease of %g s ran out and it was "
                    "taken back, so another worker may import it. This import goes on if it started, "
                    "but its result will be refused; check this worker's link to the database %s",
                    claim.id,
                    claim.token,
                    self.store.lease,
                    self.store.shown_dsn,
                )
                self.queue.lose(claim)

    def take_back(self) -> None:
        ids = self.store.reclaim_expired()
        if ids:
            log.warning(
                "Took back %d claim(s) whose lease ran out (their worker died or lost the database): "
                "%s; they are imported again",
                len(ids),
                ", ".join(i[:12] for i in ids),
            )

    def _unreachable(self, error: JournalError) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.error(
                "Cannot keep the running imports' claims alive: %s. Running imports go on; their "
                "results are recorded when the database answers, unless their leases (%g s) run out "
                "first and another worker takes them. Trying again every %.3g s",
                error,
                self.store.lease,
                self.every,
            )
        else:
            log.debug("Still cannot reach the queue database: %s", error)

    def _answered(self) -> None:
        assert self._outage_since is not None
        log.warning(
            "The queue database answers again after %.0f s; claims are kept alive again, and expired "
            "ones are taken back from one lease (%g s) on",
            time.monotonic() - self._outage_since,
            self.store.lease,
        )
        self._outage_since = None
