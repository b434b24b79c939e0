"""What an importer standing in for OMERO recorded: one JSON line per import."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tests.support.appended import complete_lines

#: A fileset as written: its member paths as exact bytes.
Key = frozenset[bytes]


@dataclass(frozen=True)
class Record:
    """One import as the importer saw it."""

    user: str
    fileset: str
    files: tuple[bytes, ...]
    sizes: tuple[int, ...] = ()

    @property
    def key(self) -> Key:
        return frozenset(self.files)


def read_records(path: Path) -> list[Record]:
    """The importer's records, from the RECORDER (hex bytes) or the ``record`` importer (text)."""
    out = []
    for line in complete_lines(path):
        if not line.strip():
            continue
        doc = json.loads(line)
        if "sizes" in doc:
            user = bytes.fromhex(doc["user"]).decode("utf-8", "surrogateescape")
            files = tuple(bytes.fromhex(f) for f in doc["files"])
            out.append(Record(user, doc["fileset"], files, tuple(doc["sizes"])))
        else:
            files = tuple(os.fsencode(f) for f in doc["files"])
            out.append(Record(doc["user"], doc["fileset"], files))
    return out
