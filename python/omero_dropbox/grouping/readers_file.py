"""``omero.fs.readers`` files: which Bio-Formats readers (and so which rules and suffixes)
are enabled."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omero_dropbox.grouping.readers import OTHER_READERS, READER_ALIASES, READER_SUFFIXES

__all__ = ["ReadersFile", "load_readers", "read_readers_file"]


@dataclass(frozen=True)
class ReadersFile:
    """An ``omero.fs.readers`` file: the reader classes it enables (fully-qualified names
    as in Bio-Formats' readers.txt) and the names it gives that no reader has."""

    path: Path
    classes: frozenset[str]
    unknown: tuple[str, ...]

    def warning(self) -> str | None:
        """The operator's message for unknown names (``None`` when all are known)."""
        if not self.unknown:
            return None
        shown = ", ".join(self.unknown[:20]) + (
            f" and {len(self.unknown) - 20} more" if len(self.unknown) > 20 else ""
        )
        hints = [h for name in self.unknown[:5] if (h := _reader_hint(name))]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        return (
            f"omero.fs.readers={self.path}: unknown Bio-Formats reader class "
            f"{'name' if len(self.unknown) == 1 else 'names'} {shown}{hint}; files only those "
            "readers would read are not imported. Give class names such as "
            "loci.formats.in.TiffDelegateReader or TiffDelegateReader, one per line"
        )


def _reader_names() -> dict[str, str]:
    """Every accepted spelling (full and short class name, case-folded) -> full name."""
    full = [cls for cls, _fmt, _sufs in READER_SUFFIXES] + list(READER_ALIASES) + list(OTHER_READERS)
    names: dict[str, str] = {}
    for cls in full:
        names.setdefault(cls.casefold(), cls)
        names.setdefault(cls.rsplit(".", 1)[-1].casefold(), cls)
    return names


_READER_NAMES = _reader_names()


def _reader_hint(name: str) -> str | None:
    import difflib

    short = name.rsplit(".", 1)[-1].casefold()
    close = difflib.get_close_matches(short, [k for k in _READER_NAMES if "." not in k], n=1, cutoff=0.85)
    return _READER_NAMES[close[0]] if close else None


def read_readers_file(path: Path) -> ReadersFile:
    """Parse an ``omero.fs.readers`` file: reader class names, one a line, ``#`` comments
    and ``[...]`` options as in Bio-Formats' readers.txt. A fully-qualified
    (``loci.formats.in.TiffReader``) or short (``TiffReader``) class name is accepted;
    names no reader has are listed in ``unknown``."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ValueError(
            f"omero.fs.readers={path}: cannot read the readers file ({exc.strerror}); "
            "give a file of Bio-Formats reader class names, one per line"
        ) from exc
    classes: set[str] = set()
    unknown: dict[str, None] = {}
    for line in text.splitlines():
        name = line.split("#", 1)[0].split("[", 1)[0].strip()
        if not name:
            continue
        cls = _READER_NAMES.get(name.casefold())
        if cls is None:
            unknown[name] = None
        else:
            classes.add(cls)
            classes.add(READER_ALIASES.get(cls, cls))
    return ReadersFile(Path(path), frozenset(classes), tuple(unknown))


def load_readers(path: Path) -> frozenset[str]:
    """The reader classes an ``omero.fs.readers`` file enables (see :func:`read_readers_file`)."""
    return read_readers_file(path).classes
