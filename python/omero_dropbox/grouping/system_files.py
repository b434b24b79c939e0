"""System files for grouping: never key files nor imported alone; members only when a rule
names them.

The names are the native path filter's (:func:`omero_dropbox._native.system_file_rules`):
the rules marked "never image data" apply here even with ``ignoreSysFiles=false`` (dot files,
``Thumbs.db``, ``desktop.ini``, ``Icon\\r``, anything in a ``__MACOSX`` folder), because the
OMERO importer skips dot files as well; the watcher applies every rule only when
``ignoreSysFiles`` is on.
"""

from __future__ import annotations

from omero_dropbox._native import never_data

__all__ = ["is_system_file"]


def is_system_file(path: str) -> bool:
    """Whether the file at ``path`` is never image data (its name, or a ``__MACOSX`` folder)."""
    return never_data(path)
