"""Grouping at its edges (issue 12, items 3 and 4), through the real ``omero-dropbox
filesets`` command and against Bio-Formats 7.3.1 itself (one long-lived JVM).

Each multi-file convention fixed here is written as small real files, grouped by the CLI
and by the Bio-Formats oracle (``ImageReader.setId`` + used files, ``ImportCandidates``
order), and the two must agree. Tests needing Java skip when it is not installed.
"""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from omero_dropbox.grouping import FilesetGrouper, read_readers_file
from omero_dropbox.grouping.formats_doc import render_formats_doc
from omero_dropbox.grouping.oracle import BioFormatsOracle, UsedFilesOracle
from omero_dropbox.grouping.readers import MULTI_FILE_FORMATS, READER_SUFFIXES
from omero_dropbox.grouping.rules import RULES
from tests.support.filesets import by_key, files_under, strs, write_ics, write_tiff

UNAVAILABLE = BioFormatsOracle.unavailable_reason()

CLI = [sys.executable, "-m", "omero_dropbox.cli"]


@pytest.fixture(scope="module")
def oracle() -> Iterator[BioFormatsOracle]:
    if UNAVAILABLE is not None:
        pytest.skip(UNAVAILABLE)
    with BioFormatsOracle(timeout=120) as o:
        yield o


