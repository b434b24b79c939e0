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
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import struct
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omero_dropbox.grouping_rules import (
    COMPANION_SUFFIXES,
    READER_SUFFIXES,
    RULES,
    SYSTEM_FILE_NAMES,
    Companion,
    Content,
    Folder,
    Rule,
    Sibling,
)

__all__ = [
    "Fileset",
    "FilesetGrouper",
    "GroupingResult",
    "filesets_command",
    "group_paths",
    "is_system_file",
    "load_readers",
]

SINGLE = "single"
REASON_SYSTEM = "system file"
REASON_UNKNOWN = "not a format Bio-Formats reads"
_MAX_SMALL_FILE = 64 << 20  # bytes read at most from an index/companion file
_MAX_PATTERN_FILES = 1_000_000


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


# ----------------------------------------------------------------------------- helpers


def is_system_file(path: str) -> bool:
    """Dot files, ``Thumbs.db``, ``desktop.ini``..., and anything under ``__MACOSX``."""
    return _is_system(path, os.path.basename(path))


def _is_system(path: str, name: str) -> bool:
    if name.startswith(".") or name.lower() in SYSTEM_FILE_NAMES:
        return True
    return "__MACOSX" in path and "__MACOSX" in path.split(os.sep)


def load_readers(path: Path) -> frozenset[str]:
    """Parse an ``omero.fs.readers`` file: reader class names, one a line, ``#`` comments."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ValueError(
            f"omero.fs.readers={path}: cannot read the readers file ({exc.strerror}); "
            "give a file of Bio-Formats reader class names, one per line"
        ) from exc
    names: set[str] = set()
    for line in text.splitlines():
        name = line.split("#", 1)[0].split("[", 1)[0].strip()
        if name:
            names.add(name)
    return frozenset(names)


def _norm(path: str) -> str:
    if os.sep == "/" and "//" not in path and "/." not in path and not path.endswith("/"):
        return path  # already normal (the common case: absolute paths from a walk)
    return os.path.normpath(path)


def _read_head(path: str, size: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


def _read_small(path: str) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(_MAX_SMALL_FILE + 1)
    if len(data) > _MAX_SMALL_FILE:
        raise ValueError(f"{path}: larger than {_MAX_SMALL_FILE} bytes")
    return data


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
    optional members, and a redirect (this file belongs to another key file)."""

    required: list[tuple[str, ...]] = field(default_factory=list)
    optional: list[str] = field(default_factory=list)
    redirect: str | None = None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_attrs(data: bytes, wanted: Mapping[str, Sequence[str]]) -> Iterator[tuple[str, str, str]]:
    """Yield (element, attribute, value) for the wanted local element/attribute names."""
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start",))
    parser.feed(data)
    parser.close()
    for item in parser.read_events():
        elem = item[-1] if isinstance(item, tuple) else None
        if not isinstance(elem, ET.Element):
            continue
        local = _local(elem.tag)
        for attr in wanted.get(local, ()):
            value = elem.get(attr)
            if value:
                yield local, attr, value


def parse_ome_xml(data: bytes, where: str) -> ContentRefs:
    """UUID/@FileName references (TiffData) and BinaryOnly/@MetadataFile."""
    refs = ContentRefs()
    seen: set[str] = set()
    for elem, _attr, value in _xml_attrs(data, {"UUID": ("FileName",), "BinaryOnly": ("MetadataFile",)}):
        path = _norm(os.path.join(where, value))
        if elem == "BinaryOnly":
            refs.redirect = path
        elif path not in seen:
            seen.add(path)
            refs.required.append((path,))
    return refs


def tiff_description(path: str, limit: int = _MAX_SMALL_FILE) -> bytes | None:
    """ImageDescription (tag 270) of the first IFD of a classic or Big TIFF, or None."""
    with open(path, "rb") as fh:
        head = fh.read(16)
        if head[:2] == b"II":
            e = "<"
        elif head[:2] == b"MM":
            e = ">"
        else:
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
        fh.seek(offset)
        raw = fh.read(8 if big else 2)
        if len(raw) < (8 if big else 2):
            return None
        (count,) = struct.unpack(e + ("Q" if big else "H"), raw)
        size = 20 if big else 12
        entries = fh.read(min(count, 4096) * size)
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
                return None
            if n <= inline:
                value = field_[:n]
            else:
                (where,) = struct.unpack(e + ("Q" if big else "I"), field_)
                fh.seek(where)
                value = fh.read(n)
            return value.rstrip(b"\0")
    return None


