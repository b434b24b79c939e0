"""Hostile key files: what a lab user can write into a file the grouper reads.

Each test builds real files in a temporary ``DropBox/<user>/`` tree and groups them with
:class:`FilesetGrouper`. A key file the service must not import ends up in ``unclaimed``
with a reason the engine skips (no "waiting" in it) that names what is wrong. Groupings
that could hang or exhaust memory on a regression run in a child process with a memory
limit and a deadline, so a failure is a failed test, not a stuck test run.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from omero_dropbox.grouping import FilesetGrouper, GroupingLimits, GroupingResult
from tests.support.filesets import (
    strs,
    write_mrxs,
    write_nd,
    write_ome_tiffs,
    write_pattern,
    write_tiff,
    write_vsi,
    write_xdce,
)

DEADLINE = 10.0  # seconds a child grouping may take; the fixed code needs well under one


@pytest.fixture
def users(tmp_path: Path) -> tuple[Path, Path]:
    """``DropBox/amy`` (the user whose files are grouped) and ``DropBox/zak`` (another)."""
    amy, zak = tmp_path / "DropBox" / "amy", tmp_path / "DropBox" / "zak"
    amy.mkdir(parents=True)
    zak.mkdir(parents=True)
    for i in (1, 2):
        write_tiff(zak / f"p_{i}.tif")
    return amy, zak


def files_of(d: Path) -> list[str]:
    return sorted(str(p) for p in d.rglob("*") if p.is_file() and not p.is_symlink())


def reason_of(result: GroupingResult, path: str | Path) -> str:
    reasons = dict(result.unclaimed)
    assert str(path) in reasons, f"{path} is not unclaimed: {result}"
    return reasons[str(path)]


def assert_rejected(result: GroupingResult, key: str | Path, *words: str) -> None:
    """``key`` is skipped for good (no "waiting"), nothing of another tree is in a fileset."""
    reason = reason_of(result, key)
    assert "waiting" not in reason
    for word in words:
        assert word in reason, reason
    assert all("zak" not in f for fs in result.filesets for f in fs.files), result.filesets


def group_in_child(files: list[str], root: str | None = None, limits: dict[str, float] | None = None) -> dict:
    """Group in a child process under a 4 GiB address-space limit and DEADLINE seconds."""
    code = textwrap.dedent(
        """
        import json, sys
        from omero_dropbox.grouping import FilesetGrouper, GroupingLimits
        args = json.load(sys.stdin)
        grouper = FilesetGrouper(limits=GroupingLimits(**(args["limits"] or {})))
        kw = {"root": args["root"]} if args["root"] else {}
        r = grouper.group(args["files"], **kw)
        out = {"filesets": [fs.to_json() for fs in r.filesets], "unclaimed": dict(r.unclaimed)}
        json.dump(out, sys.stdout)
        """
    )

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps({"files": files, "root": root, "limits": limits}),
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            preexec_fn=limit_memory,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"grouping did not finish within {DEADLINE} s")
    assert done.returncode == 0, done.stderr[-2000:]
    out: dict = json.loads(done.stdout)
    return out


# ============================================================================ 1. references outside


def test_pattern_naming_another_users_files_is_not_imported(users: tuple[Path, Path]) -> None:
    amy, _zak = users
    pattern, *_ = write_pattern(amy, "p", 2, text="../zak/p_<1-2>.tif")
    result = FilesetGrouper().group(files_of(amy), root=str(amy))
    assert_rejected(result, pattern, "key file refers to ../zak/p_1.tif, outside the user's folder")


def test_pattern_with_an_absolute_path_outside_is_not_imported(users: tuple[Path, Path]) -> None:
    amy, zak = users
    pattern = amy / "p.pattern"
    pattern.write_text(f"{zak}/p_<1-2>.tif")
    result = FilesetGrouper().group(files_of(amy), root=str(amy))
    assert_rejected(result, pattern, "outside the user's folder", "p_1.tif")


def test_pattern_through_a_symlinked_folder_is_not_imported(users: tuple[Path, Path]) -> None:
    amy, zak = users
    (amy / "x").symlink_to(zak)
    pattern = amy / "p.pattern"
    pattern.write_text("x/p_<1-2>.tif")
    result = FilesetGrouper().group(files_of(amy), root=str(amy))
    assert_rejected(result, pattern, "x/p_1.tif", "symbolic link x")


def test_dotdot_after_a_symlink_is_followed_as_the_kernel_would(users: tuple[Path, Path]) -> None:
    """``link/../p_1.tif`` is amy's p_1.tif lexically, but the kernel (and Bio-Formats)
    resolve ``link`` first and land in zak's folder."""
    amy, zak = users
    (zak / "sub").mkdir()
    (amy / "link").symlink_to(zak / "sub")
    for i in (1, 2):
        write_tiff(amy / f"p_{i}.tif")
    pattern = amy / "p.pattern"
    pattern.write_text("link/../p_<1-2>.tif")
    result = FilesetGrouper().group(files_of(amy), root=str(amy))
    assert_rejected(result, pattern, "symbolic link link")


