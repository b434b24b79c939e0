"""What the durable jobs that follow an import share (after-import action, annotations).

Each keeps its own journal table; this is the running of it: one background thread that
looks for due work at start-up and then periodically, and a guard so that a fileset's job
never runs twice at once (the import worker that just finished it and the thread may both
reach for it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from omero_dropbox.journal import JournalError

__all__ = ["FilesetDuty"]


class FilesetDuty:
    """Subclasses say what is due (:meth:`due`) and how to do one fileset's job (:meth:`_run`)."""

    #: The background thread's name, and what the log calls the job.
    name = "duty"

    def __init__(self, log: logging.Logger, wake_every: float) -> None:
        self._log = log
        self._wake_every = wake_every
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return True

    def due(self) -> Iterable[str]:
        """Fileset ids whose job should run now."""
        raise NotImplementedError

    def _run(self, fileset_id: str) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Resume due jobs now and look again every ``wake_every`` seconds, on a thread."""
        if not self.active:
            return
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                due = list(self.due())
            except JournalError as exc:
                self._log.error("Cannot read the %s still to do: %s", self.name, exc)
                due = []
            for fid in due:
                if self._stop.is_set():
                    return
                self.run(fid)
            self._stop.wait(self._wake_every)

    def run(self, fileset_id: str) -> None:
        """Do one fileset's job once (safe to call again, and from any thread)."""
        with self._lock:
            if fileset_id in self._running:
                return
            self._running.add(fileset_id)
        try:
            self._run(fileset_id)
        except JournalError as exc:
            self._log.error("Cannot record the %s of fileset %s: %s", self.name, fileset_id, exc)
        finally:
            with self._lock:
                self._running.discard(fileset_id)