def _parse_ome_companion(path: str) -> ContentRefs:
    refs = parse_ome_xml(_read_small(path), os.path.dirname(path))
    refs.redirect = None
    return refs


def _parse_ome_tiff(path: str) -> ContentRefs:
    desc = tiff_description(path)
    if not desc or b"<OME" not in desc[:4096]:
        return ContentRefs()
    refs = parse_ome_xml(desc, os.path.dirname(path))
    me = _norm(path)
    refs.required = [alts for alts in refs.required if alts[0] != me]
    if refs.redirect == me:
        refs.redirect = None
    return refs


def _parse_metamorph_nd(path: str) -> ContentRefs:
    """Stage file names a MetaMorph .nd implies (wave, stage, time), in our own words:

    a name is the .nd's stem, then ``_w<j><WaveName>`` when DoWave is true (the wave name
    only if WaveInFileName is not false; ``_ / \\ ( )`` become ``-``), ``_s<k>`` when there
    are stage positions, ``_t<i>`` for time-lapses; the file is the first of .STK, .TIF,
    .tif, .stk that exists.
    """
    text = _read_small(path).decode("utf-8", "surrogateescape")
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

    def flag(name: str, default: bool) -> bool:
        v = values.get(name)
        return default if v is None else v.strip().lower() == "true"

    def number(name: str, default: int) -> int:
        try:
            return int(values.get(name, "").strip())
        except ValueError:
            return default

    do_timelapse = flag("DoTimelapse", False)
    do_wave = flag("DoWave", False)
    use_wave_names = flag("WaveInFileName", True)
    channels = max(number("NWavelengths", 1), 1)
    times = number("NTimePoints", 0) if "NTimePoints" in values else 1
    times = max(times, 1)
    stages = max(number("NStagePositions", 0), 0)

    stem = os.path.basename(path)
    stem = stem[: stem.rfind(".")]
    where = os.path.dirname(path)
    refs = ContentRefs()
    for t in range(times):
        for s in range(max(stages, 1)):
            for j in range(channels):
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


def _pattern_block(body: str) -> list[str]:
    """Elements of one file-pattern block (Bio-Formats semantics, our implementation)."""
    parts = body.split(",")
    if len(parts) > 1:
        return parts
    bounds = body.split("-")
    if len(bounds) < 2:
        return [body]
    begin = bounds[0]
    end, _, step_text = bounds[1].partition(":")
    step_text = step_text or "1"
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
    fixed = len(begin) == len(end)
    out: list[str] = []
    for v in range(b, e + 1, s):
        if numeric:
            text = str(v)
        else:
            text = _base36(v)
            text = text.lower() if begin[:1].islower() else text.upper()
        out.append(text.rjust(len(end), "0") if fixed else text)
        if len(out) > _MAX_PATTERN_FILES:
            raise ValueError("file pattern expands to too many files")
    return out


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


def expand_file_pattern(pattern: str) -> list[str]:
    """All names a Bio-Formats file pattern with ``<...>`` blocks denotes."""
    pieces = _BLOCK.split(pattern)
    literals, blocks = pieces[0::2], [_pattern_block(b) for b in pieces[1::2]]
    total = 1
    for blk in blocks:
        total *= max(len(blk), 1)
        if total > _MAX_PATTERN_FILES:
            raise ValueError("file pattern expands to too many files")
    out: list[str] = []
    for combo in itertools.product(*blocks):
        out.append("".join(lit + val for lit, val in zip(literals, (*combo, ""), strict=True)))
    return out


def _parse_file_pattern(path: str) -> ContentRefs:
    text = _read_small(path).decode("utf-8", "surrogateescape").strip()
    pattern = text.splitlines()[0].strip() if text else ""
    if not pattern:
        return ContentRefs()
    where = os.path.dirname(path)
    full = pattern if os.path.isabs(pattern) else os.path.join(where, pattern)
    refs = ContentRefs()
    if _BLOCK.search(full):
        refs.required = [(_norm(p),) for p in expand_file_pattern(full)]
    elif os.path.lexists(full):
        refs.required = [(_norm(full),)]
    else:
        # no blocks: Bio-Formats treats the file part as a regular expression
        directory, regex = os.path.split(full)
        try:
            rx = re.compile(regex)
            names = sorted(os.listdir(directory or "."))
        except (re.error, OSError):
            return refs
        refs.required = [
            (_norm(os.path.join(directory, n)),)
            for n in names
            if rx.fullmatch(n) and os.path.isfile(os.path.join(directory, n))
        ]
    return refs


