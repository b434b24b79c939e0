"""Writers of tiny but valid datasets of each multi-file format, and checks on a grouping.

The grouper's unit tests, the Bio-Formats comparison (tests/integration/test_filesets_bioformats.py),
the fuzzers and benches/bench_grouping.py all write their datasets with these.
"""

from __future__ import annotations

import io
import struct
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tifffile

from omero_dropbox.grouping import Fileset, GroupingResult

# ============================================================================ dataset writers

_TIFF_CACHE: dict[tuple[int, str], bytes] = {}


def tiny_tiff(value: int = 0, software: str = "") -> bytes:
    """Bytes of a valid 4x3 8-bit TIFF (cached: writing 100,000 of them stays cheap)."""
    key = (value, software)
    if key not in _TIFF_CACHE:
        buf = io.BytesIO()
        tifffile.imwrite(buf, np.full((3, 4), value, np.uint8), software=software or None)
        _TIFF_CACHE[key] = buf.getvalue()
    return _TIFF_CACHE[key]


def write_tiff(path: Path, value: int = 0, software: str = "") -> Path:
    path.write_bytes(tiny_tiff(value, software))
    return path


def write_ics(d: Path, stem: str = "img", version: int = 1, ext: str = "ics") -> list[Path]:
    """ICS 1.0 (.ics header + .ids pixels) or ICS 2.0 (one .ics)."""
    x, y = 4, 3
    header = (
        "\t\n"
        + "\n".join(
            [
                f"ics_version\t{version}.0",
                f"filename\t{stem}",
                "layout\tparameters\t3",
                "layout\torder\tbits\tx\ty",
                f"layout\tsizes\t8\t{x}\t{y}",
                "layout\tcoordinates\tvideo",
                "layout\tsignificant_bits\t8",
                "representation\tformat\tinteger",
                "representation\tsign\tunsigned",
                "representation\tcompression\tuncompressed",
                "representation\tbyte_order\t1",
                "end",
            ]
        )
        + "\n"
    )
    pixels = bytes(range(x * y))
    ics = d / f"{stem}.{ext}"
    if version == 1:
        ics.write_text(header)
        ids_ext = "".join(("D" if c == "C" else "d") if c in "cC" else c for c in ext)
        ids = d / f"{stem}.{ids_ext}"
        ids.write_bytes(pixels)
        return [ics, ids]
    ics.write_bytes(header.encode() + pixels)
    return [ics]


def write_analyze(d: Path, stem: str = "img", nifti: bool = False) -> list[Path]:
    """Analyze 7.5 (or NIfTI-1 pair, magic ``ni1``) .hdr + .img."""
    x, y, z = 4, 3, 1
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<i", h, 32, 16384)
    h[38] = ord("r")
    struct.pack_into("<8h", h, 40, 3, x, y, z, 1, 0, 0, 0)
    struct.pack_into("<h", h, 70, 2)  # unsigned char
    struct.pack_into("<h", h, 72, 8)
    struct.pack_into("<8f", h, 76, 1, 1, 1, 1, 0, 0, 0, 0)
    if nifti:
        struct.pack_into("<f", h, 108, 0.0)
        h[344:348] = b"ni1\0"
    hdr, img = d / f"{stem}.hdr", d / f"{stem}.img"
    hdr.write_bytes(bytes(h))
    img.write_bytes(bytes(x * y * z))
    return [hdr, img]


def write_dv(d: Path, name: str = "img.dv") -> Path:
    """A DeltaVision file: 1024-byte header, extended header, one 4x3 8-bit plane."""
    x, y, n = 4, 3, 1
    ints, floats = 8, 32
    ext = n * (ints + floats) * 4
    h = bytearray(1024)
    struct.pack_into("<4i", h, 0, x, y, n, 0)
    struct.pack_into("<i", h, 92, ext)
    struct.pack_into("<h", h, 96, -16224)  # 0xc0a0, little-endian
    struct.pack_into("<hh", h, 128, ints, floats)
    struct.pack_into("<h", h, 180, 1)
    struct.pack_into("<h", h, 196, 1)
    extended = bytearray(ext)
    for i in range(n):
        struct.pack_into(f"<{floats}f", extended, i * (ints + floats) * 4 + ints * 4, *[1.0] * floats)
    path = d / name
    path.write_bytes(bytes(h) + bytes(extended) + bytes(x * y * n))
    return path


