"""The table-driven grouper against Bio-Formats itself (real files, real Java).

One long-lived JVM (``BioFormatsOracle``) serves the whole session. Each scenario writes
a small dataset that Bio-Formats 7.3.1 reads, asks the oracle how the OMERO importer
would group it (``ImageReader.setId`` + used files, ``ImportCandidates`` order and
subsumption) and checks that the native grouper finds the same filesets and key files.

Formats that cannot be generated validly enough for Bio-Formats are checked against
their documented layout in ``test_filesets.py`` (Olympus VSI with ``.ets`` pixel files,
MIRAX, which Bio-Formats does not read at all); here we only confirm what Bio-Formats
says about them. Known, deliberate differences are pinned in ``test_divergence_*``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from omero_dropbox.grouping import FilesetGrouper, GroupingResult
from omero_dropbox.grouping.oracle import BioFormatsOracle, suffix_table
from omero_dropbox.grouping.readers import READER_SUFFIXES
from omero_dropbox.grouping.rules import RULES
from tests.support.filesets import (
    by_key,
    check_invariants,
    files_under,
    strs,
    write_analyze,
    write_dv,
    write_ics,
    write_lei,
    write_nd,
    write_ome_tiffs,
    write_pattern,
    write_tiff,
    write_vsi,
    write_xdce,
)

UNAVAILABLE = BioFormatsOracle.unavailable_reason()
pytestmark = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"Bio-Formats oracle unavailable: {UNAVAILABLE}"
)

READER_OF_FORMAT = {r.format: r.reader for r in RULES}


@pytest.fixture(scope="session")
def oracle() -> Iterator[BioFormatsOracle]:
    with BioFormatsOracle(timeout=120) as o:
        yield o


@pytest.fixture(scope="module")
def grouper() -> FilesetGrouper:
    return FilesetGrouper()


# ----------------------------------------------------------------------------- scenarios


def _deltavision(d: Path) -> None:
    write_dv(d, "e.dv")
    (d / "e.dv.log").write_text("log")
    write_dv(d, "f.r3d")
    (d / "f.log").write_text("log")
    (d / "f_log.txt").write_text("deconvolution log")
    write_dv(d, "h.r3d_d3d")
    (d / "h.r3d_d3d.log").write_text("log")
    write_dv(d, "j.d3d")
    write_dv(d, "K.DV")


def _metamorph(d: Path) -> None:
    write_nd(d, "exp")
    write_nd(d, "exp2", stages=2, times=2)
    write_nd(d, "run", waves=("Cy3_a",), ext="stk")


def _ome(d: Path) -> None:
    write_ome_tiffs(d, "comp", 3, companion=True)
    write_ome_tiffs(d, "nocomp", 3, companion=False)


def _patterns(d: Path) -> None:
    write_pattern(d, "pat", 3)
    write_pattern(d, "abc", 2, text="abc_z<1-2>.tif")
    write_pattern(d, "rx", 2, text=r"rx_z.*\.tif")
    write_tiff(d / "lit.tif")
    (d / "lit.pattern").write_text("lit.tif")


def _everything(d: Path) -> None:
    for name, build in SCENARIOS.items():
        if name != "everything":
            sub = d / name
            sub.mkdir()
            build(sub)


SCENARIOS: dict[str, Callable[[Path], object]] = {
    "ics": lambda d: (
        write_ics(d, "a"),
        write_ics(d, "b", version=2),
        write_ics(d, "UP", ext="ICS"),
    ),
    "analyze": lambda d: write_analyze(d, "brain"),
    "nifti_pair": lambda d: write_analyze(d, "head", nifti=True),
    "deltavision": _deltavision,
    "metamorph": _metamorph,
    "ome_tiff": _ome,
    "patterns": _patterns,
    "leica": lambda d: write_lei(d, "leica", 3),
    "incell": lambda d: write_xdce(d, fields=2, waves=("DAPI", "FITC")),
    "vsi_without_folder": lambda d: write_vsi(d, "slide", stacks=0),
    "singles": lambda d: [write_tiff(d / f"plain{i}.tif", i) for i in range(3)],
    "unicode_names": lambda d: (write_ics(d, "café_ñ"), write_tiff(d / "ß ü.tif")),
    "everything": _everything,
}


def compare(oracle: BioFormatsOracle, grouper: FilesetGrouper, files: list[str]) -> GroupingResult:
    expected = oracle.group(files)
    actual = grouper.group(files)
    check_invariants(files, actual)
    assert by_key(actual) == by_key(expected)
    assert {p for p, _ in actual.unclaimed} == {p for p, _ in expected.unclaimed}
    for fs in actual.filesets:  # the rule's reader is the reader Bio-Formats picks
        if fs.format != "single":
            assert oracle.probe(fs.key).reader == READER_OF_FORMAT[fs.format], fs
    return actual


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_grouping_matches_bioformats(
    scenario: str, tmp_path: Path, oracle: BioFormatsOracle, grouper: FilesetGrouper
) -> None:
    SCENARIOS[scenario](tmp_path)
    result = compare(oracle, grouper, files_under(tmp_path))
    assert result.filesets


def test_partial_arrival_matches_bioformats(
    tmp_path: Path, oracle: BioFormatsOracle, grouper: FilesetGrouper
) -> None:
    """Files copied so far: the grouper's filesets are what Bio-Formats sees on disk."""
    ics, ids = strs(write_ics(tmp_path, "a"))
    nd, *stages = strs(write_nd(tmp_path, "exp", skip=[1]))
    got = compare(oracle, grouper, [ics, ids, nd, *stages])
    assert {fs.key: fs.complete for fs in got.filesets} == {ics: True, stages[0]: False}