def test_ome_companion_naming_another_users_tiff_is_not_imported(users: tuple[Path, Path]) -> None:
    amy, zak = users
    companion, *_ = write_ome_tiffs(amy, "multi", 2)
    write_tiff(zak / "multi_9.ome.tif")
    text = companion.read_text().replace('FileName="multi_1.ome.tif"', 'FileName="../zak/multi_9.ome.tif"')
    companion.write_text(text)
    result = FilesetGrouper().group(files_of(amy), root=str(amy))
    assert_rejected(result, companion, "../zak/multi_9.ome.tif", "outside the user's folder")


def test_incell_plate_naming_an_absolute_path_is_not_imported(users: tuple[Path, Path]) -> None:
    amy, zak = users
    xdce, *_ = write_xdce(amy, "plate")
    text = xdce.read_text()
    first = text.index('filename="') + len('filename="')
    xdce.write_text(text[:first] + f"{zak}/p_1.tif" + text[text.index('"', first) :])
    result = FilesetGrouper().group(files_of(amy), root=str(amy))
    assert_rejected(result, xdce, "outside the user's folder")


def test_mirax_slidedat_naming_another_users_file_is_not_imported(users: tuple[Path, Path]) -> None:
    amy, zak = users
    mrxs, ini, *_ = write_mrxs(amy, "slide", 2)
    (zak / "Data9.dat").write_bytes(bytes(32))
    ini.write_text(ini.read_text(encoding="utf-8").replace("= Data0001.dat", "= ../../zak/Data9.dat"))
    result = FilesetGrouper().group(files_of(amy), root=str(amy))
    assert_rejected(result, mrxs, "../zak/Data9.dat", "outside the user's folder")


def test_mirax_folder_that_is_a_symlink_is_not_imported(users: tuple[Path, Path]) -> None:
    amy, zak = users
    write_mrxs(zak, "slide", 2)
    (amy / "slide.mrxs").write_bytes(b"\xff\xd8\xff\xe0MIRAX placeholder")
    (amy / "slide").symlink_to(zak / "slide")
    files = [str(amy / "slide.mrxs"), str(amy / "slide" / "Slidedat.ini")]
    result = FilesetGrouper().group(files, root=str(amy))
    assert_rejected(result, amy / "slide.mrxs", "symbolic link slide")


def test_vsi_folder_that_is_a_symlink_is_not_imported(users: tuple[Path, Path]) -> None:
    amy, zak = users
    write_vsi(zak, "x", stacks=1, frames=2)
    vsi = write_tiff(amy / "x.vsi")
    (amy / "_x_").symlink_to(zak / "_x_")
    result = FilesetGrouper().group([str(vsi)], root=str(amy))
    assert_rejected(result, vsi, "symbolic link _x_")


