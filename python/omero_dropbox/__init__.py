"""omero-dropbox-ng: a drop-folder importer for OMERO.

The native watcher lives in :mod:`omero_dropbox._native`; it is imported lazily so
that the pure-Python parts (configuration, grouping, journal) work even where the
extension is not built yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["DropBox", "Event", "Watcher", "WatcherError"]

if TYPE_CHECKING:
    from omero_dropbox.engine import DropBox
    from omero_dropbox.watcher import Event, Watcher, WatcherError


def __getattr__(name: str) -> Any:
    if name in ("Watcher", "Event", "WatcherError"):
        from omero_dropbox import watcher

        return getattr(watcher, name)
    if name == "DropBox":
        from omero_dropbox.engine import DropBox

        return DropBox
    raise AttributeError(f"module 'omero_dropbox' has no attribute {name!r}")
