"""One service per state directory: an exclusive lock on ``<state-dir>/service.lock``.

Two ``omero-dropbox run`` (or the Ice DropBox service and a ``run``) on one journal would
each take the other's running import for one a crash interrupted, and import it again in
parallel.  Whatever runs the engine takes this lock first; ``status``, ``retry`` and
``forget`` do not need it.

``flock(2)`` on a file that is never deleted: the kernel releases the lock when the
holder exits, however it exits (``kill -9`` included), so a stale lock file never blocks a
start.  The holder writes its PID, host and start time into the file, for the error
message of the next one.  The file descriptor is close-on-exec: an importer left running
cannot keep the lock.

Holding the lock also means owning the importers: the new holder first ends any importer
process group the last holder left running (it was killed with ``kill -9``, so it could
not), then records its own in ``importers.running`` (see :mod:`omero_dropbox.importers`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from omero_dropbox.importers import RUNNING_IMPORTERS, end_leftover_importers
from omero_dropbox.journal import JournalError, JournalFullError, open_private

if sys.platform != "win32":  # Windows: no flock; the service is supported on POSIX only
    import fcntl

__all__ = ["LOCK_NAME", "StateDirInUseError", "StateLock"]

log = logging.getLogger("omero_dropbox.statelock")

LOCK_NAME = "service.lock"


class StateDirInUseError(JournalError):
    """Another running service holds the state directory."""


class StateLock:
    """The exclusive lock on a state directory; :meth:`release` (or process exit) frees it."""

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LOCK_NAME
        self._fd: int | None = self._acquire()
        end_leftover_importers(self.state_dir)
        RUNNING_IMPORTERS.attach(self.state_dir)

    def _acquire(self) -> int:
        try:
            fd = open_private(self.path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise JournalFullError(
                    f"cannot create the lock file {self.path}: the disk holding {self.state_dir} is "
                    "full; free some space; nothing already recorded was lost"
                ) from e
            raise JournalError(f"cannot open the lock file {self.path}: {e.strerror or e}") from e
        if sys.platform == "win32":
            log.warning("No flock(2) here: nothing stops a second service on %s", self.state_dir)
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateDirInUseError(
                    f"state directory {self.state_dir} is in use by another omero-dropbox service "
                    f"({holder}): two services on one journal would import the same filesets twice. "
                    "Stop that one first (or wait until it has stopped), or give this one another "
                    "--state-dir"
                ) from None
            raise JournalError(f"cannot lock {self.path}: {e.strerror or e}") from e
        _write_holder(fd)
        return fd

    def release(self) -> None:
        """Free the lock (idempotent).  The file stays: deleting it would race with a new holder."""
        fd, self._fd = self._fd, None
        if fd is not None:
            RUNNING_IMPORTERS.detach(self.state_dir)
            if sys.platform != "win32":
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


def _write_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    data = (json.dumps(info) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError as e:
        # A full disk: the lock holds all the same; only the next one's message is vaguer.
        log.debug("Could not write the holder into the lock file: %s", e)


def _read_holder(fd: int) -> dict[str, object]:
    try:
        doc = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _describe(holder: dict[str, object]) -> str:
    pid, host, started = holder.get("pid"), holder.get("host"), holder.get("started")
    if not isinstance(pid, int):
        return "PID unknown"
    text = f"PID {pid}"
    if isinstance(host, str) and host:
        text += f" on {host}"
    if isinstance(started, (int, float)):
        text += ", started " + time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started))
    return text