def test_key_is_the_file_bioformats_reports_first(
    tmp_path: Path, oracle: BioFormatsOracle, grouper: FilesetGrouper
) -> None:
    """Whichever member is given to setId, Bio-Formats reports the same key first."""
    _metamorph(tmp_path)
    comp, *tifs = strs(write_ome_tiffs(tmp_path, "comp", 2))
    files = files_under(tmp_path)
    for fs in grouper.group(files).filesets:
        assert oracle.probe(fs.key).key == fs.key
    for tif in tifs:  # a BinaryOnly TIFF redirects to its companion
        assert oracle.probe(tif).key == comp


# ----------------------------------------------------------------------------- companions


def test_lonely_companions_are_unreadable(tmp_path: Path, oracle: BioFormatsOracle) -> None:
    """What the grouper calls "waiting for its key file" Bio-Formats cannot open alone."""
    _ics, ids = strs(write_ics(tmp_path, "a"))
    _hdr, img = strs(write_analyze(tmp_path, "b"))
    log = tmp_path / "c.dv.log"
    log.write_text("x")
    for path in (tmp_path / "a.ics", tmp_path / "b.hdr"):
        path.unlink()
    grouped = FilesetGrouper().group([ids, img, str(log)])
    assert grouped.filesets == ()
    assert all("waiting for its key file" in r for _, r in grouped.unclaimed)
    for lonely in (ids, img, str(log)):
        assert not oracle.probe(lonely).ok, lonely


def test_ets_belongs_to_the_vsi_two_levels_up(tmp_path: Path, oracle: BioFormatsOracle) -> None:
    """Documented VSI layout, confirmed as far as placeholders allow: Bio-Formats looks for
    ../../<dir without underscores>.vsi when given an .ets."""
    _vsi, ets = strs(write_vsi(tmp_path, "slide", stacks=1, frames=1))
    (tmp_path / "slide.vsi").unlink()
    answer = oracle.probe(ets)
    assert not answer.ok and "Could not find .vsi file" in answer.error


def test_mirax_is_not_read_by_bioformats(tmp_path: Path, oracle: BioFormatsOracle) -> None:
    mrxs = tmp_path / "slide.mrxs"
    mrxs.write_bytes(b"x")
    answer = oracle.probe(str(mrxs))
    assert not answer.ok and answer.kind == "unknown_format"


