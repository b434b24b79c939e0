"""The ImageDescription of a TIFF's first IFD (where an OME-TIFF keeps its OME-XML)."""

from __future__ import annotations

import struct

from omero_dropbox.grouping.limits import DEFAULT_LIMITS, GroupingLimits, KeyFileRejected
from omero_dropbox.grouping.user_files import UserFile, with_user_file

__all__ = ["tiff_description"]


def tiff_description(
    path: str, limit: int | None = None, limits: GroupingLimits = DEFAULT_LIMITS
) -> bytes | None:
    """ImageDescription (tag 270) of the first IFD of a classic or Big TIFF, or None.

    Raises :class:`KeyFileRejected` for an IFD or a description over the caps: the
    importer would read what we could not, so such a file is not imported at all.
    """
    cap = limits.max_tiff_description_bytes if limit is None else limit
    return with_user_file(path, lambda f: _tiff_description(f, cap, limits.max_tiff_entries))  # type: ignore[no-any-return]


def _tiff_description(fh: UserFile, limit: int, max_entries: int) -> bytes | None:
    head = fh.pread(16, 0)
    if head[:2] == b"II":
        e = "<"
    elif head[:2] == b"MM":
        e = ">"
    else:
        return None
    if len(head) < 8:
        return None
    (version,) = struct.unpack(e + "H", head[2:4])
    if version == 42:
        (offset,) = struct.unpack(e + "I", head[4:8])
        big = False
    elif version == 43 and len(head) >= 16:
        (offset,) = struct.unpack(e + "Q", head[8:16])
        big = True
    else:
        return None
    raw = fh.pread(8 if big else 2, offset)
    if len(raw) < (8 if big else 2):
        return None
    (count,) = struct.unpack(e + ("Q" if big else "H"), raw)
    if count > max_entries:
        raise KeyFileRejected(
            f"TIFF directory declares {count:,} entries, over the limit of {max_entries:,} "
            "(GroupingLimits.max_tiff_entries); not importing it"
        )
    size = 20 if big else 12
    entries = fh.pread(count * size, offset + (8 if big else 2))
    for i in range(len(entries) // size):
        entry = entries[i * size : (i + 1) * size]
        tag, _typ = struct.unpack(e + "HH", entry[:4])
        if tag != 270:
            continue
        if big:
            (n,) = struct.unpack(e + "Q", entry[4:12])
            inline, field_ = 8, entry[12:20]
        else:
            (n,) = struct.unpack(e + "I", entry[4:8])
            inline, field_ = 4, entry[8:12]
        if n > limit:
            raise KeyFileRejected(
                f"TIFF ImageDescription is {n:,} bytes, over the limit of {limit:,} bytes "
                "(GroupingLimits.max_tiff_description_bytes); not importing it"
            )
        if n <= inline:
            value = field_[:n]
        else:
            (where,) = struct.unpack(e + ("Q" if big else "I"), field_)
            value = fh.pread(n, where)
        return value.rstrip(b"\0")
    return None
