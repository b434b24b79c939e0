"""Fileset grouping without Java: real files in temporary directories.

The datasets are written by :mod:`tests.support.filesets` (shared with the Bio-Formats
comparison and the benchmark); this module checks the table-driven grouper on them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from omero_dropbox.grouping import Fileset, FilesetGrouper, group_paths
from omero_dropbox.grouping.command import filesets_command
from omero_dropbox.grouping.file_pattern import expand_file_pattern
from omero_dropbox.grouping.readers import READER_SUFFIXES
from omero_dropbox.grouping.rules import COMPANION_SUFFIXES, RULES
from omero_dropbox.grouping.tiff import tiff_description
from tests.support.filesets import (
    by_key,
    check_invariants,
    files_under,
    only,
    strs,
    write_analyze,
    write_dv,
    write_ics,
    write_lei,
    write_mrxs,
    write_nd,
    write_ome_tiffs,
    write_pattern,
    write_tiff,
    write_vsi,
    write_xdce,
)


@pytest.fixture
def grouper() -> FilesetGrouper:
    return FilesetGrouper()


# ============================================================================ formats


def test_ics_pair_groups_with_ics_as_key(tmp_path: Path, grouper: FilesetGrouper) -> None:
    files = strs(write_ics(tmp_path, "a"))
    fs = only(grouper.group(files))
    assert fs == Fileset(key=files[0], files=tuple(sorted(files)), format="ICS")
    assert fs.complete


def test_ics_companion_case_follows_key(tmp_path: Path, grouper: FilesetGrouper) -> None:
    files = strs(write_ics(tmp_path, "UP", ext="ICS"))
    assert files[1].endswith("UP.IDS")
    assert by_key(grouper.group(files)) == {files[0]: set(files)}


def test_ids_without_ics_waits(tmp_path: Path, grouper: FilesetGrouper) -> None:
    _ics, ids = strs(write_ics(tmp_path, "a"))
    result = grouper.group([ids])
    assert result.filesets == ()
    assert result.unclaimed == ((ids, "companion waiting for its key file (a.ids needs a.ics)"),)


def test_ics_without_ids_is_incomplete(tmp_path: Path, grouper: FilesetGrouper) -> None:
    ics, ids = strs(write_ics(tmp_path, "a"))
    os.unlink(ids)
    fs = only(grouper.group([ics]))
    assert fs.files == (ics,) and fs.missing == (ids,) and not fs.complete


def test_ids_on_disk_but_not_ready_is_missing(tmp_path: Path, grouper: FilesetGrouper) -> None:
    ics, ids = strs(write_ics(tmp_path, "a"))
    fs = only(grouper.group([ics]))
    assert fs.missing == (ids,)


def test_ics2_is_one_file_and_ignores_stray_ids(tmp_path: Path, grouper: FilesetGrouper) -> None:
    (ics,) = strs(write_ics(tmp_path, "v2", version=2))
    ids = tmp_path / "v2.ids"
    ids.write_bytes(b"\0" * 12)
    result = grouper.group([ics, str(ids)])
    assert by_key(result) == {ics: {ics}}
    assert result.unclaimed == ((str(ids), "companion not used by its key file (v2.ics)"),)


def test_analyze_pair(tmp_path: Path, grouper: FilesetGrouper) -> None:
    hdr, img = strs(write_analyze(tmp_path, "brain"))
    fs = only(grouper.group([img, hdr]))
    assert (fs.key, fs.files, fs.format) == (hdr, (hdr, img), "Analyze")


def test_nifti_pair_is_labelled_nifti(tmp_path: Path, grouper: FilesetGrouper) -> None:
    hdr, img = strs(write_analyze(tmp_path, "brain", nifti=True))
    fs = only(grouper.group([hdr, img]))
    assert (fs.key, fs.format) == (hdr, "NIfTI")


def test_img_without_hdr_waits(tmp_path: Path, grouper: FilesetGrouper) -> None:
    _hdr, img = strs(write_analyze(tmp_path, "brain"))
    result = grouper.group([img])
    assert result.unclaimed == ((img, "companion waiting for its key file (brain.img needs brain.hdr)"),)


def test_deltavision_logs(tmp_path: Path, grouper: FilesetGrouper) -> None:
    dv = str(write_dv(tmp_path, "e.dv"))
    log = tmp_path / "e.dv.log"
    log.write_text("log")
    r3d = str(write_dv(tmp_path, "f.r3d"))
    (tmp_path / "f.log").write_text("x")
    (tmp_path / "f_log.txt").write_text("x")
    rd = str(write_dv(tmp_path, "h.r3d_d3d"))
    (tmp_path / "h.r3d_d3d.log").write_text("x")
    result = grouper.group(files_under(tmp_path))
    assert by_key(result) == {
        dv: {dv, str(log)},
        r3d: {r3d, str(tmp_path / "f.log"), str(tmp_path / "f_log.txt")},
        rd: {rd, str(tmp_path / "h.r3d_d3d.log")},
    }
    assert {fs.format for fs in result.filesets} == {"DeltaVision"}


def test_deltavision_prefers_name_dot_log(tmp_path: Path, grouper: FilesetGrouper) -> None:
    dv = str(write_dv(tmp_path, "e.dv"))
    (tmp_path / "e.dv.log").write_text("x")
    (tmp_path / "e.log").write_text("x")
    result = grouper.group(files_under(tmp_path))
    assert by_key(result)[dv] == {dv, str(tmp_path / "e.dv.log")}
    assert (
        str(tmp_path / "e.log"),
        "metadata file of a DeltaVision (.dv) or CellWorx (.htd) dataset",
    ) in result.unclaimed


def test_deltavision_log_arriving_later_is_missing(tmp_path: Path, grouper: FilesetGrouper) -> None:
    dv = str(write_dv(tmp_path, "e.dv"))
    (tmp_path / "e.dv.log").write_text("x")
    fs = only(grouper.group([dv]))
    assert fs.files == (dv,) and fs.missing == (str(tmp_path / "e.dv.log"),)


def test_deconvolved_dv_shares_log_with_first_claimant(tmp_path: Path, grouper: FilesetGrouper) -> None:
    """Bio-Formats lets g.dv and g_D3D.dv both use g.dv.log; we never let two filesets
    claim one file, so the log stays with g.dv (sorted first)."""
    g = str(write_dv(tmp_path, "g.dv"))
    d3d = str(write_dv(tmp_path, "g_D3D.dv"))
    (tmp_path / "g.dv.log").write_text("x")
    result = grouper.group(files_under(tmp_path))
    assert by_key(result) == {g: {g, str(tmp_path / "g.dv.log")}, d3d: {d3d}}


def test_dv_logs_alone_wait(tmp_path: Path, grouper: FilesetGrouper) -> None:
    log, txt = tmp_path / "i.dv.log", tmp_path / "i_log.txt"
    log.write_text("x")
    txt.write_text("x")
    result = grouper.group([str(log), str(txt)])
    assert result.unclaimed == (
        (str(log), "companion waiting for its key file (i.dv.log needs i.dv)"),
        (str(txt), "companion waiting for its key file (i_log.txt needs i.dv)"),
    )


def test_metamorph_key_is_first_stage_file(tmp_path: Path, grouper: FilesetGrouper) -> None:
    nd, *stages = strs(write_nd(tmp_path, "exp2", stages=2, times=2))
    assert len(stages) == 8
    fs = only(grouper.group([nd, *stages]))
    assert fs.format == "MetaMorph ND"
    assert fs.key == min(stages) == str(tmp_path / "exp2_w1DAPI_s1_t1.TIF")
    assert set(fs.files) == {nd, *stages} and fs.complete


def test_metamorph_missing_stage_file(tmp_path: Path, grouper: FilesetGrouper) -> None:
    nd, *stages = strs(write_nd(tmp_path, "exp", skip=[1]))
    fs = only(grouper.group([nd, *stages]))
    assert fs.missing == (str(tmp_path / "exp_w2GFP.STK"),)


def test_metamorph_stk_and_wave_name_sanitising(tmp_path: Path, grouper: FilesetGrouper) -> None:
    nd, *stages = strs(write_nd(tmp_path, "run", waves=("Cy3_a",), ext="stk"))
    assert stages == [str(tmp_path / "run_w1Cy3-a.stk")]
    assert by_key(grouper.group([nd, *stages])) == {stages[0]: {nd, *stages}}


def test_metamorph_nd_alone_keeps_nd_as_key(tmp_path: Path, grouper: FilesetGrouper) -> None:
    nd, *_stages = strs(write_nd(tmp_path, "exp"))
    fs = only(grouper.group([nd]))
    assert fs.key == nd and len(fs.missing) == 2


def test_ome_tiff_companion(tmp_path: Path, grouper: FilesetGrouper) -> None:
    comp, *tifs = strs(write_ome_tiffs(tmp_path, "comp", 3))
    fs = only(grouper.group([*tifs, comp]))
    assert (fs.key, set(fs.files), fs.format) == (comp, {comp, *tifs}, "OME-TIFF companion")


def test_binary_only_tiff_waits_for_companion(tmp_path: Path, grouper: FilesetGrouper) -> None:
    _comp, *tifs = strs(write_ome_tiffs(tmp_path, "comp", 2))
    result = grouper.group(tifs)
    assert result.filesets == ()
    assert result.unclaimed == tuple(
        (t, f"companion waiting for its key file ({os.path.basename(t)} needs comp.companion.ome)")
        for t in tifs
    )


def test_multi_file_ome_tiff_without_companion(tmp_path: Path, grouper: FilesetGrouper) -> None:
    tifs = strs(write_ome_tiffs(tmp_path, "nocomp", 3, companion=False))
    fs = only(grouper.group(tifs))
    assert (fs.key, set(fs.files), fs.format) == (tifs[0], set(tifs), "OME-TIFF")


def test_single_ome_tiff(tmp_path: Path, grouper: FilesetGrouper) -> None:
    path = tmp_path / "one.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 4), np.uint8), ome=True)
    assert by_key(grouper.group([str(path)])) == {str(path): {str(path)}}


def test_tiff_description_reads_bigtiff(tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.zeros((3, 4), np.uint8), bigtiff=True, description="hello <OME>")
    assert tiff_description(str(path)) == b"hello <OME>"
    (tmp_path / "not.tif").write_bytes(b"nope")
    assert tiff_description(str(tmp_path / "not.tif")) is None


def test_pattern(tmp_path: Path, grouper: FilesetGrouper) -> None:
    files = strs(write_pattern(tmp_path, "pat", 3))
    fs = only(grouper.group(files))
    assert (fs.key, set(fs.files), fs.format) == (files[0], set(files), "File pattern")


def test_pattern_missing_file(tmp_path: Path, grouper: FilesetGrouper) -> None:
    pattern, a, b, c = strs(write_pattern(tmp_path, "pat", 3))
    os.unlink(b)
    fs = only(grouper.group([pattern, a, c]))
    assert fs.missing == (b,)


def test_pattern_as_regular_expression(tmp_path: Path, grouper: FilesetGrouper) -> None:
    pattern, *tifs = strs(write_pattern(tmp_path, "rx", 2, text=r"rx_z.*\.tif"))
    assert by_key(grouper.group([pattern, *tifs])) == {pattern: {pattern, *tifs}}


@pytest.mark.parametrize(
    ("pattern", "names"),
    [
        ("a<0-2>.tif", ["a0.tif", "a1.tif", "a2.tif"]),
        ("a<9-11>.tif", ["a9.tif", "a10.tif", "a11.tif"]),
        ("a<09-11>.tif", ["a09.tif", "a10.tif", "a11.tif"]),
        ("a<1-5:2>", ["a1", "a3", "a5"]),
        ("<A-C>", ["A", "B", "C"]),
        ("<a-e:2>", ["a", "c", "e"]),
        ("<R,G,B>_<1-2>", ["R_1", "R_2", "G_1", "G_2", "B_1", "B_2"]),
        ("<Cy3-B,DAPI>", ["Cy3-B", "DAPI"]),
        ("x<7>y", ["x7y"]),
    ],
)
def test_file_pattern_blocks(pattern: str, names: list[str]) -> None:
    assert expand_file_pattern(pattern) == names


def test_leica_lei(tmp_path: Path, grouper: FilesetGrouper) -> None:
    lei, *tifs = strs(write_lei(tmp_path, "leica", 3))
    fs = only(grouper.group([*tifs, lei]))
    assert (fs.key, set(fs.files), fs.format) == (lei, {lei, *tifs}, "Leica LEI")


def test_incell_plate(tmp_path: Path, grouper: FilesetGrouper) -> None:
    xdce, *tifs = strs(write_xdce(tmp_path, fields=2, waves=("DAPI", "FITC")))
    assert len(tifs) == 8
    fs = only(grouper.group([xdce, *tifs]))
    assert (fs.key, set(fs.files), fs.format) == (xdce, {xdce, *tifs}, "InCell")


def test_vsi_folder_documented(tmp_path: Path, grouper: FilesetGrouper) -> None:
    """Documented behaviour (CellSensReader): _<name>_/<stack>/*.ets belong to <name>.vsi."""
    vsi, *ets = strs(write_vsi(tmp_path, "slide", stacks=2, frames=2))
    (tmp_path / "_slide_" / "stack10000" / "notes.txt").write_text("x")
    upper = tmp_path / "_slide_" / "stack10001" / "FRAME.ETS"
    upper.write_bytes(b"SIS\0")
    ets.append(str(upper))
    fs = only(grouper.group([vsi, *ets]))
    assert (fs.key, set(fs.files), fs.format) == (vsi, {vsi, *ets}, "Olympus VSI")
    # an .ets still being copied is missing; one without its .vsi waits
    fs = only(grouper.group([vsi, *ets[:-1]]))
    assert fs.missing == (ets[-1],)
    result = grouper.group(ets[:1])
    assert result.unclaimed == (
        (ets[0], "companion waiting for its key file (frame_t_0.ets needs slide.vsi)"),
    )


def test_mirax_documented(tmp_path: Path, grouper: FilesetGrouper) -> None:
    """Documented behaviour (OpenSlide's MIRAX description); Bio-Formats 7.3.1 has no reader."""
    mrxs, ini, index, *data = strs(write_mrxs(tmp_path, "slide", 3))
    fs = only(grouper.group([mrxs, ini, index, *data]))
    assert (fs.key, set(fs.files), fs.format) == (mrxs, {mrxs, ini, index, *data}, "MIRAX")
    fs = only(grouper.group([mrxs, ini, index, *data[:1]]))
    assert set(fs.missing) == set(data[1:])
    result = grouper.group([ini, index])
    assert {r for _, r in result.unclaimed} == {
        "companion waiting for its key file (Slidedat.ini needs slide.mrxs)",
        "companion waiting for its key file (Index.dat needs slide.mrxs)",
    }


def test_mrxs_without_folder_is_incomplete(tmp_path: Path, grouper: FilesetGrouper) -> None:
    mrxs = tmp_path / "lonely.mrxs"
    mrxs.write_bytes(b"x")
    fs = only(grouper.group([str(mrxs)]))
    assert fs.missing == (str(tmp_path / "lonely" / "Slidedat.ini"),)


# ============================================================================ singles, others


def test_single_files_and_unknowns(tmp_path: Path, grouper: FilesetGrouper) -> None:
    names = [
        "a.tif",
        "b.CZI",
        "c.nii.gz",
        "d.png",
        "e.xyz",
        "notes",
        "f.xlog",
        ".DS_Store",
        "Thumbs.db",
    ]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    result = grouper.group(files_under(tmp_path))
    singles = {os.path.basename(fs.key) for fs in result.filesets}
    assert singles == {"a.tif", "b.CZI", "c.nii.gz", "d.png"}
    assert all(fs.format == "single" for fs in result.filesets)
    reasons = {os.path.basename(p): r for p, r in result.unclaimed}
    assert reasons == {
        "e.xyz": "not a format Bio-Formats reads",
        "notes": "not a format Bio-Formats reads",
        "f.xlog": "metadata file of a InCell (.xdce) dataset",
        ".DS_Store": "system file",
        "Thumbs.db": "system file",
    }


def test_mixed_directory_invariants(tmp_path: Path, grouper: FilesetGrouper) -> None:
    write_ics(tmp_path, "a")
    write_analyze(tmp_path, "b")
    write_dv(tmp_path, "c.dv")
    write_nd(tmp_path, "exp")
    write_ome_tiffs(tmp_path, "comp")
    write_pattern(tmp_path)
    write_lei(tmp_path)
    write_xdce(tmp_path)
    write_vsi(tmp_path)
    write_mrxs(tmp_path, "mirax")
    write_tiff(tmp_path / "plain.tif")
    given = files_under(tmp_path)
    result = grouper.group(given)
    check_invariants(given, result)
    formats = sorted(fs.format for fs in result.filesets)
    assert formats == sorted(
        [
            "ICS",
            "Analyze",
            "DeltaVision",
            "MetaMorph ND",
            "OME-TIFF companion",
            "File pattern",
            "Leica LEI",
            "InCell",
            "Olympus VSI",
            "MIRAX",
            "single",
        ]
    )
    assert result.unclaimed == ()
    # input order and duplicates do not matter
    assert grouper.group(list(reversed(given)) + given[:3]) == result


def test_later_larger_candidate_subsumes_earlier(tmp_path: Path, grouper: FilesetGrouper) -> None:
    """A .pattern that names an ICS file takes it over, as the OMERO importer does: the
    ICS container uses only one other file and a later container uses it. The pattern
    brings the members of the files it names (the .ids)."""
    ics, ids = strs(write_ics(tmp_path, "a"))
    pattern = tmp_path / "z.pattern"
    pattern.write_text("a.ics")
    result = grouper.group([ics, ids, str(pattern)])
    assert by_key(result) == {str(pattern): {str(pattern), ics, ids}}


def test_readers_file_restricts_rules_and_suffixes(tmp_path: Path) -> None:
    readers = tmp_path / "readers.txt"
    readers.write_text(
        "# only ICS and plain TIFF\nloci.formats.in.ICSReader\nloci.formats.in.TiffDelegateReader  # tif\n"
    )
    d = tmp_path / "data"
    d.mkdir()
    ics, ids = strs(write_ics(d, "a"))
    hdr, img = strs(write_analyze(d, "b"))
    tif = str(write_tiff(d / "c.tif"))
    png = d / "d.png"
    png.write_bytes(b"x")
    result = FilesetGrouper(readers).group([ics, ids, hdr, img, tif, str(png)])
    assert by_key(result) == {ics: {ics, ids}, tif: {tif}}
    assert {p for p, _ in result.unclaimed} == {hdr, img, str(png)}


def test_readers_file_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"omero\.fs\.readers=.*cannot read"):
        FilesetGrouper(tmp_path / "nope.txt")


def test_non_utf8_names(tmp_path: Path, grouper: FilesetGrouper) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9"
    with open(raw + b".ics", "wb") as fh:
        fh.write(b"\t\nics_version\t1.0\nend\n")
    with open(raw + b".ids", "wb") as fh:
        fh.write(b"\0")
    ics, ids = os.fsdecode(raw + b".ics"), os.fsdecode(raw + b".ids")
    assert "\udce9" in ics
    fs = only(grouper.group([ids, ics]))
    assert (fs.key, fs.files) == (ics, (ics, ids))


def test_group_paths_convenience(tmp_path: Path) -> None:
    files = strs(write_ics(tmp_path, "a"))
    assert group_paths(files) == FilesetGrouper().group(files)


def test_rule_table_is_consistent() -> None:
    readers = {cls for cls, _fmt, _sufs in READER_SUFFIXES}
    assert len(READER_SUFFIXES) > 150
    for rule in RULES:
        assert rule.reader is None or rule.reader in readers, rule
        assert rule.key and all(k[0] in "._" for k in rule.key)
    declared = {s for _cls, _fmt, sufs in READER_SUFFIXES for s in sufs}
    assert set(COMPANION_SUFFIXES) <= declared


# ============================================================================ CLI hook


def test_filesets_command_prints_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ics, ids = strs(write_ics(tmp_path, "a"))
    (tmp_path / "sub").mkdir()
    tif = str(write_tiff(tmp_path / "sub" / "b.tif"))
    (tmp_path / "sub" / "c.xyz").write_text("x")
    rc = filesets_command([str(tmp_path), str(tmp_path / "absent")], None)
    out, err = capsys.readouterr()
    assert rc == 1 and "absent" in err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines == [
        {"key": ics, "files": [ics, ids], "format": "ICS"},
        {"key": tif, "files": [tif], "format": "single"},
        {"skipped": str(tmp_path / "sub" / "c.xyz"), "reason": "not a format Bio-Formats reads"},
    ]


def test_filesets_command_reports_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ics, _ids = strs(write_ics(tmp_path, "a"))
    assert filesets_command([ics], None) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["missing"] == [str(tmp_path / "a.ids")]