def _parse_leica_lei(path: str) -> ContentRefs:
    """TIFF names listed in a Leica .lei (block chain, tag 10 = series, 15 = images)."""
    data = _read_small(path)
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
        tags: dict[int, int] = {}
        pos = addr + 4
        tag = i32(pos)
        while tag != 0:
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
        at += 20
        for _ in range(count):
            raw = data[at : at + name_bytes]
            at += name_bytes
            name = raw.decode("utf-16-le", "replace").replace("\0", "").strip()
            if not name:
                continue
            full = _norm(os.path.join(where, name))
            if full not in seen:
                seen.add(full)
                refs.required.append((full,))
    return refs


def _parse_incell_xdce(path: str) -> ContentRefs:
    where = os.path.dirname(path)
    refs = ContentRefs()
    seen: set[str] = set()
    for _elem, attr, value in _xml_attrs(_read_small(path), {"Image": ("filename", "thumbnail")}):
        full = _norm(os.path.join(where, value))
        if full in seen:
            continue
        seen.add(full)
        if attr == "filename":
            refs.required.append((full,))
        else:
            refs.optional.append(full)
    return refs


def _parse_mirax_slidedat(path: str) -> ContentRefs:
    """Index and data files named in a MIRAX ``Slidedat.ini`` (OpenSlide's description)."""
    text = _read_small(path).decode("utf-8-sig", "replace")
    where = os.path.dirname(path)
    refs = ContentRefs()
    section = ""
    for raw in text.splitlines():
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
                refs.required.append((_norm(os.path.join(where, value)),))
    return refs


CONTENT_PARSERS: dict[str, Callable[[str], ContentRefs]] = {
    "file_pattern": _parse_file_pattern,
    "metamorph_nd": _parse_metamorph_nd,
    "ome_companion": _parse_ome_companion,
    "ome_tiff": _parse_ome_tiff,
    "leica_lei": _parse_leica_lei,
    "incell_xdce": _parse_incell_xdce,
    "mirax_slidedat": _parse_mirax_slidedat,
}


def _probe_nifti_header(path: str) -> bool:
    head = _read_head(path, 348)
    return len(head) >= 348 and head[344:348] in (b"ni1\0", b"n+1\0")


def _probe_ics_v2(path: str) -> bool:
    return re.search(rb"ics_version\s+2\.0", _read_head(path, 4096)) is not None


