"""Property tests for the grouper: random names and random datasets on real directories.

Whatever the names, suffixes, folders and contents: no file is in two filesets, every
given file is in exactly one fileset or unclaimed, a key is always one of its fileset's
files, results do not depend on input order, and complete datasets group exactly.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omero_dropbox.grouping import FilesetGrouper
from omero_dropbox.grouping.rules import COMPANION_SUFFIXES, RULES
from tests.test_filesets import (
    check_invariants,
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

GROUPER = FilesetGrouper()

# Suffixes the rule table knows (keys, companions, member templates) plus ordinary ones.
SUFFIXES = sorted(
    {k for r in RULES for k in r.key}
    | {c.suffix for r in RULES for c in r.companions}
    | {f".{s}" for s in COMPANION_SUFFIXES}
    | {".ids", ".IDS", ".img", ".dv.log", ".log", "_log.txt", ".TIF", ".STK", ".tif", ".stk"}
    | {".png", ".czi", ".nii.gz", ".xyz", "", ".DS_Store", ".ome.tif", ".ICS", ".HDR"}
    | {".DAT", ".inf", ".rec", ".raw", ".fake.ini"}
)
STEMS = st.sampled_from(
    [
        *("a", "b", "exp", "exp_w1DAPI", "exp_w2GFP", "slide", "Slidedat", "Index", "Data0000"),
        *("s_1", "s_2", "pat_z1", "multi_0", "g", "g_D3D", ".hidden", "caf\udce9", "Thumbs"),
    ]
)
DIRS = st.sampled_from(["", "a", "a/b", "_slide_/stack1", "slide", "exp", "sub dir"])


def _content(name: str, rnd: random.Random, names: list[str]) -> bytes:
    """Plausible content for index files, so content parsers have something to chew on."""
    low = name.lower()
    pick = [os.path.basename(n) for n in rnd.sample(names, min(3, len(names)))]
    if low.endswith(".pattern"):
        return rnd.choice([f"{pick[0]}", "s_<1-2>.tif", "pat_z<1-3>.tif", r"s_.*\.ics", "<"]).encode(
            "utf-8", "surrogateescape"
        )
    if low.endswith(".nd"):
        return b'"DoWave", TRUE\r\n"NWavelengths", 2\r\n"WaveName1", "DAPI"\r\n"EndFile"\r\n'
    if low.endswith((".companion.ome", ".xdce")):
        refs = "".join(f'<UUID FileName="{p}"/><Image filename="{p}"/>' for p in pick)
        return f"<OME>{refs}</OME>".encode("utf-8", "surrogateescape")
    if low.endswith((".nhdr", ".nrrd")):
        where = rnd.choice(["", "./", "../", "/"])
        return f"NRRD0004\nencoding: raw\ndata file: {where}{pick[0]}\n\n".encode("utf-8", "surrogateescape")
    if low.endswith(".hdr") and rnd.random() < 0.3:
        return b":STM data\r"
    if low.endswith(".ini"):
        return f"[DATAFILE]\nFILE_0 = {pick[0]}\n".encode("utf-8", "surrogateescape")
    return b""


@st.composite
def name_soups(draw: st.DrawFn) -> list[tuple[str, int]]:
    entries = draw(st.lists(st.tuples(DIRS, STEMS, st.sampled_from(SUFFIXES)), min_size=1, max_size=25))
    seed = draw(st.integers(0, 2**16))
    return [(os.path.join(d, s + x), seed) for d, s, x in entries]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(name_soups())
def test_random_names_never_double_claim(soup: list[tuple[str, int]]) -> None:
    rnd = random.Random(soup[0][1])
    with tempfile.TemporaryDirectory(prefix="odb-fuzz-") as tmp:
        root = os.fsencode(tmp)
        rels = sorted({rel for rel, _ in soup})
        made: list[str] = []
        for rel in rels:
            path = os.path.join(root, os.fsencode(rel))
            if os.path.isdir(path):
                continue
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as fh:
                    fh.write(_content(rel, rnd, rels))
            except (NotADirectoryError, IsADirectoryError, FileExistsError):
                continue  # a name is both a file and a directory: keep the first
            made.append(os.fsdecode(path))
        files = [f for f in made if os.path.isfile(f)]
        result = GROUPER.group(files)
        check_invariants(files, result)
        for fs in result.filesets:
            assert not set(fs.missing) & set(files)
            assert fs.complete == (not fs.missing)
        shuffled = files[:]
        rnd.shuffle(shuffled)
        assert GROUPER.group(shuffled) == result
        assert all(reason for _, reason in result.unclaimed)


# ----------------------------------------------------------------------------- datasets


def _subdir(d: Path, name: str) -> Path:
    (d / name).mkdir()
    return d / name


WRITERS: dict[str, Callable[[Path, str], list[Path]]] = {
    "ics": lambda d, s: write_ics(d, s),
    "analyze": lambda d, s: write_analyze(d, s),
    "dv": lambda d, s: [write_dv(d, f"{s}.dv")],
    "nd": lambda d, s: write_nd(d, s, stages=1),
    "ome": lambda d, s: write_ome_tiffs(d, s, 2),
    "ome_nocomp": lambda d, s: write_ome_tiffs(d, s, 2, companion=False),
    "pattern": lambda d, s: write_pattern(d, s, 2),
    "lei": lambda d, s: write_lei(d, s, 2),
    "xdce": lambda d, s: write_xdce(_subdir(d, s), s),  # well file names ignore the stem
    "vsi": lambda d, s: write_vsi(d, s, stacks=1, frames=2),
    "mrxs": lambda d, s: write_mrxs(d, s, 2),
    "tif": lambda d, s: [write_tiff(d / f"{s}.tif")],
}


def _first(files: list[str]) -> str:
    return files[0]


# the key of a complete dataset, given the writer's files (first file unless noted)
KEY_OF: dict[str, Callable[[list[str]], str]] = {
    "nd": lambda files: min(files[1:]),
}


@st.composite
def datasets(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    kinds = draw(st.lists(st.sampled_from(sorted(WRITERS)), min_size=1, max_size=6))
    dirs = draw(st.lists(st.sampled_from(["", "x", "x/y", "z"]), min_size=len(kinds), max_size=len(kinds)))
    return [(k, d, f"d{i}{k}") for i, (k, d) in enumerate(zip(kinds, dirs, strict=True))]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), st.randoms(use_true_random=False))
def test_random_datasets_group_exactly(plan: list[tuple[str, str, str]], rnd: random.Random) -> None:
    with tempfile.TemporaryDirectory(prefix="odb-fuzz-") as tmp:
        expected: dict[str, set[str]] = {}
        for kind, sub, stem in plan:
            d = Path(tmp, sub)
            d.mkdir(parents=True, exist_ok=True)
            files = strs(WRITERS[kind](d, stem))
            expected[KEY_OF.get(kind, _first)(files)] = set(files)
        every = sorted(f for fs in expected.values() for f in fs)
        result = GROUPER.group(every)
        assert {fs.key: set(fs.files) for fs in result.filesets} == expected
        assert result.unclaimed == ()
        assert all(fs.complete for fs in result.filesets)

        # files still arriving: any subset keeps the invariants, and whatever is absent
        # from a fileset that knows about it is reported missing, never lost (without its
        # index file a data file may legitimately look like a single-file import)
        some = [f for f in every if rnd.random() < 0.6]
        partial = GROUPER.group(some)
        check_invariants(some, partial)
        for fs in partial.filesets:
            if fs.key in expected and fs.format != "single":
                assert set(fs.files) | set(fs.missing) == expected[fs.key], fs
