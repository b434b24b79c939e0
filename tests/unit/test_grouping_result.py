"""The grouping result is typed: files held back are :class:`Waiting` entries (a kind and the
key files they wait for), refused files are :class:`Refused`, and a one-file fileset that
another rule's key file could still claim is marked ``may_grow``, from the rule table.

The engine reads these fields; before, it matched "waiting" in the reason text and kept its
own list of suffixes that "may still grow"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omero_dropbox._native import system_file_rules
from omero_dropbox.grouping import FilesetGrouper, GroupingResult, Refused, Waiting, WaitKind
from omero_dropbox.grouping.parsers import METAMORPH_STAGE_SUFFIXES
from omero_dropbox.grouping.rules import RULES, Content, member_tokens
from tests.support.filesets import write_ics, write_ome_tiffs


def _group(root: Path, *names: str, grouper: FilesetGrouper | None = None) -> GroupingResult:
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(b"")
        paths.append(str(path))
    return (grouper or FilesetGrouper()).group(paths, root=str(root))


# ----------------------------------------------------------------------------- typed entries


def test_companion_without_its_key_is_a_typed_waiting_entry(tmp_path: Path) -> None:
    result = _group(tmp_path, "a.ids")
    ids, ics = str(tmp_path / "a.ids"), str(tmp_path / "a.ics")
    assert result.waiting == (
        Waiting(
            ids,
            WaitKind.COMPANION_WITHOUT_KEY,
            (ics,),
            "companion waiting for its key file (a.ids needs a.ics)",
        ),
    )
    assert result.refused == () and result.filesets == ()
    assert result.unclaimed == ((ids, "companion waiting for its key file (a.ids needs a.ics)"),)


def test_binary_only_ome_tiff_waits_for_the_key_its_content_names(tmp_path: Path) -> None:
    _companion, tif, _other = write_ome_tiffs(tmp_path, "d", 2)
    (entry,) = FilesetGrouper().group([str(tif)]).waiting
    assert (entry.path, entry.kind) == (str(tif), WaitKind.KEY_NAMED_BUT_ABSENT)
    assert entry.awaited_keys == (str(tmp_path / "d.companion.ome"),)


def test_a_refused_reason_naming_a_waiting_file_is_still_refused(tmp_path: Path) -> None:
    """The reason text is for operators: a companion its key file does not use is refused,
    even when the key file's name says "waiting"."""
    write_ics(tmp_path, "waiting", version=2)
    (tmp_path / "waiting.ids").write_bytes(b"stray")
    result = FilesetGrouper().group([str(tmp_path / "waiting.ics"), str(tmp_path / "waiting.ids")])
    assert result.waiting == ()
    assert result.refused == (
        Refused(str(tmp_path / "waiting.ids"), "companion not used by its key file (waiting.ics)"),
    )


def test_every_file_is_in_one_fileset_or_waiting_or_refused(tmp_path: Path) -> None:
    names = ["a.ids", "b.ics", "b.ids", "c.tif", "d.czi", "Thumbs.db", "e.xyz", "f.dv", "f_log.txt"]
    result = _group(tmp_path, *names)
    grouped = [f for fs in result.filesets for f in fs.files]
    waiting = [w.path for w in result.waiting]
    refused = [r.path for r in result.refused]
    every = grouped + waiting + refused
    assert sorted(every) == sorted(str(tmp_path / n) for n in names)


# ----------------------------------------------------------------------------- could still grow

# (format family, a member that may arrive before its key file, a lone file no rule names)
FAMILIES = [
    ("File pattern", "series_001.tif", "photo.png"),
    ("DeltaVision", "run_log.txt", "run.dv"),
    ("MetaMorph ND", "exp_w1_s1_t1.stk", "exp.czi"),
    ("OME-TIFF companion", "plane.ome.tif", "plane.jpg"),
    ("Leica LEI", "scan_0001.tiff", "scan.lif"),
    ("Olympus VSI", "_slide_/stack1/frame.ets", "slide.svs"),
    ("MIRAX", "slide/Data0001.dat", "slide.ndpi"),
    ("InCell", "A01_fld1.tif", "plate.lsm"),
    ("Unisoku STM", "scan.DAT", "scan.sm2"),
    ("NIfTI / Analyze / IMAGIC", "brain.img", "brain.nii"),
    ("NRRD", "volume.raw", "volume.mnc"),
    ("Simulated data", "a.fake.ini", "a.fake"),
    ("PCO-RAW", "cam.rec", "cam.pcoraw"),
    ("ICS", "cells.ids", "cells.dm3"),
]


@pytest.mark.parametrize(("family", "member", "other"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_a_lone_member_waits_and_a_lone_non_member_does_not(
    tmp_path: Path, family: str, member: str, other: str
) -> None:
    result = _group(tmp_path, member)
    path = str(tmp_path / member)
    fileset = result.fileset_of(path)
    held = [w for w in result.waiting if w.path == path]
    assert held or (fileset is not None and fileset.may_grow), (family, result)

    alone = _group(tmp_path / "other", other)
    (fileset,) = alone.filesets
    assert fileset.files == (str(tmp_path / "other" / other),)
    assert fileset.complete and not fileset.may_grow, (family, alone)


def test_a_fileset_of_several_files_does_not_grow(tmp_path: Path) -> None:
    write_ics(tmp_path, "pair")
    (fileset,) = _group(tmp_path, "pair.ics", "pair.ids").filesets
    assert len(fileset.files) == 2 and not fileset.may_grow


def test_only_enabled_rules_make_a_lone_file_grow(tmp_path: Path) -> None:
    """With a readers file enabling the TIFF reader only, no rule can claim a .tif later."""
    readers = tmp_path / "readers.txt"
    readers.write_text("loci.formats.in.TiffDelegateReader\n")
    (fileset,) = _group(tmp_path, "lone.tif", grouper=FilesetGrouper(readers)).filesets
    assert not fileset.may_grow
    (fileset,) = _group(tmp_path, "lone.tif").filesets
    assert fileset.may_grow


def test_member_tokens_keep_every_suffix_the_engine_waited_for() -> None:
    """The engine's former hand list (_MAYBE_MEMBER) is all derived from the rule table."""
    former = {"tif", "tiff", "stk", "img", "ids", "txt", "xml", "log", "ets", "dat"}
    assert former <= member_tokens(RULES)


def test_metamorph_rule_declares_the_stage_files_its_parser_builds() -> None:
    (rule,) = [r for r in RULES if r.format == "MetaMorph ND"]
    (content,) = [m for m in rule.members if isinstance(m, Content)]
    assert {s.lower() for s in METAMORPH_STAGE_SUFFIXES} <= set(content.names)


def test_grouping_never_claims_what_the_native_table_calls_never_data() -> None:
    from omero_dropbox.grouping.system_files import is_system_file

    never = {pattern for _how, pattern, _why in system_file_rules() if is_system_file(f"/x/{pattern}")}
    assert {".", "thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r", "__macosx"} <= never | {"."}
    assert is_system_file(os.path.join("x", "__MACOSX", "a.tif")) and is_system_file("/x/.hidden.tif")
    assert not is_system_file("/x/run/a.tmp")  # dropped by the watcher only when ignoreSysFiles is on
