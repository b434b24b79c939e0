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
from tests.support.filesets import (
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
from tests.support.strategies import index_content, name_soups

GROUPER = FilesetGrouper()


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
                    fh.write(index_content(rel, rnd, rels))
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