PROBES: dict[str, Callable[[str], bool]] = {
    "nifti_header": _probe_nifti_header,
    "ics_v2": _probe_ics_v2,
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


class FilesetGrouper:
    """Groups files into filesets with the rule table (see the module docstring).

    ``readers``: an ``omero.fs.readers`` file; when given, only rules and single-file
    suffixes of the listed Bio-Formats readers are used (rules for formats Bio-Formats
    does not read, such as MIRAX, are then off too).
    """

    def __init__(self, readers: Path | None = None, rules: Sequence[Rule] = RULES) -> None:
        self.readers = load_readers(readers) if readers is not None else None
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
        for cls, _fmt, sufs in READER_SUFFIXES:
            if self._reader_enabled(cls):
                suffixes.update(s.strip().lower() for s in sufs if s.strip())
        self._single_suffixes = frozenset(suffixes)
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

    def _evaluate(
        self, path: str, rule: Rule, values: dict[str, str], given: Mapping[str, str]
    ) -> tuple[list[str], list[str], str | None]:
        """(members, missing, redirect) for a candidate key file."""
        where = os.path.dirname(path)
        members: dict[str, None] = {}
        missing: dict[str, None] = {}
        redirect: str | None = None
        me = _norm(path)

        def take(alternatives: Sequence[str], required: bool) -> None:
            for alt in alternatives:
                if alt in given:
                    if alt != me:
                        members[alt] = None
                    return
            for alt in alternatives:
                if os.path.lexists(alt):
                    missing[alt] = None
                    return
            if required and alternatives:
                missing[alternatives[0]] = None

        for spec in rule.members:
            if isinstance(spec, Sibling):
                named = [_norm(os.path.join(where, _render(t, values))) for t in spec.templates]
                take(named, spec.required)
            elif isinstance(spec, Content):
                source = (
                    me if spec.source is None else _norm(os.path.join(where, _render(spec.source, values)))
                )
                if source not in given:
                    continue
                try:
                    refs = CONTENT_PARSERS[spec.parser](source)
                except (OSError, ValueError, ET.ParseError, struct.error, UnicodeError):
                    continue
                for alts in refs.required:
                    take(alts, spec.required)
                for opt in refs.optional:
                    take((opt,), False)
                if refs.redirect is not None and refs.redirect != me:
                    redirect = refs.redirect
            elif isinstance(spec, Folder):
                folder = _norm(os.path.join(where, _render(spec.folder, values)))
                if not os.path.isdir(folder):
                    if spec.required:
                        missing[folder + os.sep] = None
                    continue
                wanted = tuple(x.lower() for x in spec.suffixes)
                for found in sorted(glob.glob(os.path.join(glob.escape(folder), spec.glob))):
                    if wanted and not found.lower().endswith(wanted):
                        continue
                    found = _norm(found)
                    if found in given:
                        members[found] = None
                    elif os.path.isfile(found):
                        missing[found] = None
        for m in members:
            missing.pop(m, None)
        return list(members), list(missing), redirect

    def _nest(
        self, members: list[str], missing: list[str], given: Mapping[str, str]
    ) -> tuple[list[str], list[str]]:
        """Add the members of members that are themselves key files (one level)."""
        out = dict.fromkeys(members)
        lost = dict.fromkeys(missing)
        for m in members:
            sep = m.rfind(os.sep)
            matched = self._match_rule(m, m[sep + 1 :])
            if matched is None or matched[0].nested:
                continue
            sub, sub_missing, _redirect = self._evaluate(m, matched[0], matched[1], given)
            out.update(dict.fromkeys(sub))
            lost.update(dict.fromkeys(sub_missing))
        for m in out:
            lost.pop(m, None)
        return list(out), list(lost)

    # -- grouping

    def group(self, files: Iterable[str]) -> GroupingResult:
        given: dict[str, str] = {}
        for f in files:
            given.setdefault(_norm(f), f)
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
                continue
            rule, values = matched
            members, missing, redirect = self._evaluate(path, rule, values, given)
            if redirect is not None:
                redirects[path] = redirect
                continue
            if rule.nested:
                members, missing = self._nest(members, missing, given)
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
        kept = [c for c in containers if not (len(set(c.used) - {c.file}) <= 1 and users.get(c.file, 0) > 1)]

        # 4. claims, in visiting order: never two filesets for one file
        claimed: set[str] = set()
        filesets: list[Fileset] = []
        for c in kept:
            if c.key in claimed:
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


def filesets_command(paths: Sequence[str], readers: Path | None) -> int:
    """``omero-dropbox filesets PATH...``: print one JSON object per line.

    Directories are walked recursively. Each fileset prints as
    ``{"key": ..., "files": [...], "format": ...}`` (plus ``"missing": [...]`` when members
    the rules expect are absent); each file that is not imported prints as
    ``{"skipped": path, "reason": ...}``. Paths are ``str`` as Python decodes them
    (undecodable bytes come out as ``\\udcXX`` escapes). Returns 0, or 1 if a path could
    not be read (reported on stderr), or 2 for a bad readers file.
    """
    errors: list[str] = []
    try:
        grouper = FilesetGrouper(readers)
    except ValueError as exc:
        print(f"omero-dropbox filesets: {exc}", file=sys.stderr)
        return 2
    from omero_dropbox.progress import progress_iter  # a line on stderr, on a terminal only

    result = grouper.group(progress_iter(_walk(paths, errors), "Reading"))
    out = sys.stdout
    for fs in result.filesets:
        out.write(json.dumps(fs.to_json()) + "\n")
    for path, reason in result.unclaimed:
        out.write(json.dumps({"skipped": path, "reason": reason}) + "\n")
    out.flush()
    for err in errors:
        print(f"omero-dropbox filesets: {err}", file=sys.stderr)
    return 1 if errors else 0
