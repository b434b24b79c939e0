"""Where the service's log lines go: stderr and ``DropBox.log``, in upstream's format, every line escaped.

Used by ``omero-dropbox run`` (:mod:`omero_dropbox.cli`) and, outside IceGrid, by the Ice
servers (:mod:`omero_dropbox.ice.monitor_server`); under IceGrid, omero.util's own logging
setup is used instead and only escaped (:func:`omero_dropbox.text.escape_log_handlers`).
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import stat
import sys
from pathlib import Path

from omero_dropbox.text import EscapingFormatter

__all__ = ["LOG_DIR_MODE", "LOG_FILE_MODE", "LOG_FORMAT", "setup_logging", "stderr_handler"]

# Upstream's DropBox.log line format, so sites keep their log tooling.
LOG_FORMAT = "%(asctime)s %(levelname)-5.5s [%(name)40s] (%(threadName)-10s) %(message)s"

#: DropBox.log holds every user's file names: not for others.  0640 as packaging/logrotate's
#: ``create`` (group: the service's own, for log readers), whatever the umask.
LOG_FILE_MODE = 0o640
LOG_DIR_MODE = 0o750


class _PrivateLogFile:
    """Opens (and reopens, after a rotation) the log file with :data:`LOG_FILE_MODE`."""

    baseFilename: str
    mode: str
    encoding: str | None
    errors: str | None

    def _open(self) -> io.TextIOWrapper:  # logging.FileHandler's hook
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.baseFilename, flags, LOG_FILE_MODE)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & ~LOG_FILE_MODE:
                os.fchmod(fd, mode & LOG_FILE_MODE)
        except OSError:
            pass  # not ours to change (another owner): log to it as it is
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


class _RotatingLog(_PrivateLogFile, logging.handlers.RotatingFileHandler):
    pass


class _WatchedLog(_PrivateLogFile, logging.handlers.WatchedFileHandler):
    pass


def stderr_handler() -> logging.Handler:
    """A handler writing escaped lines in :data:`LOG_FORMAT` to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    return handler


def setup_logging(level: str, log_dir: Path | None, external_rotation: bool = False) -> None:
    """Log to stderr and, with ``log_dir``, to DropBox.log; every line escaped (:mod:`omero_dropbox.text`)."""
    root = logging.getLogger()
    root.setLevel(level)
    root.addHandler(stderr_handler())
    if log_dir is not None:
        log_dir.mkdir(mode=LOG_DIR_MODE, parents=True, exist_ok=True)
        handler: logging.Handler
        if external_rotation:
            # logrotate moves the file away; WatchedFileHandler notices and reopens it.
            handler = _WatchedLog(log_dir / "DropBox.log")
        else:
            handler = _RotatingLog(log_dir / "DropBox.log", maxBytes=5_000_000, backupCount=9)
        handler.setFormatter(EscapingFormatter(LOG_FORMAT))
        root.addHandler(handler)