def cli_filesets(*args: str) -> tuple[dict[str, set[str]], set[str], str]:
    """(key -> files, skipped files, stderr) of ``omero-dropbox filesets ARGS``."""
    proc = subprocess.run([*CLI, "filesets", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    groups = {r["key"]: set(r["files"]) for r in records if "key" in r}
    skipped = {r["skipped"] for r in records if "skipped" in r}
    return groups, skipped, proc.stderr


def agree(oracle: BioFormatsOracle, folder: Path, *args: str) -> dict[str, set[str]]:
    """The CLI's filesets for ``folder`` are Bio-Formats' filesets; returns them."""
    groups, skipped, _ = cli_filesets(*args, str(folder))
    expected = oracle.group(files_under(folder))
    assert groups == by_key(expected)
    assert skipped == {p for p, _ in expected.unclaimed}
    return groups


# ----------------------------------------------------------------------------- writers


def write_nrrd_header(d: Path, name: str, data: str | None, *, pixels: bool = True) -> Path:
    """A 4x4 8-bit NRRD header; ``data``: the ``data file:`` value (None: attached .nrrd)."""
    lines = ["NRRD0004", "# written by a test", "type: uint8", "dimension: 2", "sizes: 4 4", "encoding: raw"]
    if data is not None:
        lines.append(f"data file: {data}")
    body = ("\n".join(lines) + "\n\n").encode()
    if data is None and pixels:
        body += bytes(16)
    path = d / name
    path.write_bytes(body)
    return path


def write_fake(d: Path, name: str, ini: bool = True) -> list[Path]:
    fake = d / name
    fake.write_bytes(b"")
    if not ini:
        return [fake]
    settings = d / f"{name}.ini"
    settings.write_text("[series_0]\nsizeX=8\nsizeY=8\n")
    return [fake, settings]


# ----------------------------------------------------------------------------- item 3: formats


def test_detached_nrrd_header_is_one_import_as_bioformats(tmp_path: Path, oracle: BioFormatsOracle) -> None:
    """x.nhdr + x.raw was two imports (a duplicate image); Bio-Formats makes it one."""
    nhdr = write_nrrd_header(tmp_path, "x.nhdr", "x.raw")
    (tmp_path / "x.raw").write_bytes(bytes(16))
    # the value loses its text up to the first "/": "./pix/y.dat" is pix/y.dat
    other = write_nrrd_header(tmp_path, "y.nhdr", "./pix/y.img")
    (tmp_path / "pix").mkdir()
    (tmp_path / "pix" / "y.img").write_bytes(bytes(16))
    write_nrrd_header(tmp_path, "z.nrrd", None)  # attached: one file
    groups = agree(oracle, tmp_path)
    assert groups[str(nhdr)] == {str(nhdr), str(tmp_path / "x.raw")}
    assert groups[str(other)] == {str(other), str(tmp_path / "pix" / "y.img")}


def test_fake_with_its_ini_is_one_import_as_bioformats(tmp_path: Path, oracle: BioFormatsOracle) -> None:
    a, ini = write_fake(tmp_path, "a.fake")
    write_fake(tmp_path, "plain&sizeX=16.fake", ini=False)
    groups = agree(oracle, tmp_path)
    assert groups[str(a)] == {str(a), str(ini)}


def test_fake_ini_alone_waits_for_its_fake(tmp_path: Path) -> None:
    _fake, ini = write_fake(tmp_path, "a.fake")
    result = FilesetGrouper().group([str(ini)])
    assert result.filesets == ()
    assert result.unclaimed == ((str(ini), "companion waiting for its key file (a.fake.ini needs a.fake)"),)


def test_nrrd_header_before_its_data_file_is_incomplete(tmp_path: Path) -> None:
    nhdr = write_nrrd_header(tmp_path, "x.nhdr", "x.raw")
    (fs,) = FilesetGrouper().group([str(nhdr)]).filesets
    assert fs.key == str(nhdr) and fs.missing == (str(tmp_path / "x.raw"),)


def test_nrrd_data_file_outside_the_users_folder_is_refused(tmp_path: Path) -> None:
    """The data file is resolved as Bio-Formats does (first component dropped) and must stay
    in the user's folder; /etc/passwd becomes etc/passwd below the header, which is inside."""
    root = tmp_path / "amy"
    root.mkdir()
    bad = write_nrrd_header(root, "bad.nhdr", "x/../../secret.raw")
    absolute = write_nrrd_header(root, "abs.nhdr", "/etc/passwd")
    result = FilesetGrouper().group([str(bad), str(absolute)], root=str(root))
    reasons = dict(result.unclaimed)
    assert "outside the user's folder" in reasons[str(bad)] and "secret.raw" in reasons[str(bad)]
    assert by_key(result) == {str(absolute): {str(absolute)}}
    assert result.filesets[0].missing == (str(root / "etc" / "passwd"),)


def test_nrrd_data_file_through_a_symlinked_folder_is_refused(tmp_path: Path) -> None:
    root, zak = tmp_path / "amy", tmp_path / "zak"
    root.mkdir()
    zak.mkdir()
    (zak / "secret.raw").write_bytes(bytes(16))
    (root / "link").symlink_to(zak)
    nhdr = write_nrrd_header(root, "x.nhdr", "./link/secret.raw")
    result = FilesetGrouper().group([str(nhdr)], root=str(root))
    assert result.filesets == ()
    (reason,) = dict(result.unclaimed).values()
    assert "through the symbolic link link" in reason and "not importing it" in reason


def test_nrrd_header_without_end_is_refused_not_read_whole(tmp_path: Path) -> None:
    endless = tmp_path / "big.nrrd"
    endless.write_bytes(b"NRRD0004\n" + b"# comment line\n" * 80_000)  # ~1.2 MB, no empty line
    result = FilesetGrouper().group([str(endless)])
    (reason,) = dict(result.unclaimed).values()
    assert "NRRD header is longer than" in reason and "not importing it" in reason


def write_name_pairs(d: Path) -> dict[str, set[str]]:
    """Fuji LAS (.img + .inf), IMAGIC (.hed + .img), PCO-RAW (.pcoraw + .rec) and Unisoku
    (.HDR + .DAT): each a pair Bio-Formats opens as one image; returns key -> files."""
    inf = ["BAS_IMAGE_FILE", "fuji", "x", "100", "100", "8", "4", "4", "a", "b", "2004-01-01 10:00:00"]
    (d / "fuji.inf").write_text("\n".join(inf) + "\n")
    (d / "fuji.img").write_bytes(bytes(16))
    header = bytearray(1024)
    struct.pack_into("<ii", header, 48, 4, 4)  # rows, columns
    header[56:60] = b"PACK"  # 8-bit
    (d / "em.hed").write_bytes(bytes(header))
    (d / "em.img").write_bytes(bytes(16))
    write_tiff(d / "cam.pcoraw")
    (d / "cam.rec").write_text("Exposure / Delay: 10 ms\n")
    (d / "stm.HDR").write_bytes(b":STM data\r:data volume(x*y)\r4 4\r:ascii flag; data type\r0 2\r")
    (d / "stm.DAT").write_bytes(bytes(32))
    pairs = {"fuji.img": "fuji.inf", "em.hed": "em.img", "cam.pcoraw": "cam.rec", "stm.HDR": "stm.DAT"}
    return {str(d / k): {str(d / k), str(d / v)} for k, v in pairs.items()}


def test_name_paired_formats_are_one_import_each_as_bioformats(
    tmp_path: Path, oracle: BioFormatsOracle
) -> None:
    """Each pair was split (two imports, or a companion left waiting for an Analyze .hdr)."""
    expected = write_name_pairs(tmp_path)
    assert agree(oracle, tmp_path) == expected


def test_fuji_img_without_its_inf_is_not_fuji(tmp_path: Path) -> None:
    """The .inf decides, as in Bio-Formats: an .img alone still waits for an Analyze .hdr."""
    img = tmp_path / "a.img"
    img.write_bytes(bytes(16))
    assert FilesetGrouper().group([str(img)]).unclaimed == (
        (str(img), "companion waiting for its key file (a.img needs a.hdr)"),
    )


# ----------------------------------------------------------------------------- the opt-in oracle


def write_hitachi(d: Path, stem: str = "sem", image: str | None = None) -> list[Path]:
    """A Hitachi SEM image: an INI .txt whose ImageName names the pixel file (content)."""
    tif = write_tiff(d / f"{stem}.tif")
    txt = d / f"{stem}.txt"
    name = image or tif.name
    txt.write_text(f"[SemImageFile]\r\nSampleName=s\r\nImageName={name}\r\nDataSize=4x3\r\n")
    return [tif, txt]


@pytest.fixture(scope="module")
def used_files(oracle: BioFormatsOracle) -> UsedFilesOracle:
    return UsedFilesOracle(oracle=oracle)


def test_oracle_decides_what_the_rule_table_cannot(
    tmp_path: Path, oracle: BioFormatsOracle, used_files: UsedFilesOracle
) -> None:
    """A Hitachi .txt names its image in its content: by suffix alone it is two imports;
    with omero.fs.ng.bioformatsOracle it is Bio-Formats' one fileset, keyed by the .txt."""
    tif, txt = map(str, write_hitachi(tmp_path))
    write_ics(tmp_path, "other")  # rule-table formats are not asked
    files = files_under(tmp_path)
    assert len(FilesetGrouper().group(files).filesets) == 3
    got = FilesetGrouper(oracle=used_files).group(files)
    assert by_key(got) == by_key(oracle.group(files))
    assert by_key(got)[txt] == {tif, txt}
    assert {fs.format for fs in got.filesets} == {"Hitachi", "ICS"}


def test_oracle_through_the_filesets_command(tmp_path: Path, oracle: BioFormatsOracle) -> None:
    write_hitachi(tmp_path)
    code = (
        "import sys; from omero_dropbox.grouping.command import filesets_command; "
        "sys.exit(filesets_command(sys.argv[1:], None, bioformats_oracle=True))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    groups = {r["key"]: set(r["files"]) for r in map(json.loads, proc.stdout.splitlines()) if "key" in r}
    assert groups == by_key(oracle.group(files_under(tmp_path)))


def test_oracle_answer_is_confined_to_the_users_folder(tmp_path: Path, used_files: UsedFilesOracle) -> None:
    """Bio-Formats opens whatever the .txt names; outside the user's folder it is refused."""
    amy, zak = tmp_path / "amy", tmp_path / "zak"
    amy.mkdir()
    zak.mkdir()
    write_tiff(zak / "secret.tif")
    _tif, txt = write_hitachi(amy, image="../zak/secret.tif")
    result = FilesetGrouper(oracle=used_files).group(files_under(amy), root=str(amy))
    reasons = dict(result.unclaimed)
    assert "outside the user's folder" in reasons[str(txt)] and "secret.tif" in reasons[str(txt)]
    assert all(str(zak) not in f for fs in result.filesets for f in fs.files)


def test_oracle_answer_is_bounded(tmp_path: Path, oracle: BioFormatsOracle) -> None:
    _tif, txt = write_hitachi(tmp_path)
    bounded = UsedFilesOracle(oracle=oracle, max_files=1)
    result = FilesetGrouper(oracle=bounded).group([str(txt)])
    (reason,) = dict(result.unclaimed).values()
    assert "Bio-Formats uses 2 files" in reason and "limit of 1 files" in reason


def test_oracle_without_java_falls_back_to_the_rule_table(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = strs(write_hitachi(tmp_path))
    no_java = BioFormatsOracle(java=str(tmp_path / "no-such-java"))
    with caplog.at_level(logging.WARNING, logger="omero_dropbox.grouping.oracle"):
        got = FilesetGrouper(oracle=UsedFilesOracle(oracle=no_java)).group(files)
        again = FilesetGrouper(oracle=UsedFilesOracle(oracle=no_java)).group(files)
    assert by_key(got) == by_key(again) == by_key(FilesetGrouper().group(files))
    assert any("rule table only" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- item 4: readers


def test_readers_file_with_real_class_names_as_bioformats(tmp_path: Path, oracle: BioFormatsOracle) -> None:
    """loci.formats.in.TiffReader (a real reader, not in readers.txt) and the short ICSReader
    enable .tif and .ics, in the CLI and in Bio-Formats given the same readers file."""
    readers = tmp_path / "readers.txt"
    readers.write_text("loci.formats.in.TiffReader  # tif\nICSReader[type=internal]\n")
    data = tmp_path / "data"
    data.mkdir()
    tif = write_tiff(data / "cells.tif")
    ics, ids = write_ics(data, "a")
    write_fake(data, "a.fake")  # FakeReader is not listed: not imported
    groups, skipped, stderr = cli_filesets("--readers", str(readers), str(data))
    assert groups == {str(tif): {str(tif)}, str(ics): {str(ics), str(ids)}}
    with BioFormatsOracle(readers) as restricted:
        expected = restricted.group(files_under(data))
    assert groups == by_key(expected)
    assert skipped == {p for p, _ in expected.unclaimed}
    assert "warning" not in stderr


def test_unknown_reader_names_are_warned_naming_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    readers = tmp_path / "readers.txt"
    readers.write_text("loci.formats.in.TifReader\nNoSuchReader\nTiffDelegateReader\n")
    write_tiff(tmp_path / "a.tif")
    groups, _skipped, stderr = cli_filesets("--readers", str(readers), str(tmp_path / "a.tif"))
    assert groups == {str(tmp_path / "a.tif"): {str(tmp_path / "a.tif")}}
    assert "loci.formats.in.TifReader" in stderr and "NoSuchReader" in stderr
    assert "did you mean loci.formats.in.TiffReader" in stderr
    with caplog.at_level(logging.WARNING, logger="omero_dropbox.grouping.grouper"):
        FilesetGrouper(readers)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "NoSuchReader" in record.getMessage()


def test_bioformats_default_readers_txt_is_all_known(tmp_path: Path) -> None:
    """A copy of the jar's own readers.txt (external readers included) draws no warning."""
    jar = pytest.importorskip("zipfile")
    from omero_dropbox.grouping.oracle import find_jar

    path = find_jar()
    if path is None:
        pytest.skip("bioformats_package.jar not installed")
    readers = tmp_path / "readers.txt"
    with jar.ZipFile(path) as z:
        readers.write_bytes(z.read("loci/formats/readers.txt"))
    parsed = read_readers_file(readers)
    assert parsed.unknown == () and parsed.warning() is None
    assert "loci.formats.in.TiffDelegateReader" in parsed.classes


# ----------------------------------------------------------------------------- the formats table


def test_formats_doc_is_current() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "formats.md"
    assert doc.read_text() == render_formats_doc(), (
        "run: python -m omero_dropbox.grouping.formats_doc > docs/formats.md"
    )


def test_every_rule_of_a_bioformats_reader_is_in_the_formats_table() -> None:
    """Each reader with a rule is listed as grouped by the rule table, and each listed
    reader is a reader of the 7.3.1 jar (so the table cannot drift from the rules)."""
    table = {f"loci.formats.in.{f.reader}": f for f in MULTI_FILE_FORMATS}
    jar = {cls for cls, _fmt, _sufs in READER_SUFFIXES}
    for rule in RULES:
        if rule.reader is not None:
            assert table[rule.reader].handling == "rule", rule.reader
    assert set(table) <= jar
    assert all(
        f.oracle_suffixes or f.handling != "oracle" or f.reader == "BrukerReader" for f in table.values()
    )