def test_symlink_inside_a_vsi_folder_is_not_imported(users: tuple[Path, Path]) -> None:
    amy, zak = users
    write_vsi(zak, "x", stacks=1, frames=1)
    vsi, *_ = write_vsi(amy, "x", stacks=1, frames=1)
    (amy / "_x_" / "stack20000").symlink_to(zak / "_x_" / "stack10000")
    result = FilesetGrouper().group(files_of(amy), root=str(amy))
    assert_rejected(result, vsi, "symbolic link _x_/stack20000")


def test_members_inside_the_root_still_group(users: tuple[Path, Path]) -> None:
    """The check refuses escapes only: every in-tree format still groups under a root."""
    amy, _zak = users
    (amy / "sub").mkdir()
    expected = {
        str(write_pattern(amy / "sub", "p", 2)[0]),
        str(write_nd(amy, "exp")[0]),
        str(write_ome_tiffs(amy, "multi", 2)[0]),
        str(write_xdce(amy, "plate")[0]),
        str(write_mrxs(amy, "slide", 2)[0]),
        str(write_vsi(amy, "v", stacks=1, frames=2)[0]),
    }
    rx, *_ = write_pattern(amy, "rx", 2, text=r"rx_z.*\.tif")
    result = FilesetGrouper().group(files_of(amy), root=str(amy))
    grouped = {f for fs in result.filesets if len(fs.files) > 1 for f in fs.files}
    assert expected | {str(rx)} <= grouped, result
    assert not [r for _p, r in result.unclaimed if "not importing" in r], result.unclaimed


# ============================================================================ 2. .pattern regex


def test_catastrophic_regex_pattern_does_not_hang(users: tuple[Path, Path]) -> None:
    """``(a|aa)*c`` against a long name backtracks for ever in Python's ``re``."""
    amy, _zak = users
    pattern = amy / "evil.pattern"
    pattern.write_text("(a|aa)*c")
    write_tiff(amy / ("a" * 120))
    out = group_in_child(files_of(amy))
    evil = [fs for fs in out["filesets"] if fs["key"] == str(pattern)]
    assert evil == [{"key": str(pattern), "files": [str(pattern)], "format": "File pattern"}]


def test_regex_pattern_with_a_backreference_is_not_imported(users: tuple[Path, Path]) -> None:
    amy, _zak = users
    pattern = amy / "b.pattern"
    pattern.write_text(r"(a)\1.tif")
    write_tiff(amy / "aa.tif")
    result = FilesetGrouper().group(files_of(amy), root=str(amy))
    assert_rejected(result, pattern, "not a regular expression this service can run safely")


def test_regex_pattern_searching_a_symlinked_folder_is_not_imported(users: tuple[Path, Path]) -> None:
    """Bio-Formats lists the pattern's folder recursively, following symlinks."""
    amy, zak = users
    (amy / "x").symlink_to(zak)
    pattern = amy / "rx.pattern"
    pattern.write_text(r"p_.*\.tif")
    result = FilesetGrouper().group(files_of(amy), root=str(amy))
    assert_rejected(result, pattern, "symbolic link")


# ============================================================================ 3. caps


def test_metamorph_nd_declaring_ten_billion_files_is_rejected_quickly(users: tuple[Path, Path]) -> None:
    amy, _zak = users
    nd = amy / "huge.nd"
    nd.write_text(
        '"NDInfoFile", Version 1.0\n"DoTimelapse", TRUE\n"NTimePoints", 100000\n'
        '"DoStage", TRUE\n"NStagePositions", 100000\n"DoWave", FALSE\n"EndFile"\n'
    )
    out = group_in_child([str(nd)], root=str(amy))
    reason = out["unclaimed"][str(nd)]
    assert "10,000,000,000" in reason and "GroupingLimits.max_members" in reason, reason
    assert "waiting" not in reason


