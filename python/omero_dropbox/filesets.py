"""Fileset grouping: which files import together, and which one is the key.

The grouper interprets the rule table of :mod:`omero_dropbox.grouping_rules`. It mirrors
how the OMERO importer (``ImportCandidates``) turns a list of files into import
containers, with the rules standing in for ``ImageReader.setId`` + ``getUsedFiles``:

1. dot files and system files (``Thumbs.db``...) are never key files nor imported alone
   (OMERO's importer skips dot files); they join a fileset only if a rule names them;
2. *candidates* are the files a rule recognises as key files (``.nd``, ``.ics``,
   ``.pattern``...); visited in sorted order, each candidate that no earlier candidate
   already uses becomes a container holding itself and its members (found by sibling
   names, file content or a sibling folder; only given files become members, absent
   ones are listed in ``Fileset.missing``);
3. as in OMERO, a container is dropped when a later container uses its key file and it
   itself uses at most one other file (a later, larger candidate subsumes it);
4. containers claim their files in visiting order, so no file is ever in two filesets;
5. every file left over is a waiting companion (``.ids`` without ``.ics``...), a
   single-file import (its suffix is read by some Bio-Formats reader), or unclaimed.

Only names and a few small files are read: no JVM, no pixel data. See
:mod:`omero_dropbox.bioformats` for the Bio-Formats oracle the tests compare against.

Key files are written by lab users, and the importer opens whatever a key file names,
whatever we group; so (see :class:`GroupingLimits` and ``group(..., root=)``):

* with ``root`` (the user's folder), every reference a key file makes (content, sibling
  and folder rules; required or optional; present or not) must be inside ``root`` after
  normalisation and reach it through no symbolic link; otherwise the key file is
  unclaimed with a reason naming the reference, and claims none of its members;
* member counts are computed before any name is built, and key files are read through
  one helper (no symlink followed, never blocking on a FIFO, regular files only,
  bounded size); each key file has a time budget; a key file over a cap is unclaimed
  with a reason naming the cap (no reason of a refused key file says "waiting");
* a ``.pattern`` that is a regular expression runs on the Rust ``regex`` crate (linear
  time), never on Python's backtracking ``re``;
* parse results are cached per key file (path, device, inode, size, mtime), so a
  regroup does not read and expand an unchanged 100,000-member key file again.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import stat
import struct
import sys
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from omero_dropbox.grouping_rules import (
    COMPANION_SUFFIXES,
    ORACLE_SUFFIXES,
    OTHER_READERS,
    READER_ALIASES,
    READER_SUFFIXES,
    RULES,
    SYSTEM_FILE_NAMES,
    Companion,
    Content,
    Folder,
    Rule,
    Sibling,
)
from omero_dropbox.journal import display_path

__all__ = [
    "Fileset",
    "FilesetGrouper",
    "GroupingLimits",
    "GroupingResult",
    "KeyFileRejected",
    "UsedFiles",
    "UsedFilesSource",
    "filesets_command",
    "group_paths",
    "is_system_file",
    "load_readers",
    "read_readers_file",
]

log = logging.getLogger(__name__)

SINGLE = "single"
REASON_SYSTEM = "system file"
REASON_UNKNOWN = "not a format Bio-Formats reads"


@dataclass(frozen=True)
class GroupingLimits:
    """What one key file may make the grouper do; lab users write key files.

    Every cap is checked before the work it bounds is done (a count is computed as a
    product first); a key file over a cap is not imported and its reason names the cap.
    """

    # Real plates and time-lapses have thousands to tens of thousands of files (a 1536-well
    # plate x 9 fields x 4 channels is 55,296); 100,000 leaves room and still bounds a
    # regroup to well under a second per key file (benches/bench_grouping.py --hostile).
    max_members: int = 100_000
    # .nd, .pattern and Slidedat.ini are a few KiB; OME-XML companions and InCell .xdce
    # grow ~0.5 KiB per image, so 16 MiB covers ~30,000 images listed in XML.
    max_key_file_bytes: int = 16 << 20
    # A real IFD has a few dozen entries; the OME-XML of an OME-TIFF lists every plane.
    max_tiff_entries: int = 4096
    max_tiff_description_bytes: int = 32 << 20
    # Cooperative: checked in every loop that can run long, so one key file cannot hold
    # the single engine thread longer than this.
    key_file_seconds: float = 5.0
    # Directory entries a regular-expression .pattern (and a Folder rule) may list.
    max_listing: int = 200_000
    # Compiled size of a .pattern regular expression (Rust regex size_limit).
    max_regex_bytes: int = 1 << 20
    # Key files whose parse results are kept between regroups, and the paths they may
    # hold in all (~100-150 bytes each: 1,000,000 paths is ~150 MB at most).
    cache_entries: int = 4096
    cache_paths: int = 1_000_000


DEFAULT_LIMITS = GroupingLimits()


class KeyFileRejected(Exception):
    """A key file that must not be imported; ``reason`` is shown to operators."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotRegularFileError(OSError):
    """A user's file that is a FIFO, socket, device, directory or symbolic link."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"{display_path(path)} is not a regular file ({kind})")
        self.kind = kind


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Fileset:
    """One import: ``key`` is what gets imported, ``files`` every member (key included)."""

    key: str
    files: tuple[str, ...]
    format: str
    missing: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when every member the rules expect is among the grouped files."""
        return not self.missing

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"key": self.key, "files": list(self.files), "format": self.format}
        if self.missing:
            record["missing"] = list(self.missing)
        return record


@dataclass(frozen=True)
class GroupingResult:
    filesets: tuple[Fileset, ...]
    unclaimed: tuple[tuple[str, str], ...]  # (path, reason)
    # (waiting companion, the key files that would claim it): the engine keeps a companion
    # waiting while one of these is on disk but not reported yet (an overflow rescan, a copy).
    awaited: tuple[tuple[str, tuple[str, ...]], ...] = ()

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
:class:`omero_dropbox.bioformats.UsedFilesOracle` is the real one."""


# ----------------------------------------------------------------------------- helpers


def is_system_file(path: str) -> bool:
    """Dot files, ``Thumbs.db``, ``desktop.ini``..., and anything under ``__MACOSX``."""
    return _is_system(path, os.path.basename(path))


def _is_system(path: str, name: str) -> bool:
    if name.startswith(".") or name.lower() in SYSTEM_FILE_NAMES:
        return True
    return "__MACOSX" in path and "__MACOSX" in path.split(os.sep)


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


def _norm(path: str) -> str:
    if os.sep == "/" and "//" not in path and "/." not in path and not path.endswith("/"):
        return path  # already normal (the common case: absolute paths from a walk)
    return os.path.normpath(path)


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symbolic link"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


class _UserFile:
    """An open regular file of a user's tree; reads are positional and bounded."""

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self.fd = fd
        self.st = st

    def pread(self, size: int, offset: int) -> bytes:
        chunks: list[bytes] = []
        while size > 0:
            chunk = os.pread(self.fd, min(size, 1 << 20), offset)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
        return b"".join(chunks)


def _with_user_file(path: str, use: Callable[[_UserFile], Any]) -> Any:
    """The one way this module reads a file of a user's tree.

    lstat first, so a FIFO, device or socket is never even opened; then open without
    following a symlink and without blocking (a FIFO swapped in meanwhile), and refuse
    anything fstat does not call a regular file.
    """
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(path, _kind(st.st_mode))
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(path, _kind(st.st_mode))
        return use(_UserFile(fd, st))
    finally:
        os.close(fd)


