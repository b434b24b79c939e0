"""``<state-dir>/service.json``: what only the running service knows, for ``status`` in other processes.

The running service rewrites it (:class:`ServiceSnapshot`) with its :class:`LiveStatus`:
files waiting for their fileset to settle (these are not in the journal yet), the import
queue and the watcher counters. ``omero-dropbox status`` and ``retry`` read it
(:func:`read_service`) to say whether a service runs on the state directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, TypedDict

from omero_dropbox.journal import open_private

__all__ = ["SERVICE_FILE", "LiveStatus", "ServiceSnapshot", "read_service"]

SERVICE_FILE = "service.json"
_HEARTBEAT = 30.0  # rewrite service.json at least this often, so readers can tell it is alive


class LiveStatus(TypedDict):
    """The running service's own state (``DropBox.runtime_status``), as written to service.json."""

    waiting: dict[str, int]  # per user: READY files waiting for their fileset to settle
    queue: dict[str, int]  # ready, delayed (retry back-off), running
    watcher: dict[str, int]  # the native watchers' counters, summed (watches, pending, ...)
    http: str | None  # the status page's URL (run --http), or None
    watching: int  # watchers placed so far (one per import user)


class ServiceSnapshot:
    """Writes ``<state-dir>/service.json`` for ``status`` in other processes.

    Rewritten atomically when the content changed, and at least every 30 s; removed
    when the service stops cleanly.  Never fsync-ed: it describes the present only.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / SERVICE_FILE
        self.started_at = time.time()
        self._last: LiveStatus | None = None
        self._written = 0.0

    def update(self, live: LiveStatus) -> bool:
        """Write ``live`` if it changed (or the heartbeat is due); returns whether written."""
        now = time.time()
        body = live.copy()  # what was written, whatever the caller does with ``live`` later
        if body == self._last and now - self._written < _HEARTBEAT:
            return False
        doc = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": self.started_at,
            "updated_at": now,
            **body,
        }
        tmp = self.path.with_name(f".{SERVICE_FILE}.{os.getpid()}.tmp")
        try:
            with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as fh:
                fh.write(json.dumps(doc))
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False  # status then says "not running": wrong but harmless; the journal is intact
        self._last, self._written = body, now
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError:
        return False
    return True


def read_service(state_dir: Path) -> dict[str, Any]:
    """The service snapshot plus ``running`` (its pid is alive on this host).

    The file is JSON written by another process, possibly another version: its values are
    not checked here, only that it is an object.
    """
    try:
        doc = json.loads((Path(state_dir) / SERVICE_FILE).read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):
        return {"running": False}
    pid = doc.get("pid")
    same_host = doc.get("host") == socket.gethostname()
    doc["running"] = bool(isinstance(pid, int) and same_host and _pid_alive(pid))
    return doc
