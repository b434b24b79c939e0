"""Content parsers: the members a key file names (``.nd``, companion OME-XML, the OME-XML
of an OME-TIFF, ``.lei``, ``.xdce``, MIRAX ``Slidedat.ini``, NRRD headers; ``.pattern`` in
:mod:`omero_dropbox.grouping.file_pattern`).

A parser reads its key file through :mod:`omero_dropbox.grouping.user_files` (bounded,
no symlink, no FIFO), counts members against the cap before building names, and ticks
the key file's :class:`~omero_dropbox.grouping.limits.Budget` in every long loop.
"""

from __future__ import annotations

import os
import re
import struct
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence

from omero_dropbox.grouping.file_pattern import parse_file_pattern
from omero_dropbox.grouping.limits import Budget, KeyFileRejected, default_budget
from omero_dropbox.grouping.paths import norm_path
from omero_dropbox.grouping.refs import ContentRefs, Parser
from omero_dropbox.grouping.tiff import tiff_description
from omero_dropbox.grouping.user_files import UserFile, read_small, with_user_file

__all__ = ["CONTENT_PARSERS", "METAMORPH_STAGE_SUFFIXES", "NRRD_HEADER_BYTES", "parse_ome_xml"]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def xml_attrs(
    data: bytes, wanted: Mapping[str, Sequence[str]], budget: Budget | None = None
) -> Iterator[tuple[str, str, str]]:
    """Yield (element, attribute, value) for the wanted local element/attribute names.

    Fed in chunks, with finished elements cleared, so a large file is parsed in bounded
    memory and the deadline is checked as it goes.
    """
    budget = budget or default_budget()
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


def parse_ome_xml(data: bytes, where: str, budget: Budget | None = None) -> ContentRefs:
    """UUID/@FileName references (TiffData) and BinaryOnly/@MetadataFile."""
    budget = budget or default_budget()
    refs = ContentRefs()
    seen: set[str] = set()
    for elem, _attr, value in xml_attrs(
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


def _parse_ome_companion(path: str, budget: Budget, _confined: bool) -> ContentRefs:
    refs = parse_ome_xml(read_small(path, budget.limits), os.path.dirname(path), budget)
    refs.redirect = None
    return refs


def _parse_ome_tiff(path: str, budget: Budget, _confined: bool) -> ContentRefs:
    desc = tiff_description(path, limits=budget.limits)
    if not desc or b"<OME" not in desc[:4096]:
        return ContentRefs()
    refs = parse_ome_xml(desc, os.path.dirname(path), budget)
    me = norm_path(path)
    refs.required = [alts for alts in refs.required if alts[0] != me]
    if refs.redirect == me:
        refs.redirect = None
    return refs


#: A MetaMorph stage file is the first of these that exists (as Bio-Formats looks for it).
METAMORPH_STAGE_SUFFIXES = (".STK", ".TIF", ".tif", ".stk")


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


def _parse_metamorph_nd(path: str, budget: Budget, _confined: bool) -> ContentRefs:
    """Stage file names a MetaMorph .nd implies (wave, stage, time), in our own words:

    a name is the .nd's stem, then ``_w<j><WaveName>`` when DoWave is true (the wave name
    only if WaveInFileName is not false; ``_ / \\ ( )`` become ``-``), ``_s<k>`` when there
    are stage positions, ``_t<i>`` for time-lapses; the file is the first of .STK, .TIF,
    .tif, .stk that exists. The count (time x stage x wave) is checked against the
    members cap before any name is built.
    """
    values, wave_names = _nd_values(read_small(path, budget.limits).decode("utf-8", "surrogateescape"))

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
                refs.required.append(tuple(norm_path(full + ext) for ext in METAMORPH_STAGE_SUFFIXES))
    return refs


def _parse_leica_lei(path: str, budget: Budget, _confined: bool) -> ContentRefs:
    """TIFF names listed in a Leica .lei (block chain, tag 10 = series, 15 = images)."""
    data = read_small(path, budget.limits)
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


def _parse_incell_xdce(path: str, budget: Budget, _confined: bool) -> ContentRefs:
    where = os.path.dirname(path)
    refs = ContentRefs()
    seen: set[str] = set()
    wanted = {"Image": ("filename", "thumbnail")}
    for _elem, attr, value in xml_attrs(read_small(path, budget.limits), wanted, budget):
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


def _parse_mirax_slidedat(path: str, budget: Budget, _confined: bool) -> ContentRefs:
    """Index and data files named in a MIRAX ``Slidedat.ini`` (OpenSlide's description)."""
    text = read_small(path, budget.limits).decode("utf-8-sig", "replace")
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


def _parse_nrrd_header(path: str, budget: Budget, _confined: bool) -> ContentRefs:
    """The pixel file an NRRD header names (``data file:`` or ``datafile:``; the last wins).

    As Bio-Formats 7.3.1 reads it: the header ends at the first empty line (lines after the
    first are trimmed), ``#`` and ``NRRD`` lines are skipped, and the value loses its text
    up to the first ``/`` before it is resolved from the header's folder (so
    ``./pix/a.raw`` is ``pix/a.raw``, ``/abs/a.raw`` is ``abs/a.raw``).
    """
    cap = min(NRRD_HEADER_BYTES, budget.limits.max_key_file_bytes)

    def read(f: UserFile) -> tuple[bytes, int]:
        head = f.pread(min(cap, 1 << 14), 0)  # headers are short; a .nrrd's pixels follow
        if b"\n\n" not in head and b"\n\r\n" not in head and len(head) < min(cap, f.st.st_size):
            head = f.pread(cap, 0)
        return head, f.st.st_size

    head, size = with_user_file(path, read)
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
    "file_pattern": parse_file_pattern,
    "metamorph_nd": _parse_metamorph_nd,
    "ome_companion": _parse_ome_companion,
    "ome_tiff": _parse_ome_tiff,
    "leica_lei": _parse_leica_lei,
    "incell_xdce": _parse_incell_xdce,
    "mirax_slidedat": _parse_mirax_slidedat,
    "nrrd_header": _parse_nrrd_header,
}