def _read_head(path: str, size: int) -> bytes:
    data: bytes = _with_user_file(path, lambda f: f.pread(size, 0))
    return data


def _read_small(path: str, limits: GroupingLimits = DEFAULT_LIMITS) -> bytes:
    cap = limits.max_key_file_bytes

    def read(f: _UserFile) -> bytes:
        if f.st.st_size > cap:
            raise _over_size(f.st.st_size, cap)
        data = f.pread(cap + 1, 0)
        if len(data) > cap:
            raise _over_size(len(data), cap)
        return data

    data: bytes = _with_user_file(path, read)
    return data


def _over_size(size: int, cap: int) -> KeyFileRejected:
    return KeyFileRejected(
        f"key file is {size:,} bytes, over the limit of {cap:,} bytes "
        "(GroupingLimits.max_key_file_bytes); not importing it"
    )


def _too_many(count: int, limits: GroupingLimits, what: str = "files") -> KeyFileRejected:
    return KeyFileRejected(
        f"key file declares {count:,} {what}, over the limit of {limits.max_members:,} members "
        "per fileset (GroupingLimits.max_members); not importing it"
    )


class _Budget:
    """A per-key-file deadline, checked cooperatively by every loop that can run long."""

    __slots__ = ("deadline", "limits", "n")

    def __init__(self, limits: GroupingLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.key_file_seconds
        self.n = 0

    def tick(self) -> None:
        self.n += 1
        if self.n & 255 == 0:
            self.check()

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise KeyFileRejected(
                f"reading the key file took longer than {self.limits.key_file_seconds:g} s "
                "(GroupingLimits.key_file_seconds); not importing it"
            )

    def count(self, n: int, what: str = "files") -> None:
        """Refuse a declared member count over the cap, before anything is built."""
        if n > self.limits.max_members:
            raise _too_many(n, self.limits, what)


def _default_budget() -> _Budget:
    return _Budget(DEFAULT_LIMITS)


_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^{}]*))?\}")
_TR = re.compile(r"tr\((\w),(\w)\)")