def test_pattern_expanding_to_a_million_names_is_rejected(users: tuple[Path, Path]) -> None:
    amy, _zak = users
    pattern = amy / "m.pattern"
    pattern.write_text("m_<1-1000000>.tif")
    write_tiff(amy / "m_1.tif")
    result = FilesetGrouper().group(files_of(amy), root=str(amy))
    assert_rejected(result, pattern, "1,000,000 files", "GroupingLimits.max_members")
    assert "m_1.tif" not in {
        os.path.basename(f) for fs in result.filesets if len(fs.files) > 1 for f in fs.files
    }


def test_key_file_over_the_read_cap_is_rejected(users: tuple[Path, Path]) -> None:
    amy, _zak = users
    companion, *_ = write_ome_tiffs(amy, "multi", 2)
    companion.write_text(companion.read_text() + "<!--" + "x" * 4096 + "-->")
    grouper = FilesetGrouper(limits=GroupingLimits(max_key_file_bytes=2048))
    result = grouper.group(files_of(amy), root=str(amy))
    assert_rejected(result, companion, "GroupingLimits.max_key_file_bytes", "2,048")


def test_tiff_with_a_huge_directory_is_rejected(users: tuple[Path, Path]) -> None:
    amy, _zak = users
    path = amy / "big.ome.tif"
    data = bytearray(write_tiff(path).read_bytes())
    ifd = int.from_bytes(data[4:8], "little")
    data[ifd : ifd + 2] = (60000).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    result = FilesetGrouper().group([str(path)], root=str(amy))
    assert_rejected(result, path, "60,000 entries", "GroupingLimits.max_tiff_entries")


def test_key_file_over_its_time_budget_is_rejected(users: tuple[Path, Path]) -> None:
    amy, _zak = users
    pattern, *_ = write_pattern(amy, "t", 2, text="t_<1-50000>.tif")
    grouper = FilesetGrouper(limits=GroupingLimits(key_file_seconds=0.0))
    result = grouper.group(files_of(amy), root=str(amy))
    assert_rejected(result, pattern, "GroupingLimits.key_file_seconds")


def test_changed_key_file_is_read_again(users: tuple[Path, Path]) -> None:
    """The parse cache is keyed by the key file's identity and mtime: an edit is seen."""
    amy, _zak = users
    pattern, *tifs = write_pattern(amy, "c", 3)
    grouper = FilesetGrouper()
    files = strs([pattern, *tifs])
    first = grouper.group(files, root=str(amy))
    assert set(first.filesets[0].files) == set(files)
    pattern.write_text("c_z<1-2>.tif")
    os.utime(pattern, ns=(0, pattern.stat().st_mtime_ns + 10**9))
    second = grouper.group(files, root=str(amy))
    assert {fs.key: set(fs.files) for fs in second.filesets}[str(pattern)] == set(files[:3])


# ============================================================================ 4. FIFOs and friends


@pytest.mark.parametrize("name", ["exp.nd", "p.pattern", "x.companion.ome", "plate.xdce", "s.ome.tif"])
def test_fifo_as_key_file_does_not_block(users: tuple[Path, Path], name: str) -> None:
    amy, _zak = users
    fifo = amy / name
    os.mkfifo(fifo)
    out = group_in_child([str(fifo)], root=str(amy))
    reason = out["unclaimed"].get(str(fifo), "")
    assert "not a regular file (a FIFO)" in reason, out
    assert "waiting" not in reason


def test_fifo_as_mirax_slidedat_does_not_block(users: tuple[Path, Path]) -> None:
    amy, _zak = users
    mrxs, ini, *_ = write_mrxs(amy, "slide", 1)
    ini.unlink()
    os.mkfifo(ini)
    out = group_in_child([*files_of(amy), str(ini)], root=str(amy))
    assert "not a regular file (a FIFO)" in out["unclaimed"][str(mrxs)], out
