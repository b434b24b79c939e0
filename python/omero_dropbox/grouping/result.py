"""What grouping returns: filesets, files waiting for their key file, refused files."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "REASON_SYSTEM",
    "REASON_UNKNOWN",
    "SINGLE",
    "Fileset",
    "GroupingResult",
    "Refused",
    "UsedFiles",
    "UsedFilesSource",
    "WaitKind",
    "Waiting",
]

SINGLE = "single"
REASON_SYSTEM = "system file"
REASON_UNKNOWN = "not a format Bio-Formats reads"


@dataclass(frozen=True)
class Fileset:
    """One import: ``key`` is what gets imported, ``files`` every member (key included)."""

    key: str
    files: tuple[str, ...]
    format: str
    missing: tuple[str, ...] = ()
    #: A one-file fileset whose file another rule's key file, not given yet, could still
    #: claim as a member (a lone ``.tif`` a ``.nd`` may name): the engine gives it the full
    #: ``dirImportWait`` even when complete. Set by the grouper from the rule table.
    may_grow: bool = field(default=False, compare=False)

    @property
    def complete(self) -> bool:
        """True when every member the rules expect is among the grouped files."""
        return not self.missing

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"key": self.key, "files": list(self.files), "format": self.format}
        if self.missing:
            record["missing"] = list(self.missing)
        return record


class WaitKind(enum.Enum):
    """Why a file is held back rather than imported or refused."""

    #: A companion by name (``.ids``, ``.fake.ini``, a VSI ``.ets``...) whose key file, named
    #: from the companion's name by the rule table, is not among the given files.
    COMPANION_WITHOUT_KEY = "companion without its key file"
    #: A file whose content (a BinaryOnly OME-TIFF's ``MetadataFile``) or whose Bio-Formats
    #: answer (the opt-in oracle) names a key file that is not among the given files.
    KEY_NAMED_BUT_ABSENT = "key file named but absent"


@dataclass(frozen=True)
class Waiting:
    """A file held back until one of ``awaited_keys`` (normalised paths) is given.

    The engine keeps it while one of them is on disk but not reported yet (an overflow
    rescan, a copy still running), and gives up after ``dirImportWait`` otherwise.
    ``reason`` is what operators read.
    """

    path: str
    kind: WaitKind
    awaited_keys: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Refused:
    """A file that is not imported: a refused key file, a system file, a companion its key
    file does not use, a metadata file, a format no reader reads. ``reason`` says which."""

    path: str
    reason: str


@dataclass(frozen=True)
class GroupingResult:
    """Every given file is in exactly one of ``filesets``, ``waiting`` and ``refused``."""

    filesets: tuple[Fileset, ...]
    waiting: tuple[Waiting, ...] = ()
    refused: tuple[Refused, ...] = ()

    @property
    def unclaimed(self) -> tuple[tuple[str, str], ...]:
        """(path, reason) of every file in no fileset, waiting or refused, sorted."""
        return tuple(
            sorted([(w.path, w.reason) for w in self.waiting] + [(r.path, r.reason) for r in self.refused])
        )

    def fileset_of(self, path: str) -> Fileset | None:
        for fs in self.filesets:
            if path in fs.files:
                return fs
        return None


@dataclass(frozen=True)
class UsedFiles:
    """What Bio-Formats uses when it opens one file (the opt-in oracle's answer).

    ``files``: key first (empty when the reader uses more than asked, then ``too_many``
    holds the count); ``format``: Bio-Formats' format name.
    """

    files: tuple[str, ...]
    format: str = ""
    too_many: int = 0
    limit: int = 0  # the cap ``too_many`` went over


UsedFilesSource = Callable[[str], "UsedFiles | None"]
"""path -> what Bio-Formats uses, or None when it gave no answer (the rule table decides).
:class:`omero_dropbox.grouping.oracle.UsedFilesOracle` is the real one."""