def write_nd(
    d: Path,
    stem: str = "exp",
    waves: Sequence[str] = ("DAPI", "GFP"),
    stages: int = 0,
    times: int = 1,
    ext: str = "TIF",
    skip: Iterable[int] = (),
) -> list[Path]:
    """MetaMorph .nd and its stage TIFFs (returns the .nd first, then the stage files)."""
    lines = [
        '"NDInfoFile", Version 1.0',
        '"Description", File recreated from images.',
        '"StartTime1", 20100101 12:00:00',
        f'"DoTimelapse", {"TRUE" if times > 1 else "FALSE"}',
    ]
    if times > 1:
        lines.append(f'"NTimePoints", {times}')
    lines.append(f'"DoStage", {"TRUE" if stages else "FALSE"}')
    if stages:
        lines.append(f'"NStagePositions", {stages}')
        lines += [f'"Stage{s + 1}", "Pos{s + 1}"' for s in range(stages)]
    lines += ['"DoWave", TRUE', f'"NWavelengths", {len(waves)}']
    for j, wave in enumerate(waves):
        lines += [f'"WaveName{j + 1}", "{wave}"', f'"WaveDoZ{j + 1}", FALSE']
    lines += ['"DoZSeries", FALSE', '"EndFile"']
    nd = d / f"{stem}.nd"
    nd.write_text("\r\n".join(lines) + "\r\n")
    out = [nd]
    skipped = set(skip)
    index = 0
    for t in range(times):
        for s in range(max(stages, 1)):
            for j, wave in enumerate(waves):
                name = f"{stem}_w{j + 1}{wave.replace('_', '-')}"
                name += f"_s{s + 1}" if stages else ""
                name += f"_t{t + 1}" if times > 1 else ""
                if index not in skipped:
                    out.append(write_tiff(d / f"{name}.{ext}", j, software="MetaMorph"))
                index += 1
    return out


OME_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"


def _ome_image(tiffdata: str, size_t: int) -> str:
    return (
        '<Image ID="Image:0" Name="img"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" '
        f'Type="uint8" SizeX="4" SizeY="3" SizeZ="1" SizeC="1" SizeT="{size_t}" '
        f'BigEndian="false"><Channel ID="Channel:0:0" SamplesPerPixel="1"/>{tiffdata}'
        "</Pixels></Image>"
    )


def write_ome_tiffs(d: Path, stem: str = "multi", n: int = 2, companion: bool = True) -> list[Path]:
    """Multi-file OME-TIFF: n single-plane files, with a .companion.ome (BinaryOnly TIFFs)
    or with the full OME-XML in every TIFF. Returns the companion (if any) first."""
    uuids = [f"urn:uuid:{uuid.uuid4()}" for _ in range(n)]
    names = [f"{stem}_{i}.ome.tif" for i in range(n)]
    companion_uuid = f"urn:uuid:{uuid.uuid4()}"
    tiffdata = "".join(
        f'<TiffData FirstT="{i}" IFD="0" PlaneCount="1">'
        f'<UUID FileName="{names[i]}">{uuids[i]}</UUID></TiffData>'
        for i in range(n)
    )

    def full(u: str) -> str:
        return (
            f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{OME_NS}" UUID="{u}">'
            f"{_ome_image(tiffdata, n)}</OME>"
        )

    out: list[Path] = []
    if companion:
        comp = d / f"{stem}.companion.ome"
        comp.write_text(full(companion_uuid))
        out.append(comp)
    for i in range(n):
        if companion:
            desc = (
                f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{OME_NS}" UUID="{uuids[i]}">'
                f'<BinaryOnly MetadataFile="{stem}.companion.ome" UUID="{companion_uuid}"/></OME>'
            )
        else:
            desc = full(uuids[i])
        path = d / names[i]
        tifffile.imwrite(path, np.full((3, 4), i, np.uint8), description=desc, metadata=None, ome=False)
        out.append(path)
    return out


