"""System files: never key files nor imported alone; members only when a rule names them.

Kept as they were in ``filesets``/``grouping_rules`` (to be unified with the native path
filter of the watcher).
"""

from __future__ import annotations

import os

#: Base names that are never image data (besides dot files, which OMERO's importer skips).
SYSTEM_FILE_NAMES: frozenset[str] = frozenset(
    {"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r", "__macosx"}
)


def is_system_file(path: str) -> bool:
    """Dot files, ``Thumbs.db``, ``desktop.ini``..., and anything under ``__MACOSX``."""
    return is_system_name(path, os.path.basename(path))


def is_system_name(path: str, name: str) -> bool:
    """:func:`is_system_file` for a normalised ``path`` whose base name ``name`` is known."""
    if name.startswith(".") or name.lower() in SYSTEM_FILE_NAMES:
        return True
    return "__MACOSX" in path and "__MACOSX" in path.split(os.sep)