# ----------------------------------------------------------------------------- divergences


def test_divergence_shared_log_is_claimed_once(
    tmp_path: Path, oracle: BioFormatsOracle, grouper: FilesetGrouper
) -> None:
    """Bio-Formats gives g.dv.log to both g.dv and g_D3D.dv; we never claim a file twice."""
    g, d3d = str(write_dv(tmp_path, "g.dv")), str(write_dv(tmp_path, "g_D3D.dv"))
    log = tmp_path / "g.dv.log"
    log.write_text("x")
    files = files_under(tmp_path)
    assert by_key(oracle.group(files)) == {g: {g, str(log)}, d3d: {d3d, str(log)}}
    assert by_key(grouper.group(files)) == {g: {g, str(log)}, d3d: {d3d}}


def test_divergence_ics2_with_stray_ids(
    tmp_path: Path, oracle: BioFormatsOracle, grouper: FilesetGrouper
) -> None:
    """ImportCandidates drops an ICS 2.0 file when a stray .ids opens it too (the .ids
    container "uses" the .ics); we import the .ics and report the .ids."""
    (ics,) = strs(write_ics(tmp_path, "v2", version=2))
    ids = tmp_path / "v2.ids"
    ids.write_bytes(bytes(12))
    assert oracle.group([ics, str(ids)]).filesets == ()
    got = grouper.group([ics, str(ids)])
    assert by_key(got) == {ics: {ics}}


def test_divergence_binary_only_tiff_waits_for_its_companion(
    tmp_path: Path, oracle: BioFormatsOracle, grouper: FilesetGrouper
) -> None:
    """Without its companion Bio-Formats opens a BinaryOnly OME-TIFF as a plain TIFF; in a
    drop folder the companion is usually still being copied, so we wait for it."""
    comp, *tifs = strs(write_ome_tiffs(tmp_path, "d", 2))
    Path(comp).unlink()
    assert all(oracle.probe(t).reader.endswith("TiffDelegateReader") for t in tifs)
    got = grouper.group(tifs)
    assert got.filesets == ()
    assert all("needs d.companion.ome" in r for _, r in got.unclaimed)


# ----------------------------------------------------------------------------- the oracle


def test_suffix_table_matches_the_jar(oracle: BioFormatsOracle) -> None:
    assert tuple(suffix_table(oracle)) == READER_SUFFIXES


def test_readers_file_limits_oracle_and_grouper(tmp_path: Path) -> None:
    readers = tmp_path / "readers.txt"
    readers.write_text("loci.formats.in.ICSReader\n# nothing else\n")
    data = tmp_path / "data"
    data.mkdir()
    files = strs([*write_ics(data, "a"), *write_analyze(data, "b"), write_tiff(data / "c.tif")])
    with BioFormatsOracle(readers) as restricted:
        expected = restricted.group(files)
    actual = FilesetGrouper(readers).group(files)
    assert by_key(actual) == by_key(expected) == {files[0]: set(files[:2])}
    assert {p for p, _ in actual.unclaimed} == {p for p, _ in expected.unclaimed}


def test_oracle_survives_a_killed_jvm(tmp_path: Path, oracle: BioFormatsOracle) -> None:
    files = strs(write_ics(tmp_path, "a"))
    pid, starts = oracle.pid, oracle.starts
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    answer = oracle.probe(files[0])
    while not answer.ok and time.monotonic() < deadline:
        answer = oracle.probe(files[0])
    assert answer.ok and answer.files == tuple(files)
    assert oracle.starts == starts + 1 and oracle.pid != pid


def test_oracle_reports_names_java_cannot_open(tmp_path: Path, oracle: BioFormatsOracle) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.tif"
    with open(raw, "wb") as fh:
        fh.write(b"x")
    answer = oracle.probe(os.fsdecode(raw))
    assert not answer.ok and "UTF-8" in answer.error
    assert oracle.used_files(str(tmp_path / "absent.tif")) == []
