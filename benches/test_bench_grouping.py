"""Grouping: the rule table on a mixed tree, and the engine's regroup of one user's pool."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_grouping import build_tree
from pytest_benchmark.fixture import BenchmarkFixture

from omero_dropbox.grouping import FilesetGrouper, GroupingResult
from tests.support.filesets import write_ics, write_tiff


@pytest.fixture
def mixed_tree(shm_dir: Path) -> list[str]:
    """10,000 files of every kind bench_grouping.py mixes (TIFFs, ICS, Analyze, DV, .nd, ...)."""
    return build_tree(shm_dir, 10_000)


def test_group_mixed_tree_fresh_grouper(benchmark: BenchmarkFixture, mixed_tree: list[str]) -> None:
    """A first grouping: no parse cache."""
    result: GroupingResult = benchmark(lambda: FilesetGrouper().group(mixed_tree))
    assert result.filesets


def _user_pool(root: Path, filesets: int) -> list[str]:
    """What the end-to-end bench drops for one user: ICS pairs and single TIFFs, half each."""
    files: list[str] = []
    for i in range(filesets):
        d = root / f"run{i % 10}"
        d.mkdir(exist_ok=True)
        if i % 2:
            files += [str(p) for p in write_ics(d, f"cell{i:05d}")]
        else:
            files.append(str(write_tiff(d / f"cell{i:05d}.tif")))
    return files


@pytest.mark.parametrize("filesets", [100, 2_000])
def test_regroup_user_pool(benchmark: BenchmarkFixture, shm_dir: Path, filesets: int) -> None:
    """The engine's regroup of a user's pool by her own grouper (parse cache warm), with her
    folder as root, as after every batch of events."""
    root = shm_dir / "amy"
    root.mkdir()
    files = frozenset(_user_pool(root, filesets))
    grouper = FilesetGrouper(warn=False)
    grouper.group(files, root=str(root))
    result: GroupingResult = benchmark(grouper.group, files, root=str(root))
    assert len(result.filesets) == filesets
