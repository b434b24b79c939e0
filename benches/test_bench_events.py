"""Event hand-over: the native watcher's batches reaching Python, and the engine taking a
burst of scripted events through ``DropBox.feed`` to imported (as the Ice DropBox service
feeds it), both on tmpfs."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from omero_dropbox.config import load_config
from omero_dropbox.engine import DropBox
from omero_dropbox.importers import ImportRequest
from omero_dropbox.ownership import UserList
from omero_dropbox.watcher import Watcher

FILES = 2_000
DEADLINE = 60.0
_round = itertools.count()


@pytest.fixture
def watched(shm_dir: Path) -> Iterator[tuple[Watcher, Path]]:
    for i in range(20):
        (shm_dir / f"d{i:02d}").mkdir()
    watcher = Watcher(shm_dir, mode="follow", settle=0.2)
    try:
        yield watcher, shm_dir
    finally:
        watcher.close()


def test_watcher_burst_to_python(benchmark: BenchmarkFixture, watched: tuple[Watcher, Path]) -> None:
    """Write FILES files into 20 watched folders and take every READY event in Python batches.
    The time includes the writer and the watcher's close grace (0.1 s) and debounce (0.05 s)."""
    watcher, root = watched

    def burst() -> int:
        r = next(_round)
        for i in range(FILES):
            with open(root / f"d{i % 20:02d}" / f"r{r}_{i:05d}.dat", "wb") as fh:
                fh.write(b"x" * 64)
        seen: set[str] = set()
        deadline = time.monotonic() + DEADLINE
        while len(seen) < FILES and time.monotonic() < deadline:
            for event in watcher.next_batch(timeout=0.5) or ():
                if f"/r{r}_" in event.path:
                    seen.add(event.path)
        return len(seen)

    assert benchmark.pedantic(burst, rounds=5, warmup_rounds=1) == FILES


@dataclass(frozen=True)
class Scripted:
    path: str
    kind: str = "created"
    is_dir: bool = False
    src_path: str | None = None


USERS = [f"user{i:02d}" for i in range(4)]


@pytest.fixture
def fed_box(shm_dir: Path) -> Iterator[tuple[DropBox, list[ImportRequest], Path]]:
    dropbox = shm_dir / "DropBox"
    for user in USERS:
        (dropbox / user).mkdir(parents=True)
    settings = {"watchDir": str(dropbox), "dirImportWait": "0", "throttleImport": "0"}
    config = load_config(
        overrides=[f"omero.fs.{k}={v}" for k, v in settings.items()] + ["omero.fs.ng.completeWait=0"]
    )
    imported: list[ImportRequest] = []
    box = DropBox(config, imported.append, state_dir=shm_dir / "state", users=UserList(USERS), watch=False)
    box.start()
    try:
        yield box, imported, dropbox
    finally:
        box.shutdown(drain_timeout=30)


def _write_round(dropbox: Path, r: int) -> tuple[list[Scripted], int]:
    """FILES files for 4 users: a third in ICS pairs, the rest single TIFFs; the events and the
    number of filesets."""
    events: list[Scripted] = []
    filesets = 0
    i = 0
    while len(events) < FILES:
        d = dropbox / USERS[i % len(USERS)] / f"r{r}"
        d.mkdir(exist_ok=True)
        names = [f"c{i:05d}.ics", f"c{i:05d}.ids"] if i % 4 == 0 else [f"c{i:05d}.tif"]
        for name in names:
            (d / name).write_bytes(b"II*\0" + f"{r}:{i}:{name}".encode())
            events.append(Scripted(str(d / name)))
        filesets += 1
        i += 1
    return events, filesets


def test_feed_burst_to_imported(
    benchmark: BenchmarkFixture, fed_box: tuple[DropBox, list[ImportRequest], Path]
) -> None:
    """FILES scripted events (4 users, ICS pairs and TIFFs; dirImportWait=0, completeWait=0)
    fed at once, then the engine stepped until every fileset is imported (files written in setup)."""
    box, imported, dropbox = fed_box

    def setup() -> tuple[tuple[list[Scripted], int], dict[str, object]]:
        imported.clear()
        return _write_round(dropbox, next(_round)), {}

    def feed(events: list[Scripted], filesets: int) -> int:
        box.feed(events)
        deadline = time.monotonic() + DEADLINE
        while len(imported) < filesets and time.monotonic() < deadline:
            box.step(timeout=0.01)
        return len(imported)

    benchmark.pedantic(feed, setup=setup, rounds=5)
    assert box.queue.wait_idle(30)
