"""Journal work per fileset: recording it (files, fileset, ``queued``) and the import queue's
claim and commit of it, on a journal on tmpfs (``synchronous=FULL``: the fsyncs are real calls,
cheap on tmpfs; on a disk each commit costs a flush more).

The claim/commit path is the one adapter function below (:func:`claim_and_finish`): when the
queue moves to ``journal.enqueue/claim_next/finish``, change that function and nothing else.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from omero_dropbox.journal import IMPORTED, FileIdentity, Journal, fileset_id

# ------------------------------------------------------------------ the adapter


def claim_and_finish(journal: Journal, fid: str) -> None:
    """What an import worker does to the journal for one fileset, around the importer: claim
    the next queued fileset (one commit) and record its success with the claim's token (one
    commit)."""
    claim = journal.claim_next(time.time(), worker="bench", max_running=1)
    assert claim is not None  # the oldest queued fileset (``fid`` joined the back of the queue)
    journal.finish(claim.id, claim.token, IMPORTED, "attempt 1")


# ------------------------------------------------------------------ helpers

_serial = itertools.count(1)


def _fileset(user: str = "amy", members: int = 2) -> tuple[str, list[str], list[FileIdentity]]:
    """A fresh fileset (an ICS pair by default): its id, member paths and identities."""
    n = next(_serial)
    paths = [f"/dropbox/{user}/d{n % 100:02d}/img{n:07d}.{ext}" for ext in ("ics", "ids")[:members]]
    idents = [FileIdentity(64769, n * 4 + i, 1000 + i, f"{n:032x}{i:032x}") for i in range(members)]
    return fileset_id(idents), paths, idents


def record_fileset(
    journal: Journal, user: str, fid: str, paths: list[str], idents: list[FileIdentity]
) -> None:
    """What the engine journals when a fileset is due (``DropBox._record``): every member, the
    fileset, and its move to ``queued``; the caller commits. (Baseline 0001 also timed a look-up
    of the fileset before ``upsert_fileset``, which the engine made then and no longer makes.)"""
    for path, ident in zip(paths, idents, strict=True):
        journal.record_file(path, user, ident, 1_700_000_000_000_000_000)
    journal.upsert_fileset(fid, user, paths[0], paths, "ICS", [])
    journal.enqueue(fid, "complete; queued for import")


@pytest.fixture
def journal(shm_dir: Path) -> Iterator[Journal]:
    j = Journal(shm_dir / "state")
    # A journal that already holds some history: indexes are not empty.
    for _ in range(2_000):
        fid, paths, idents = _fileset()
        with j.batch():
            record_fileset(j, "amy", fid, paths, idents)
    try:
        yield j
    finally:
        j.close()


# ------------------------------------------------------------------ benchmarks


def test_record_one_fileset_per_commit(benchmark: BenchmarkFixture, journal: Journal) -> None:
    """Today's engine: one transaction (one commit, one fsync) per due fileset."""

    def one() -> None:
        fid, paths, idents = _fileset()
        with journal.batch():
            record_fileset(journal, "amy", fid, paths, idents)

    benchmark(one)


@pytest.mark.parametrize("per_commit", [16, 256])
def test_record_many_filesets_per_commit(
    benchmark: BenchmarkFixture, journal: Journal, per_commit: int
) -> None:
    """The same work for ``per_commit`` filesets in one transaction (time is per batch)."""

    def batch() -> None:
        with journal.batch():
            for _ in range(per_commit):
                fid, paths, idents = _fileset()
                record_fileset(journal, "amy", fid, paths, idents)

    benchmark(batch)


def _queued(journal: Journal) -> Callable[[], tuple[tuple[Journal, str], dict[str, object]]]:
    def setup() -> tuple[tuple[Journal, str], dict[str, object]]:
        fid, paths, idents = _fileset()
        with journal.batch():
            record_fileset(journal, "amy", fid, paths, idents)
        return (journal, fid), {}

    return setup


def test_claim_and_finish_one_fileset(benchmark: BenchmarkFixture, journal: Journal) -> None:
    """The queue's journal work for one fileset (see :func:`claim_and_finish`); recording the
    fileset is setup, not timed."""
    benchmark.pedantic(claim_and_finish, setup=_queued(journal), rounds=500, warmup_rounds=20)
    assert journal.counts()["amy"][IMPORTED] >= 1  # (one round when run with --benchmark-disable)
