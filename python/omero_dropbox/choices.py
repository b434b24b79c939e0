"""The closed sets of setting values that cross module seams: a ``Literal`` type each, and its values.

The configuration checks every value against these at load (:mod:`omero_dropbox.properties`,
with an error naming the property and what is allowed); the watcher, the engine and the Ice
services receive them typed, so mypy checks each hand-over. Pure Python: the configuration
must load where the native watcher is not built.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "AFTER_IMPORT_ACTIONS",
    "BACKENDS",
    "PATH_MODES",
    "WATCH_EVENT_TYPES",
    "AfterImport",
    "Backend",
    "PathMode",
    "WatchEventType",
]

PathMode = Literal["flat", "recurse", "follow"]
"""Upstream ``PathMode``: the root only; the subdirectories that exist at start; also new ones."""

Backend = Literal["auto", "native", "notify", "poll", "fanotify"]
"""``omero.fs.ng.backend``: kernel events, notify's watcher (what macOS and Windows use; on Linux for
testing that path), polling (NFS/SMB), one fanotify filesystem mark (Linux, CAP_SYS_ADMIN), or
the best of these that works unless polling is needed."""

AfterImport = Literal["keep", "move", "delete"]
"""``omero.fs.ng.afterImport``: what happens to a fileset's files once its import is journaled."""

WatchEventType = Literal["creation", "modification", "deletion"]
"""Upstream ``WatchEventType`` without ``All`` (which stands for all three), in canonical order."""

PATH_MODES: tuple[PathMode, ...] = get_args(PathMode)
BACKENDS: tuple[Backend, ...] = get_args(Backend)
WATCH_EVENT_TYPES: tuple[WatchEventType, ...] = get_args(WatchEventType)
AFTER_IMPORT_ACTIONS: tuple[AfterImport, ...] = get_args(AfterImport)