def _render(template: str, values: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        value = values.get(m.group(1), "")
        spec = m.group(2)
        if not spec:
            return value
        if spec == "inner":
            return value[1:-1]
        tr = _TR.fullmatch(spec)
        if tr is None:
            raise ValueError(f"unknown template transform {spec!r} in {template!r}")
        src, dst = tr.group(1).lower(), tr.group(2).lower()
        return "".join((dst.upper() if ch.isupper() else dst) if ch.lower() == src else ch for ch in value)

    return _PLACEHOLDER.sub(sub, template)


# ----------------------------------------------------------------------------- content parsers


@dataclass
class ContentRefs:
    """What a content parser found: required members (each a tuple of alternatives),
    optional members, and a redirect (this file belongs to another key file).

    ``dotdot`` keeps (directory, name as written) for names with a ``..`` component: the
    normalised path hides a symlink the kernel would follow before the ``..``, so those
    are checked step by step. ``cacheable`` is False when the result depends on more
    than the file's own bytes (a regular-expression pattern lists a directory).
    """

    required: list[tuple[str, ...]] = field(default_factory=list)
    optional: list[str] = field(default_factory=list)
    redirect: str | None = None
    dotdot: list[tuple[str, str]] = field(default_factory=list)
    cacheable: bool = True

    def ref(self, where: str, value: str) -> str:
        """The normalised path of ``value`` written in a file of ``where``."""
        if ".." in value and ".." in value.replace("\\", "/").split("/"):
            self.dotdot.append((where, value))
        return _norm(os.path.join(where, value))

    def size(self) -> int:
        return len(self.required) + len(self.optional)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_attrs(
    data: bytes, wanted: Mapping[str, Sequence[str]], budget: _Budget | None = None
) -> Iterator[tuple[str, str, str]]:
    """Yield (element, attribute, value) for the wanted local element/attribute names.

    Fed in chunks, with finished elements cleared, so a large file is parsed in bounded
    memory and the deadline is checked as it goes.
    """
    budget = budget or _default_budget()
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
    step = 1 << 16
    chunks = [data[at : at + step] for at in range(0, len(data), step)]
    for i in range(len(chunks) + 1):
        budget.check()
        if i < len(chunks):
            parser.feed(chunks[i])
        else:
            parser.close()
        for item in parser.read_events():
            event, elem = item[0], item[-1]
            if not isinstance(elem, ET.Element):
                continue
            if event == "end":
                elem.clear()
                continue
            budget.tick()
            local = _local(elem.tag)
            for attr in wanted.get(local, ()):
                value = elem.get(attr)
                if value:
                    yield local, attr, value


def parse_ome_xml(data: bytes, where: str, budget: _Budget | None = None) -> ContentRefs:
    """UUID/@FileName references (TiffData) and BinaryOnly/@MetadataFile."""
    budget = budget or _default_budget()
    refs = ContentRefs()
    seen: set[str] = set()
    for elem, _attr, value in _xml_attrs(
        data, {"UUID": ("FileName",), "BinaryOnly": ("MetadataFile",)}, budget
    ):
        path = refs.ref(where, value)
        if elem == "BinaryOnly":
            refs.redirect = path
        elif path not in seen:
            seen.add(path)
            refs.required.append((path,))
            budget.count(len(seen))
    return refs


def tiff_description(
    path: str, limit: int | None = None, limits: GroupingLimits = DEFAULT_LIMITS
) -> bytes | None:
    """ImageDescription (tag 270) of the first IFD of a classic or Big TIFF, or None.

    Raises :class:`KeyFileRejected` for an IFD or a description over the caps: the
    importer would read what we could not, so such a file is not imported at all.
    """
    cap = limits.max_tiff_description_bytes if limit is None else limit
    return _with_user_file(path, lambda f: _tiff_description(f, cap, limits.max_tiff_entries))  # type: ignore[no-any-return]


def _tiff_description(fh: _UserFile, limit: int, max_entries: int) -> bytes | None:
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


Parser = Callable[[str, _Budget, bool], ContentRefs]
"""(key file, budget, confined) -> references; ``confined`` when a user root is given."""


def _parse_ome_companion(path: str, budget: _Budget, _confined: bool) -> ContentRefs:
    refs = parse_ome_xml(_read_small(path, budget.limits), os.path.dirname(path), budget)
    refs.redirect = None
    return refs


def _parse_ome_tiff(path: str, budget: _Budget, _confined: bool) -> ContentRefs:
    desc = tiff_description(path, limits=budget.limits)
    if not desc or b"<OME" not in desc[:4096]:
        return ContentRefs()
    refs = parse_ome_xml(desc, os.path.dirname(path), budget)
    me = _norm(path)
    refs.required = [alts for alts in refs.required if alts[0] != me]
    if refs.redirect == me:
        refs.redirect = None
    return refs


def _nd_values(text: str) -> tuple[dict[str, str], list[str]]:
    """Key/value pairs and wave names of a MetaMorph .nd (values may span lines)."""
    values: dict[str, str] = {}
    wave_names: list[str] = []
    key = ""
    current: list[str] = []

    def flush() -> None:
        value = "\n".join(current)
        if key.startswith("WaveName"):
            wave_names.append(value[1:-1] if len(value) >= 2 else "")
        elif key:
            values.setdefault(key, value)

    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        comma = line.find(",")
        if comma <= 0 and "EndFile" not in line:
            current.append(line)
            continue
        flush()
        key = line[1 : comma - 1].strip() if comma >= 1 else ""
        current = [line[comma + 1 :].strip()]
    flush()
    return values, wave_names


def _parse_metamorph_nd(path: str, budget: _Budget, _confined: bool) -> ContentRefs:
    """Stage file names a MetaMorph .nd implies (wave, stage, time), in our own words:

    a name is the .nd's stem, then ``_w<j><WaveName>`` when DoWave is true (the wave name
    only if WaveInFileName is not false; ``_ / \\ ( )`` become ``-``), ``_s<k>`` when there
    are stage positions, ``_t<i>`` for time-lapses; the file is the first of .STK, .TIF,
    .tif, .stk that exists. The count (time x stage x wave) is checked against the
    members cap before any name is built.
    """
    values, wave_names = _nd_values(_read_small(path, budget.limits).decode("utf-8", "surrogateescape"))

    def flag(name: str, default: bool) -> bool:
        v = values.get(name)
        return default if v is None else v.strip().lower() == "true"

    def number(name: str, default: int) -> int:
        text = values.get(name, "").strip()
        if len(text) > 30:  # int() of a huge digit string is itself quadratic
            raise ValueError(f"{name}: not a number")
        try:
            return int(text)
        except ValueError:
            return default

    do_timelapse = flag("DoTimelapse", False)
    do_wave = flag("DoWave", False)
    use_wave_names = flag("WaveInFileName", True)
    channels = max(number("NWavelengths", 1), 1)
    times = number("NTimePoints", 0) if "NTimePoints" in values else 1
    times = max(times, 1)
    stages = max(number("NStagePositions", 0), 0)
    budget.count(
        times * max(stages, 1) * channels,
        f"files ({times:,} time points x {max(stages, 1):,} stages x {channels:,} wavelengths)",
    )

    stem = os.path.basename(path)
    stem = stem[: stem.rfind(".")]
    where = os.path.dirname(path)
    refs = ContentRefs()
    for t in range(times):
        for s in range(max(stages, 1)):
            for j in range(channels):
                budget.tick()
                name = stem
                if j < len(wave_names) and do_wave:
                    name += f"_w{j + 1}"
                    if use_wave_names:
                        wave = wave_names[j]
                        for ch in "_/\\()":
                            wave = wave.replace(ch, "-")
                        name += wave
                if stages > 0:
                    name += f"_s{s + 1}"
                if times > 1 or do_timelapse:
                    name += f"_t{t + 1}"
                full = os.path.join(where, name)
                refs.required.append(tuple(_norm(full + ext) for ext in (".STK", ".TIF", ".tif", ".stk")))
    return refs


_BLOCK = re.compile(r"<([^<>]*)>")


@dataclass(frozen=True)
class _Block:
    """One file-pattern block: a list of values, or a numeric/letter range."""

    values: tuple[str, ...] = ()
    begin: int = 0
    step: int = 1
    count: int = 0
    numeric: bool = True
    width: int = 0  # zero-padding width (fixed-width ranges), else 0
    lower: bool = False

    def __len__(self) -> int:
        return len(self.values) if self.values else self.count

    def items(self, budget: _Budget) -> Iterator[str]:
        if self.values:
            yield from self.values
            return
        for i in range(self.count):
            budget.tick()
            v = self.begin + i * self.step
            text = str(v) if self.numeric else _base36(v)
            if not self.numeric:
                text = text.lower() if self.lower else text.upper()
            yield text.rjust(self.width, "0") if self.width else text


def _parse_block(body: str) -> _Block:
    """A file-pattern block (Bio-Formats semantics, our implementation); sized, not built."""
    parts = body.split(",")
    if len(parts) > 1:
        return _Block(values=tuple(parts))
    bounds = body.split("-")
    if len(bounds) < 2:
        return _Block(values=(body,))
    begin = bounds[0]
    end, _, step_text = bounds[1].partition(":")
    step_text = step_text or "1"
    if max(len(begin), len(end), len(step_text)) > 30:  # int() of huge digit strings is slow
        raise ValueError(f"invalid file pattern block <{body[:40]}>")
    numeric = True
    try:
        b, e, s = int(begin), int(end), int(step_text)
    except ValueError:
        numeric = False
        try:
            b, e, s = int(begin, 36), int(end, 36), int(step_text, 36)
        except ValueError as exc:
            raise ValueError(f"invalid file pattern block <{body}>") from exc
    if s <= 0:
        raise ValueError(f"invalid step in file pattern block <{body}>")
    count = max((e - b) // s + 1, 0)
    width = len(end) if len(begin) == len(end) else 0
    return _Block(begin=b, step=s, count=count, numeric=numeric, width=width, lower=begin[:1].islower())


def _base36(v: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if v == 0:
        return "0"
    sign, v = ("-", -v) if v < 0 else ("", v)
    out = ""
    while v:
        v, r = divmod(v, 36)
        out = digits[r] + out
    return sign + out


def expand_file_pattern(pattern: str, budget: _Budget | None = None) -> list[str]:
    """All names a Bio-Formats file pattern with ``<...>`` blocks denotes.

    The count is the product of the block sizes, checked against the members cap
    before any name is built (:class:`KeyFileRejected` names it).
    """
    budget = budget or _default_budget()
    pieces = _BLOCK.split(pattern)
    literals, blocks = pieces[0::2], [_parse_block(b) for b in pieces[1::2]]
    total = 1
    for blk in blocks:
        total *= max(len(blk), 1)
        budget.count(total, "files (a file pattern's blocks multiplied out)")
    out: list[str] = []
    for combo in itertools.product(*(list(b.items(budget)) for b in blocks)):
        budget.tick()
        out.append("".join(lit + val for lit, val in zip(literals, (*combo, ""), strict=True)))
    return out


def _parse_file_pattern(path: str, budget: _Budget, confined: bool) -> ContentRefs:
    text = _read_small(path, budget.limits).decode("utf-8", "surrogateescape").strip()
    pattern = text.splitlines()[0].strip() if text else ""
    if not pattern:
        return ContentRefs()
    where = os.path.dirname(path)
    refs = ContentRefs()
    if _BLOCK.search(pattern):
        refs.required = [(refs.ref(where, p),) for p in expand_file_pattern(pattern, budget)]
        return refs
    refs.cacheable = False  # depends on what is on disk
    full = refs.ref(where, pattern)
    if os.path.lexists(full):
        refs.required = [(full,)]
        return refs
    refs.required = [(p,) for p in _regex_pattern_files(where, pattern, budget, confined)]
    return refs


def _regex_pattern_files(where: str, pattern: str, budget: _Budget, confined: bool) -> list[str]:
    """Files a block-less, absent pattern names: Bio-Formats 7.3.1 (FilePattern.buildFiles)
    takes the text after the last ``/`` as a Java regular expression and matches it
    against the base name of every file under the folder before it, recursively.

    Lab users write this text, and both ``re`` and Java backtrack (``(a|aa)*c`` never
    ends); we run it with the Rust ``regex`` crate (linear time, compiled size capped),
    which refuses back-references and look-around: such a pattern is not imported
    (rejecting regex patterns outright would break real ``.pattern`` files that work).
    """
    head, _, regex = pattern.rpartition("/")  # on POSIX a backslash is a regex escape
    directory = _norm(os.path.join(where, head)) if head else where
    try:
        st = os.lstat(directory)
    except (OSError, ValueError):
        st = None
    if st is None or not stat.S_ISDIR(st.st_mode):
        if confined:  # Bio-Formats would then list its own working directory
            raise KeyFileRejected(
                f"file pattern names the folder {_shown(head or '.')}, which is not a folder "
                "of the user's tree; not importing it"
            )
        return []
    found = _list_tree(directory, budget, confined)
    from omero_dropbox._native import regex_full_matches  # built with the package

    try:
        hits = regex_full_matches(regex, [os.path.basename(f) for f in found], budget.limits.max_regex_bytes)
    except ValueError as exc:
        raise KeyFileRejected(f"file pattern {_shown(regex)}: {exc}; not importing it") from exc
    budget.count(len(hits), "files (matched by a regular-expression file pattern)")
    return [found[i] for i in hits]


def _list_tree(top: str, budget: _Budget, confined: bool) -> list[str]:
    """Every non-directory under ``top`` (recursively, sorted), listed without following
    symlinks; bounded by ``max_listing``. In a user's tree a symlink (which Bio-Formats
    would follow) is an escape."""
    out: list[str] = []
    seen = 0
    stack = [top]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                budget.tick()
                seen += 1
                if seen > budget.limits.max_listing:
                    raise KeyFileRejected(
                        f"file pattern lists more than {budget.limits.max_listing:,} entries under "
                        f"{_shown(os.path.basename(top))} (GroupingLimits.max_listing); not importing it"
                    )
                if entry.is_symlink():
                    if confined:
                        raise KeyFileRejected(
                            f"file pattern searches {_shown(entry.path)}, a symbolic link; not importing it"
                        )
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    out.append(_norm(entry.path))
    out.sort()
    return out


def _parse_leica_lei(path: str, budget: _Budget, _confined: bool) -> ContentRefs:
    """TIFF names listed in a Leica .lei (block chain, tag 10 = series, 15 = images)."""
    data = _read_small(path, budget.limits)
    where = os.path.dirname(path)
    refs = ContentRefs()
    if len(data) < 16:
        return refs
    e = "<" if data[:4] == b"IIII" else ">"

    def i32(at: int) -> int:
        if at < 0 or at + 4 > len(data):
            raise ValueError("truncated .lei")
        return int(struct.unpack_from(e + "i", data, at)[0])

    seen: set[str] = set()
    addr = i32(12)
    blocks = 0
    while addr and blocks < 100_000:
        blocks += 1
        budget.tick()
        tags: dict[int, int] = {}
        pos = addr + 4
        tag = i32(pos)
        while tag != 0:
            budget.tick()
            tags[tag] = i32(pos + 4) + 16  # value follows a 12-byte header and a size
            pos += 8
            tag = i32(pos)
        addr = i32(pos + 4)
        if 10 not in tags or 15 not in tags:
            continue
        name_bytes = i32(tags[10] + 8) * 2
        at = tags[15]
        count = i32(at)
        if count < 0 or count * max(name_bytes, 1) > len(data):
            continue
        budget.count(len(seen) + count)
        at += 20
        for _ in range(count):
            budget.tick()
            raw = data[at : at + name_bytes]
            at += name_bytes
            name = raw.decode("utf-16-le", "replace").replace("\0", "").strip()
            if not name:
                continue
            full = refs.ref(where, name)
            if full not in seen:
                seen.add(full)
                refs.required.append((full,))
    return refs


def _parse_incell_xdce(path: str, budget: _Budget, _confined: bool) -> ContentRefs:
    where = os.path.dirname(path)
    refs = ContentRefs()
    seen: set[str] = set()
    wanted = {"Image": ("filename", "thumbnail")}
    for _elem, attr, value in _xml_attrs(_read_small(path, budget.limits), wanted, budget):
        full = refs.ref(where, value)
        if full in seen:
            continue
        seen.add(full)
        budget.count(len(seen))
        if attr == "filename":
            refs.required.append((full,))
        else:
            refs.optional.append(full)
    return refs


def _parse_mirax_slidedat(path: str, budget: _Budget, _confined: bool) -> ContentRefs:
    """Index and data files named in a MIRAX ``Slidedat.ini`` (OpenSlide's description)."""
    text = _read_small(path, budget.limits).decode("utf-8-sig", "replace")
    where = os.path.dirname(path)
    refs = ContentRefs()
    section = ""
    for raw in text.splitlines():
        budget.tick()
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().upper()
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip().upper(), value.strip()
        if (section == "HIERARCHICAL" and key == "INDEXFILE") or (
            section == "DATAFILE" and re.fullmatch(r"FILE_\d+", key)
        ):
            if value:
                refs.required.append((refs.ref(where, value),))
                budget.count(len(refs.required))
    return refs


# A real NRRD header is well under 1 KiB; a .nrrd holds its pixels after the header, so
# only the head is read.
NRRD_HEADER_BYTES = 1 << 20


def _parse_nrrd_header(path: str, budget: _Budget, _confined: bool) -> ContentRefs:
    """The pixel file an NRRD header names (``data file:`` or ``datafile:``; the last wins).

    As Bio-Formats 7.3.1 reads it: the header ends at the first empty line (lines after the
    first are trimmed), ``#`` and ``NRRD`` lines are skipped, and the value loses its text
    up to the first ``/`` before it is resolved from the header's folder (so
    ``./pix/a.raw`` is ``pix/a.raw``, ``/abs/a.raw`` is ``abs/a.raw``).
    """
    cap = min(NRRD_HEADER_BYTES, budget.limits.max_key_file_bytes)

    def read(f: _UserFile) -> tuple[bytes, int]:
        head = f.pread(min(cap, 1 << 14), 0)  # headers are short; a .nrrd's pixels follow
        if b"\n\n" not in head and b"\n\r\n" not in head and len(head) < min(cap, f.st.st_size):
            head = f.pread(cap, 0)
        return head, f.st.st_size

    head, size = _with_user_file(path, read)
    lines = head.split(b"\n")
    if len(head) < size and b"\n\n" not in head and b"\n\r\n" not in head:
        raise KeyFileRejected(
            f"NRRD header is longer than {cap:,} bytes (no empty line ends it); not importing it"
        )
    data_file: str | None = None
    for i, raw in enumerate(lines):
        budget.tick()
        line = raw.decode("utf-8", "surrogateescape").rstrip("\r")
        line = line if i == 0 else line.strip()
        if not line:
            break
        if line.startswith(("#", "NRRD")):
            continue
        key, colon, value = line.partition(":")
        if not colon:
            return ContentRefs()  # Bio-Formats fails on such a header: nothing to group
        if key.strip() in ("data file", "datafile"):
            data_file = value.strip()
    refs = ContentRefs()
    if data_file:
        data_file = data_file[data_file.find("/") + 1 :]
        if data_file:
            refs.required.append((refs.ref(os.path.dirname(path), data_file),))
    return refs


CONTENT_PARSERS: dict[str, Parser] = {
    "file_pattern": _parse_file_pattern,
    "metamorph_nd": _parse_metamorph_nd,
    "ome_companion": _parse_ome_companion,
    "ome_tiff": _parse_ome_tiff,
    "leica_lei": _parse_leica_lei,
    "incell_xdce": _parse_incell_xdce,
    "mirax_slidedat": _parse_mirax_slidedat,
    "nrrd_header": _parse_nrrd_header,
}


def _probe_nifti_header(path: str) -> bool:
    head = _read_head(path, 348)
    return len(head) >= 348 and head[344:348] in (b"ni1\0", b"n+1\0")


def _probe_ics_v2(path: str) -> bool:
    return re.search(rb"ics_version\s+2\.0", _read_head(path, 4096)) is not None


def _probe_unisoku_header(path: str) -> bool:
    return b":STM data" in _read_head(path, 9)


def _probe_fuji_inf(path: str) -> bool:
    """Bio-Formats reads an .img as Fuji when <base>.inf exists beside it (never followed)."""
    return os.path.lexists(path[: path.rfind(".")] + ".inf")


PROBES: dict[str, Callable[[str], bool]] = {
    "nifti_header": _probe_nifti_header,
    "ics_v2": _probe_ics_v2,
    "unisoku_header": _probe_unisoku_header,
    "fuji_inf": _probe_fuji_inf,
}


# ----------------------------------------------------------------------------- the grouper


def _last_token(name: str) -> str:
    """Lower-cased text after the last dot ("" without a dot): the suffix index key."""
    dot = name.rfind(".")
    return name[dot + 1 :].lower() if dot >= 0 else ""


@dataclass(frozen=True)
class _KeySuffix:
    rule: Rule
    suffix: str
    folded: str


@dataclass(frozen=True)
class _CompanionSuffix:
    rule: Rule
    companion: Companion
    folded: str
    match: re.Pattern[str] | None


@dataclass
class _Container:
    file: str  # the candidate visited (the file OMERO would give to setId)
    key: str
    used: list[str]  # key first, then members (given files only)
    missing: list[str]
    format: str
    rejected: str | None = None  # why this key file is not imported


def _shown(path: str) -> str:
    """A user's name for a reason: escaped, and never reading as "waiting" to the engine."""
    return display_path(path).replace("waiting", "waitin\\x67")


class _Confinement:
    """Whether a reference stays in the user's tree: lexically inside ``root``, and no
    symbolic link on any component below it (lstat each, cached for one grouping)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.normpath(os.path.abspath(root))
        self._prefix = self.root.rstrip(os.sep) + os.sep
        self._links: dict[str, str | None] = {self.root: None}

    def inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self._prefix)

    def is_link(self, path: str) -> bool:
        try:
            return stat.S_ISLNK(os.lstat(path).st_mode)
        except (OSError, ValueError):
            return False

    def link_on_way(self, directory: str) -> str | None:
        """The first symlink from root down to ``directory`` (included), or None."""
        chain: list[str] = []
        d = directory
        while d not in self._links and self.inside(d):
            chain.append(d)
            d = os.path.dirname(d)
        found = self._links.get(d)
        for d in reversed(chain):
            if found is None and self.is_link(d):
                found = d
            self._links[d] = found
        return found

    def problem(self, key_dir: str, ref: str) -> str | None:
        """Why ``ref`` (normalised) escapes the tree, or None."""
        if not self.inside(ref):
            return _outside(key_dir, ref)
        link = self.link_on_way(os.path.dirname(ref))
        return None if link is None else _through_link(key_dir, ref, link)

    def stepwise(self, where: str, value: str, shown: str) -> str | None:
        """Walk ``value`` (with ``..``) from ``where`` as the kernel would, component by
        component: every step must stay inside and not be a symlink (``shown``: the name
        as the key file wrote it, for the reason)."""
        ref = os.path.normpath(os.path.join(where, shown))
        cur = os.sep if value.startswith(os.sep) else where
        for part in value.split(os.sep):
            if part in ("", "."):
                continue
            cur = os.path.dirname(cur) if part == ".." else os.path.join(cur, part)
            if not self.inside(cur):
                return _outside(where, ref)
            if self.is_link(cur):
                return _through_link(where, ref, cur)
        return None


def _outside(key_dir: str, ref: str) -> str:
    rel = os.path.relpath(ref, key_dir)
    shown = _shown(rel if rel.count(".." + os.sep) <= 2 else ref)  # far away: absolute reads better
    return f"key file refers to {shown}, outside the user's folder; not importing it"


def _through_link(key_dir: str, ref: str, link: str) -> str:
    return (
        f"key file refers to {_shown(os.path.relpath(ref, key_dir))} through the symbolic link "
        f"{_shown(os.path.relpath(link, key_dir))}, which may lead outside the user's folder; "
        "not importing it"
    )


@dataclass
class _Parsed:
    """A cached parse of one key file: its references or why it is refused, and what the
    confinement check needs (the distinct parent folders of the references)."""

    refs: ContentRefs | None
    rejected: str | None
    dirs: frozenset[str] = frozenset()

    def weight(self) -> int:
        """Paths held (what the cache bound counts)."""
        if self.refs is None:
            return 1
        return sum(map(len, self.refs.required)) + len(self.refs.optional) + 1

    def all_refs(self) -> Iterator[str]:
        if self.refs is None:
            return
        for alts in self.refs.required:
            yield from alts
        yield from self.refs.optional
        if self.refs.redirect is not None:
            yield self.refs.redirect


def _parsed(refs: ContentRefs | None, rejected: str | None) -> _Parsed:
    p = _Parsed(refs, rejected)
    p.dirs = frozenset(map(_dirname, p.all_refs()))
    return p


def _dirname(path: str) -> str:
    """``os.path.dirname`` of a normalised absolute path, without its generality (hot)."""
    at = path.rfind(os.sep)
    return path[:at] if at > 0 else (os.sep if at == 0 else "")


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


class _Pass:
    """State of one ``group()`` call: the given files, the confinement, folder listings."""

    def __init__(self, given: Mapping[str, str], root: str | None) -> None:
        self.given = given
        self.conf = _Confinement(root) if root is not None else None
        self.folders = FolderNames()


class FilesetGrouper:
    """Groups files into filesets with the rule table (see the module docstring).

    ``readers``: an ``omero.fs.readers`` file; when given, only rules and single-file
    suffixes of the listed Bio-Formats readers are used (rules for formats Bio-Formats
    does not read, such as MIRAX, are then off too). ``limits``: what one key file may
    cost (:class:`GroupingLimits`). Parse results are cached per key file (its path,
    device, inode, size and mtime), so a regroup does not re-read unchanged key files.
    """

    def __init__(
        self,
        readers: Path | None = None,
        rules: Sequence[Rule] = RULES,
        *,
        limits: GroupingLimits = DEFAULT_LIMITS,
        warn: bool = True,
        oracle: UsedFilesSource | None = None,
    ) -> None:
        self.readers_file = read_readers_file(readers) if readers is not None else None
        self.readers = self.readers_file.classes if self.readers_file is not None else None
        if warn and self.readers_file is not None and (warning := self.readers_file.warning()):
            log.warning("%s", warning)
        self.limits = limits
        # (path, st_dev, st_ino, st_size, st_mtime_ns) -> parse; LRU, limits.cache_entries
        self._cache: OrderedDict[tuple[str, int, int, int, int], _Parsed] = OrderedDict()
        self._cached_paths = 0  # paths held by the cache, bounded by limits.cache_paths
        enabled = [r for r in rules if self._reader_enabled(r.reader)]
        for r in enabled:
            for spec in r.members:
                if isinstance(spec, Content) and spec.parser not in CONTENT_PARSERS:
                    raise ValueError(f"rule {r.format!r}: unknown content parser {spec.parser!r}")
            if r.probe is not None and r.probe not in PROBES:
                raise ValueError(f"rule {r.format!r}: unknown probe {r.probe!r}")
        self._rules = tuple(enabled)
        # suffix indexes: last extension token -> entries in rule order
        self._keys: dict[str, list[_KeySuffix]] = {}
        self._companions: dict[str, list[_CompanionSuffix]] = {}
        for r in enabled:
            for suffix in r.key:
                entry = _KeySuffix(r, suffix, suffix if r.case_sensitive else suffix.lower())
                self._keys.setdefault(_last_token(suffix), []).append(entry)
            for c in r.companions:
                rx = re.compile(c.match) if c.match else None
                self._companions.setdefault(_last_token(c.suffix), []).append(
                    _CompanionSuffix(r, c, c.suffix.lower(), rx)
                )
        suffixes: set[str] = set()
        for cls, _fmt, sufs in (*READER_SUFFIXES, *((c, "", s) for c, s in OTHER_READERS.items())):
            if self._reader_enabled(cls):
                suffixes.update(s.strip().lower() for s in sufs if s.strip())
        self._single_suffixes = frozenset(suffixes)
        self.oracle = oracle
        self._oracle_suffixes = frozenset(
            suffix
            for suffix, readers_ in ORACLE_SUFFIXES.items()
            if any(self._reader_enabled(r) for r in readers_)
        )
        # (path, dev, ino, size, mtime_ns, folder mtime_ns) -> answer; LRU, limits.cache_entries
        self._oracle_cache: OrderedDict[tuple[str, int, int, int, int, int], UsedFiles | None] = OrderedDict()
        self._max_suffix_parts = max((s.count(".") + 1 for s in suffixes), default=1)

    def _reader_enabled(self, reader: str | None) -> bool:
        if self.readers is None:
            return True
        return reader is not None and reader in self.readers

    # -- classification

    def _match_rule(self, path: str, name: str) -> tuple[Rule, dict[str, str]] | None:
        entries = self._keys.get(_last_token(name))
        if not entries:
            return None
        lowered = name.lower()
        for entry in entries:
            subject = name if entry.rule.case_sensitive else lowered
            n = len(entry.suffix)
            if len(name) <= n or not subject.endswith(entry.folded):
                continue
            if entry.rule.probe is not None:
                try:
                    if not PROBES[entry.rule.probe](path):
                        continue
                except (OSError, ValueError):
                    continue
            dot = name.rfind(".")
            values = {
                "name": name,
                "base": name[:dot] if dot >= 0 else name,
                "stem": name[:-n],
                "ext": name[-n + 1 :],
            }
            return entry.rule, values
        return None

    def is_single(self, path: str) -> bool:
        """True if some enabled Bio-Formats reader declares the file's suffix."""
        return self._is_single_name(os.path.basename(path))

    def _is_single_name(self, name: str) -> bool:
        parts = name.lower().split(".")
        for k in range(1, min(len(parts) - 1, self._max_suffix_parts) + 1):
            if ".".join(parts[-k:]) in self._single_suffixes:
                return True
        return False

    def _companion_reason(
        self, path: str, name: str, given: Mapping[str, str]
    ) -> tuple[str, tuple[str, ...]] | None:
        """Why a companion is unclaimed, and the key files it waits for (none if one is given)."""
        entries = self._companions.get(_last_token(name))
        if not entries:
            return None
        lowered = name.lower()
        for entry in entries:
            n = len(entry.folded)
            if len(name) <= n or not lowered.endswith(entry.folded):
                continue
            if entry.match is not None and entry.match.fullmatch(name) is None:
                continue
            where = os.path.dirname(path)
            values = {
                "name": name,
                "stem": name[:-n],
                "ext": name[-n + 1 :],
                "dir1": os.path.basename(where),
                "dir2": os.path.basename(os.path.dirname(where)),
            }
            keys = [_norm(os.path.join(where, _render(t, values))) for t in entry.companion.keys]
            present = [k for k in keys if k in given]
            if present:
                return f"companion not used by its key file ({os.path.basename(present[0])})", ()
            wanted = os.path.basename(keys[0]) if keys else "its key file"
            return f"companion waiting for its key file ({name} needs {wanted})", tuple(keys)
        return None

    # -- members of one candidate

    def _content(self, spec: Content, source: str, p: _Pass) -> _Parsed | None:
        """The parse of ``source`` (cached by its identity and mtime), or None if unreadable."""
        try:
            st = os.lstat(source)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return _parsed(None, f"key file is not a regular file ({_kind(st.st_mode)}); not importing it")
        ck = (source, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._cache.get(ck)
        if hit is not None:
            self._cache.move_to_end(ck)
            return hit
        try:
            result = _parsed(
                CONTENT_PARSERS[spec.parser](source, _Budget(self.limits), p.conf is not None), None
            )
        except KeyFileRejected as exc:
            result = _parsed(None, exc.reason)
        except NotRegularFileError as exc:  # swapped in after the lstat above
            result = _parsed(None, f"key file is not a regular file ({exc.kind}); not importing it")
        except OSError:
            return None  # unreadable now (permissions, vanished): not cached, read again next time
        except (ValueError, ET.ParseError, struct.error, UnicodeError):
            result = _parsed(ContentRefs(), None)  # malformed: Bio-Formats will say so at import
        weight = result.weight()
        if (result.refs is None or result.refs.cacheable) and weight <= self.limits.cache_paths:
            self._cache[ck] = result
            self._cached_paths += weight
            while (
                len(self._cache) > self.limits.cache_entries or self._cached_paths > self.limits.cache_paths
            ):
                self._cached_paths -= self._cache.popitem(last=False)[1].weight()
        return result

    def _confine(self, parsed: _Parsed, where: str, conf: _Confinement) -> None:
        """Refuse a parse with a reference outside ``conf``'s tree (lexically or by a symlink).

        References are normalised, so each is inside exactly when its folder is: only the
        distinct folders (one or a few per key file) are checked, then ``..`` names."""
        for d in sorted(parsed.dirs):
            problem: str | None = None
            d = d if os.path.isabs(d) else os.path.abspath(d)  # given paths are absolute in the engine
            if not conf.inside(d):
                problem = "outside"
            elif (link := conf.link_on_way(d)) is not None:
                problem = link
            if problem is not None:
                ref = next(r for r in parsed.all_refs() if os.path.abspath(_dirname(r)) == d)
                raise KeyFileRejected(
                    _outside(where, ref) if problem == "outside" else _through_link(where, ref, problem)
                )
        walked: set[tuple[str, str]] = set()
        for base, value in parsed.refs.dotdot if parsed.refs is not None else ():
            head, _, tail = value.rpartition(os.sep)
            probe = value if tail in ("", ".", "..") else head  # a leaf is checked by take()
            if (base, probe) not in walked:
                walked.add((base, probe))
                problem = conf.stepwise(base, probe, value)
                if problem is not None:
                    raise KeyFileRejected(problem)

    def _folder_files(
        self, folder: str, spec: Folder, budget: _Budget, confined: bool, where: str
    ) -> Iterator[str]:
        """Regular files under ``folder`` matching ``spec.glob`` level by level, listed with
        lstat semantics (a symlink is never followed; in a user's tree it is an escape)."""
        segments = spec.glob.split("/")
        wanted = tuple(x.lower() for x in spec.suffixes)
        level = [folder]
        listed = 0
        for depth, segment in enumerate(segments):
            last = depth == len(segments) - 1
            deeper: list[str] = []
            for d in level:
                try:
                    entries = sorted(os.scandir(d), key=lambda e: e.name)
                except OSError:
                    continue
                listed += len(entries)
                if listed > self.limits.max_listing:
                    raise KeyFileRejected(
                        f"folder {_shown(os.path.relpath(folder, where))} holds more than "
                        f"{self.limits.max_listing:,} entries (GroupingLimits.max_listing); not importing it"
                    )
                for entry in entries:
                    budget.tick()
                    if entry.name.startswith(".") or not fnmatchcase(entry.name, segment):
                        continue
                    if last and wanted and not entry.name.lower().endswith(wanted):
                        continue
                    if entry.is_symlink():
                        if confined:
                            raise KeyFileRejected(_through_link(where, entry.path, entry.path))
                        continue
                    if last and entry.is_file(follow_symlinks=False):
                        yield _norm(entry.path)
                    elif not last and entry.is_dir(follow_symlinks=False):
                        deeper.append(entry.path)
            level = deeper

    def _evaluate(
        self, path: str, rule: Rule, values: dict[str, str], p: _Pass
    ) -> tuple[list[str], list[str], str | None]:
        """(members, missing, redirect) for a candidate key file; raises
        :class:`KeyFileRejected` for a key file that must not be imported."""
        where = os.path.dirname(path)
        given, conf = p.given, p.conf
        members: dict[str, None] = {}
        missing: dict[str, None] = {}
        redirect: str | None = None
        me = _norm(path)
        budget = _Budget(self.limits)

        def take(alternatives: Sequence[str], required: bool) -> None:
            budget.tick()
            for alt in alternatives:
                if alt in given:
                    if alt != me:
                        members[alt] = None
                    return
            for alt in alternatives:
                if not p.folders.may_exist(alt):
                    continue
                try:
                    st = os.lstat(alt)
                except (OSError, ValueError):
                    continue
                if conf is not None and stat.S_ISLNK(st.st_mode):
                    raise KeyFileRejected(_through_link(where, alt, alt))
                missing[alt] = None
                return
            if required and alternatives:
                missing[alternatives[0]] = None

        for spec in rule.members:
            if isinstance(spec, Sibling):
                named = [_norm(os.path.join(where, _render(t, values))) for t in spec.templates]
                if conf is not None:
                    self._confine(_parsed(ContentRefs(required=[tuple(named)]), None), where, conf)
                take(named, spec.required)
            elif isinstance(spec, Content):
                source = (
                    me if spec.source is None else _norm(os.path.join(where, _render(spec.source, values)))
                )
                if source not in given:
                    continue
                parsed = self._content(spec, source, p)
                if parsed is None:
                    continue
                if parsed.rejected is not None:
                    raise KeyFileRejected(parsed.rejected)
                if conf is not None:
                    self._confine(parsed, where, conf)
                refs = parsed.refs or ContentRefs()
                for alts in refs.required:
                    take(alts, spec.required)
                for opt in refs.optional:
                    take((opt,), False)
                if refs.redirect is not None and refs.redirect != me:
                    redirect = refs.redirect
            elif isinstance(spec, Folder):
                folder = _norm(os.path.join(where, _render(spec.folder, values)))
                if conf is not None:
                    self._confine(_parsed(ContentRefs(required=[(folder,)]), None), where, conf)
                try:
                    st: os.stat_result | None = os.lstat(folder)
                except (OSError, ValueError):
                    st = None
                if st is not None and stat.S_ISLNK(st.st_mode) and conf is not None:
                    raise KeyFileRejected(_through_link(where, folder, folder))
                if st is None or not stat.S_ISDIR(st.st_mode):
                    if spec.required:
                        missing[folder + os.sep] = None
                    continue
                for found in self._folder_files(folder, spec, budget, conf is not None, where):
                    if found in given:
                        members[found] = None
                    else:
                        missing[found] = None
        for m in members:
            missing.pop(m, None)
        if len(members) + len(missing) > self.limits.max_members:
            raise _too_many(len(members) + len(missing), self.limits)
        return list(members), list(missing), redirect

    def _nest(self, members: list[str], missing: list[str], p: _Pass) -> tuple[list[str], list[str]]:
        """Add the members of members that are themselves key files (one level)."""
        out = dict.fromkeys(members)
        lost = dict.fromkeys(missing)
        for m in members:
            sep = m.rfind(os.sep)
            matched = self._match_rule(m, m[sep + 1 :])
            if matched is None or matched[0].nested:
                continue
            sub, sub_missing, _redirect = self._evaluate(m, matched[0], matched[1], p)
            out.update(dict.fromkeys(sub))
            lost.update(dict.fromkeys(sub_missing))
        for m in out:
            lost.pop(m, None)
        if len(out) + len(lost) > self.limits.max_members:
            raise _too_many(len(out) + len(lost), self.limits)
        return list(out), list(lost)

    # -- the opt-in Bio-Formats oracle

    def _asks_oracle(self, name: str) -> bool:
        return self.oracle is not None and _last_token(name) in self._oracle_suffixes

    def _ask_oracle(self, path: str) -> UsedFiles | None:
        """The oracle's answer for ``path``, cached while the file and its folder are
        unchanged (a member copied next to it changes the folder's mtime)."""
        assert self.oracle is not None
        try:
            st = os.lstat(path)
            dst = os.lstat(os.path.dirname(path))
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        ck = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, dst.st_mtime_ns)
        if ck in self._oracle_cache:
            self._oracle_cache.move_to_end(ck)
            return self._oracle_cache[ck]
        answer = self.oracle(path)
        self._oracle_cache[ck] = answer
        while len(self._oracle_cache) > self.limits.cache_entries:
            self._oracle_cache.popitem(last=False)
        return answer

    def _oracle_container(self, path: str, p: _Pass) -> _Container | str | None:
        """A container from Bio-Formats' used files of ``path``; the key file it waits for
        (a ``str``) when Bio-Formats names a key not given yet; None when the rule table
        decides (no answer, one file, or a file Bio-Formats cannot open)."""
        answer = self._ask_oracle(path)
        if answer is None:
            return None
        if answer.too_many:
            reason = (
                f"Bio-Formats uses {answer.too_many:,} files with it, over the limit of "
                f"{answer.limit:,} files the Bio-Formats oracle may list; not importing it"
            )
            return _Container(path, path, [path], [], answer.format, reason)
        raw = [os.path.abspath(f) for f in answer.files]  # Java does not resolve ".."
        files = list(dict.fromkeys(_norm(f) for f in raw))
        if len(files) > self.limits.max_members:
            return _Container(
                path, path, [path], [], answer.format, _too_many(len(files), self.limits).reason
            )
        if len(files) <= 1 and files in ([], [path]):
            return None
        where = os.path.dirname(path)
        try:
            if p.conf is not None:  # Bio-Formats' answer is confined as a key file's references
                self._confine(_parsed(ContentRefs(required=[(f,) for f in files]), None), where, p.conf)
                for f in files:
                    if f not in p.given and p.conf.is_link(f):
                        raise KeyFileRejected(_through_link(where, f, f))
                for f in raw:  # the kernel resolves a ".." after any link before it
                    if ".." in f.split(os.sep):
                        rel = f[len(p.conf.root) + 1 :] if p.conf.inside(f) else None
                        problem = (
                            p.conf.stepwise(p.conf.root, rel, rel)
                            if rel is not None
                            else _outside(where, _norm(f))
                        )
                        if problem is not None:
                            raise KeyFileRejected(problem)
        except KeyFileRejected as exc:
            return _Container(path, path, [path], [], answer.format, exc.reason)
        key = files[0]
        if key not in p.given:
            return key
        given = [f for f in files if f in p.given]
        missing = [f for f in files if f not in p.given]
        return _Container(path, key, [key] + [f for f in given if f != key], missing, answer.format)

    # -- grouping

    def group(self, files: Iterable[str], *, root: str | None = None) -> GroupingResult:
        """Group ``files``. With ``root`` (the user's folder), every reference a key file
        makes must stay inside it, lexically and with no symbolic link on the way; a key
        file that refers outside is unclaimed with a reason naming the reference (the
        importer would open whatever the key file names, whatever we group)."""
        given: dict[str, str] = {}
        for f in files:
            given.setdefault(_norm(f), f)
        p = _Pass(given, root)
        unclaimed: list[tuple[str, str]] = []
        awaited: list[tuple[str, tuple[str, ...]]] = []
        eligible: list[tuple[str, str]] = []  # (normalised path, base name), sorted
        system: list[str] = []  # never keys; members only if a rule names them
        sep = os.sep
        for norm in sorted(given):
            name = norm[norm.rfind(sep) + 1 :]
            if _is_system(norm, name):
                system.append(norm)
            else:
                eligible.append((norm, name))

        # 1-2. candidates, in sorted order, skipping files an earlier container uses
        containers: list[_Container] = []
        all_used: set[str] = set()
        redirects: dict[str, str] = {}
        for path, name in eligible:
            if path in all_used:
                continue
            matched = self._match_rule(path, name)
            if matched is None:
                if self._asks_oracle(name):
                    found = self._oracle_container(path, p)
                    if isinstance(found, str):
                        redirects[path] = found
                    elif found is not None:
                        containers.append(found)
                        all_used.update(found.used)
                continue
            rule, values = matched
            try:
                members, missing, redirect = self._evaluate(path, rule, values, p)
                if redirect is None and rule.nested:
                    members, missing = self._nest(members, missing, p)
            except KeyFileRejected as exc:
                containers.append(_Container(path, path, [path], [], rule.format, exc.reason))
                all_used.add(path)
                continue
            if redirect is not None:
                redirects[path] = redirect
                continue
            key = path
            if rule.key_choice == "first_member" and members:
                key = min(members)
            used = [key] + [f for f in [path, *members] if f != key]
            containers.append(_Container(path, key, used, missing, rule.format))
            all_used.update(used)

        # 3. OMERO's subsumption: drop a container another one uses, if it uses <= 1 file
        users: dict[str, int] = {}
        for c in containers:
            for f in set(c.used):
                users[f] = users.get(f, 0) + 1
        kept = [
            c
            for c in containers
            if c.rejected is not None or not (len(set(c.used) - {c.file}) <= 1 and users.get(c.file, 0) > 1)
        ]

        # 4. claims, in visiting order: never two filesets for one file
        claimed: set[str] = set()
        filesets: list[Fileset] = []
        for c in kept:
            if c.key in claimed:
                continue
            if c.rejected is not None:  # not imported; its members are not claimed by it
                claimed.add(c.key)
                unclaimed.append((given[c.key], c.rejected))
                continue
            files_ = [f for f in dict.fromkeys(c.used) if f not in claimed]
            claimed.update(files_)
            filesets.append(
                Fileset(
                    key=given[c.key],
                    files=tuple(sorted(given[f] for f in files_)),
                    format=c.format,
                    missing=tuple(sorted(c.missing)),
                )
            )

        # 5. everything else: waiting companions, single files, unknown files
        unclaimed += [(given[p], REASON_SYSTEM) for p in system if p not in claimed]
        for path, name in eligible:
            if path in claimed:
                continue
            original = given[path]
            target = redirects.get(path)
            if target is not None:
                if target in given:
                    reason = f"companion not used by its key file ({os.path.basename(target)})"
                else:
                    reason = f"companion waiting for its key file ({name} needs {os.path.basename(target)})"
                    awaited.append((original, (target,)))
                unclaimed.append((original, reason))
                continue
            companion = self._companion_reason(path, name, given)
            if companion is not None:
                unclaimed.append((original, companion[0]))
                if companion[1]:
                    awaited.append((original, companion[1]))
            elif (companion_of := COMPANION_SUFFIXES.get(_last_token(name))) is not None:
                unclaimed.append((original, f"metadata file of a {companion_of} dataset"))
            elif self._is_single_name(name):
                filesets.append(Fileset(key=original, files=(original,), format=SINGLE))
            else:
                unclaimed.append((original, REASON_UNKNOWN))

        return GroupingResult(
            filesets=tuple(sorted(filesets, key=lambda fs: fs.key)),
            unclaimed=tuple(sorted(unclaimed)),
            awaited=tuple(awaited),
        )


def group_paths(paths: Iterable[str], readers: Path | None = None) -> GroupingResult:
    """Convenience: ``FilesetGrouper(readers).group(paths)``."""
    return FilesetGrouper(readers).group(paths)


# ----------------------------------------------------------------------------- CLI hook


def _walk(paths: Sequence[str], errors: list[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        p = os.path.abspath(p)
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p, onerror=lambda e: errors.append(str(e))):
                dirs.sort()
                out.extend(os.path.join(root, n) for n in names)
        elif os.path.lexists(p):
            out.append(p)
        else:
            errors.append(f"{p}: no such file or directory")
    return out


def filesets_command(paths: Sequence[str], readers: Path | None, bioformats_oracle: bool = False) -> int:
    """``omero-dropbox filesets PATH...``: print one JSON object per line.

    Directories are walked recursively. Each fileset prints as
    ``{"key": ..., "files": [...], "format": ...}`` (plus ``"missing": [...]`` when members
    the rules expect are absent); each file that is not imported prints as
    ``{"skipped": path, "reason": ...}``. Paths are ``str`` as Python decodes them
    (undecodable bytes come out as ``\\udcXX`` escapes). Returns 0, or 1 if a path could
    not be read (reported on stderr), or 2 for a bad readers file. ``bioformats_oracle``:
    ask Bio-Formats (one JVM) about the files the rule table cannot decide.
    """
    errors: list[str] = []
    oracle: Any = None
    if bioformats_oracle:
        from omero_dropbox.bioformats import UsedFilesOracle

        oracle = UsedFilesOracle(readers)
    try:
        grouper = FilesetGrouper(readers, warn=False, oracle=oracle)  # warning said here, on stderr
    except ValueError as exc:
        print(f"omero-dropbox filesets: {exc}", file=sys.stderr)
        return 2
    if grouper.readers_file is not None and (warning := grouper.readers_file.warning()) is not None:
        print(f"omero-dropbox filesets: warning: {warning}", file=sys.stderr)
    from omero_dropbox.progress import progress_iter  # a line on stderr, on a terminal only

    try:
        result = grouper.group(progress_iter(_walk(paths, errors), "Reading"))
    finally:
        if oracle is not None:
            oracle.close()
    out = sys.stdout
    for fs in result.filesets:
        out.write(json.dumps(fs.to_json()) + "\n")
    for path, reason in result.unclaimed:
        out.write(json.dumps({"skipped": path, "reason": reason}) + "\n")
    out.flush()
    for err in errors:
        print(f"omero-dropbox filesets: {err}", file=sys.stderr)
    return 1 if errors else 0
