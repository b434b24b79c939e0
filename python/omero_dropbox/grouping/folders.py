"""Which paths are surely absent, from folder listings read once."""

from __future__ import annotations

import os

_UNLISTED: frozenset[str] = frozenset({"\0unlisted"})  # a name no folder can hold


class FolderNames:
    """Folder listings, each read once: which paths are surely absent.

    A key file naming 100,000 members that are not there then costs one listing and set
    lookups, not 100,000 ``lstat`` calls (whose answer a listing gives as well). Keep one
    only for a moment (one grouping pass, one check): the listings are not refreshed.
    """

    def __init__(self) -> None:
        self._names: dict[str, frozenset[str] | None] = {}

    def may_exist(self, path: str) -> bool:
        """False only when ``path``'s folder was listed and lacks it."""
        folder, _, name = path.rpartition(os.sep)
        names = self._names.get(folder, _UNLISTED)
        if names is _UNLISTED:
            try:
                with os.scandir(folder or os.sep) as it:
                    names = frozenset(e.name for e in it)
            except (OSError, ValueError):
                names = None  # unreadable or gone: let the caller's lstat tell
            self._names[folder] = names
        return names is None or name in names