def write_pattern(d: Path, stem: str = "pat", n: int = 3, text: str | None = None) -> list[Path]:
    """A .pattern file and the TIFFs it names (``<stem>_z<1-n>.tif`` by default)."""
    tifs = [write_tiff(d / f"{stem}_z{i}.tif", i) for i in range(1, n + 1)]
    pattern = d / f"{stem}.pattern"
    pattern.write_text(text if text is not None else f"{stem}_z<1-{n}>.tif")
    return [pattern, *tifs]


def _utf16(s: str, chars: int) -> bytes:
    b = s.encode("utf-16-le")
    return b + bytes(chars * 2 - len(b))


def write_lei(d: Path, stem: str = "leica", n: int = 2) -> list[Path]:
    """Leica .lei (series, image-list and dimension blocks) and the TIFFs it lists."""
    names = [f"{stem}_z{i:03d}.tif" for i in range(n)]
    tifs = [write_tiff(d / nm, i) for i, nm in enumerate(names)]
    chars = 64

    def block(payload: bytes) -> bytes:  # 12 header bytes, a size, the payload
        return bytes(12) + struct.pack("<i", len(payload)) + payload

    series = struct.pack("<4i", 1, 1, chars, 8) + _utf16("tif", 4)
    images = struct.pack("<5i", n, 4, 3, 8, 1) + b"".join(_utf16(nm, chars) for nm in names)
    dims = [(120, 4), (121, 3), (122, n)]
    dim = struct.pack("<4i", 1, 0, 1, 8) + struct.pack("<3i", 0, 0, 0) + bytes(4)
    dim += struct.pack("<i", len(dims))
    for dim_id, size in dims:
        length = "1 um"
        dim += struct.pack("<4i", dim_id, size, 0, len(length)) + _utf16(length, len(length))
        dim += struct.pack("<i", 0)
    dim += struct.pack("<2i", 0, 0)
    blocks = [(10, block(series)), (15, block(images)), (20, block(dim))]
    first = 16
    offset = first + 4 + 8 * len(blocks) + 8
    directory, payloads = bytes(4), b""
    for tag, blk in blocks:
        directory += struct.pack("<2i", tag, offset + len(payloads))
        payloads += blk
    directory += struct.pack("<2i", 0, 0)
    lei = d / f"{stem}.lei"
    lei.write_bytes(b"IIII" + bytes(8) + struct.pack("<i", first) + directory + payloads)
    return [lei, *tifs]


def write_xdce(
    d: Path,
    stem: str = "plate",
    wells: Sequence[tuple[int, int]] = ((1, 1), (1, 2)),
    fields: int = 1,
    waves: Sequence[str] = ("DAPI",),
) -> list[Path]:
    """InCell 1000/2000 plate: an .xdce index and one TIFF per well, field and wave."""
    images: list[str] = []
    tifs: list[Path] = []
    for r, c in wells:
        for f in range(fields):
            for w, wave in enumerate(waves):
                name = f"{chr(64 + r)} - {c}(fld {f + 1} wv {wave} - {wave}).tif"
                tifs.append(write_tiff(d / name, w))
                images.append(
                    f'<Image filename="{name}" acquisition_time_ms="0">'
                    f'<Well label="{chr(64 + r)} - {c}"><Row number="{r}"/>'
                    f'<Column number="{c}"/></Well><Identifier field_index="{f}" '
                    f'z_index="0" wave_index="{w}" time_index="0"/></Image>'
                )
    plate_map = "".join(f'<Well><Row number="{r}"/><Column number="{c}"/></Well>' for r, c in wells)
    xml = (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n<ImageStack version="5.5">'
        '<Creation date="2020-01-01" time="12:00:00" application="IN Cell Analyzer 2000"/>'
        + "<!-- "
        + "padding " * 300  # Bio-Formats wants 2 KiB before it sniffs the magic string
        + "-->"
        + '<AutoLeadAcquisitionProtocol><Plate rows="8" columns="12"/>'
        + "".join('<Wavelength fusion_wave="false" imaging_mode="2-D"/>' for _ in waves)
        + '<ZDimensionParameters number_of_slices="1"/><PlateMap>'
        + plate_map
        + "".join(f'<offset_point x="{i}" y="0"/>' for i in range(fields))
        + f'</PlateMap></AutoLeadAcquisitionProtocol><Images number="{len(images)}">'
        + "".join(images)
        + "</Images></ImageStack>\n"
    )
    xdce = d / f"{stem}.xdce"
    xdce.write_text(xml, encoding="latin-1")
    return [xdce, *tifs]


