"""How the journal stores paths and text: paths byte-exact, text escaped.

Paths are BLOBs of ``os.fsencode(path)`` so that non-UTF-8 names survive exactly.  Text columns
hold valid UTF-8 only: a name's undecodable bytes become ``\\xNN``; a reason or error is stored
escaped (:func:`~omero_dropbox.text.printable`), so whoever reads it gets one safe line.
"""

from __future__ import annotations

import os

from omero_dropbox.text import printable

__all__ = ["blob_path", "column_text", "path_blob", "stored_reason"]


def path_blob(path: str) -> bytes:
    """The BLOB stored for ``path``: its bytes on disk."""
    return os.fsencode(path)


def blob_path(blob: bytes | None) -> str:
    """The path stored as ``blob`` ("" for NULL)."""
    return os.fsdecode(bytes(blob)) if blob is not None else ""


def column_text(value: str | None) -> str | None:
    """Text for a TEXT column: surrogate escapes (undecodable bytes) become ``\\xNN``."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return printable(value)
    return value


def stored_reason(value: str) -> str:
    """A reason or error for the journal, stored escaped: whoever reads it gets one safe line."""
    return printable(value)
