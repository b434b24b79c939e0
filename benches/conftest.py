"""pytest-benchmark suites (``test_bench_*.py``); not part of the test suite (pyproject's
``testpaths`` is ``tests``). Run and compare as BENCHMARKS.md, "Micro-benchmarks", says."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.* helpers (file writers, sample configs)


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A fresh directory on tmpfs (``/dev/shm`` when there is one): the benches time our code,
    not a disk."""
    parent = "/dev/shm" if Path("/dev/shm").is_dir() else None
    path = Path(tempfile.mkdtemp(prefix="odb-bench-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