def write_vsi(d: Path, stem: str = "slide", stacks: int = 1, frames: int = 1) -> list[Path]:
    """Olympus VSI layout: ``<stem>.vsi`` (a TIFF) and ``_<stem>_/stack<n>/*.ets``.

    The .ets files are placeholders: valid enough for grouping, not for Bio-Formats.
    """
    vsi = write_tiff(d / f"{stem}.vsi")
    out = [vsi]
    for s in range(stacks):
        folder = d / f"_{stem}_" / f"stack{10000 + s}"
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(frames):
            ets = folder / f"frame_t_{f}.ets"
            ets.write_bytes(b"SIS\0" + bytes(60))
            out.append(ets)
    return out


def write_mrxs(d: Path, stem: str = "slide", data_files: int = 2) -> list[Path]:
    """MIRAX layout (OpenSlide's description): ``<stem>.mrxs`` + ``<stem>/`` holding
    ``Slidedat.ini``, ``Index.dat`` and the ``Data*.dat`` files it lists."""
    mrxs = d / f"{stem}.mrxs"
    mrxs.write_bytes(b"\xff\xd8\xff\xe0MIRAX placeholder")
    folder = d / stem
    folder.mkdir(exist_ok=True)
    names = [f"Data{i:04d}.dat" for i in range(data_files)]
    ini = [
        "[GENERAL]",
        "SLIDE_VERSION = 01.03",
        "[HIERARCHICAL]",
        "INDEXFILE = Index.dat",
        "[DATAFILE]",
        f"FILE_COUNT = {data_files}",
        *[f"FILE_{i} = {n}" for i, n in enumerate(names)],
    ]
    (folder / "Slidedat.ini").write_text("\ufeff" + "\r\n".join(ini) + "\r\n", encoding="utf-8")
    (folder / "Index.dat").write_bytes(b"01.02" + bytes(16))
    for n in names:
        (folder / n).write_bytes(bytes(32))
    return [mrxs, folder / "Slidedat.ini", folder / "Index.dat", *(folder / n for n in names)]


# ============================================================================ helpers


def strs(paths: Iterable[Path]) -> list[str]:
    return [str(p) for p in paths]


def files_under(d: Path) -> list[str]:
    return sorted(str(p) for p in d.rglob("*") if p.is_file())


def by_key(result: GroupingResult) -> dict[str, set[str]]:
    return {fs.key: set(fs.files) for fs in result.filesets}


def only(result: GroupingResult) -> Fileset:
    assert len(result.filesets) == 1, result
    return result.filesets[0]


def check_invariants(given: Sequence[str], result: GroupingResult) -> None:
    """No file in two filesets; every given file is in one fileset or unclaimed."""
    seen: dict[str, str] = {}
    for fs in result.filesets:
        assert fs.key in fs.files
        assert list(fs.files) == sorted(fs.files)
        assert not set(fs.missing) & set(fs.files)
        for f in fs.files:
            assert f not in seen, f"{f} in {fs.key} and {seen[f]}"
            seen[f] = fs.key
    unclaimed = [p for p, _ in result.unclaimed]
    assert len(unclaimed) == len(set(unclaimed))
    assert not set(unclaimed) & set(seen)
    assert set(seen) | set(unclaimed) == set(given)
