"""Renames and quick sequences the kernel queues before the watcher reads them (issue 15, 1-5).

The real Watcher runs in a child process on a real directory with a real inotify backend: our
own (native) and notify's (notify, the adapter macOS and Windows use), each test on both.
(Polling sees only what is there at each poll: its renames are in test_watcher_poll.py.)
To make "in quick succession" certain rather than likely, the child is stopped (SIGSTOP)
while the changes are made, so the kernel queues all of them before the watcher reads any;
the child then resumes and the test reads what a consumer gets until a marker file, written
last, is reported.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from omero_dropbox import Watcher
from tests.support.watching import require_backend

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inotify semantics")

CHILD = textwrap.dedent(
    """
    import json, sys
    from omero_dropbox import Watcher

    root, options = sys.argv[1], json.loads(sys.argv[2])
    with Watcher(root, **options) as w:
        assert [b for _, b in w.backends()] == [options["backend"]]
        print(json.dumps("ready"), flush=True)
        while (batch := w.next_batch(timeout=0.2)) is not None:
            for e in batch:
                print(json.dumps([e.kind, e.path, e.src_path, e.is_dir]), flush=True)
    """
)

Seen = tuple[str, str, str | None, bool]


class WatcherProcess:
    """A Watcher in a child process whose events are read line by line."""

    def __init__(self, root: Path, **options: Any) -> None:
        self.root = root
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), json.dumps(options)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._next(20.0) == "ready", "the watcher child did not start"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def _next(self, timeout: float) -> Any:
        try:
            item = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from the watcher child within {timeout}s") from None
        assert item is not None, "the watcher child exited"
        return item

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Every change made inside is queued by the kernel before the watcher reads any."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def until_marker(self, name: str = "zz-marker.tif", timeout: float = 15.0) -> list[Seen]:
        """Write a marker file; return every event up to its report (the marker's left out)."""
        marker = str(self.root / name)
        with open(marker, "wb") as fh:
            fh.write(b"m")
        events: list[Seen] = []
        deadline = time.monotonic() + timeout
        while True:
            kind, path, src, is_dir = self._next(max(0.01, deadline - time.monotonic()))
            if path == marker:
                return events
            events.append((kind, path, src, is_dir))

    def caught_up(self, before: set[str], events: list[Seen], timeout: float = 10.0) -> list[Seen]:
        """``events`` and those after them until a consumer's belief matches the disk. notify may
        drop what was queued inside a directory as it moved; the core lists the directory again
        1 s later and reports what vanished then, which can be after the marker (README)."""
        out = list(events)
        deadline = time.monotonic() + timeout
        while believed(before, out) != on_disk(self.root):
            kind, path, src, is_dir = self._next(max(0.01, deadline - time.monotonic()))
            out.append((kind, path, src, is_dir))
        return out

    def until(self, path: Path, timeout: float = 15.0) -> list[Seen]:
        """Every event up to and including the first one about `path`."""
        events: list[Seen] = []
        deadline = time.monotonic() + timeout
        while not events or events[-1][1] != str(path):
            kind, got, src, is_dir = self._next(max(0.01, deadline - time.monotonic()))
            events.append((kind, got, src, is_dir))
        return events

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(params=["native", "notify", "fanotify"])
def watch(shm_dir: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    require_backend(request.param)
    started: list[WatcherProcess] = []

    def start(**options: Any) -> WatcherProcess:
        options.setdefault("settle", 0.2)
        options.setdefault("backend", request.param)
        w = WatcherProcess(shm_dir, **options)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


def believed(before: set[str], events: list[Seen]) -> set[str]:
    """The files a consumer believes exist after applying `events` to `before`."""
    files = set(before)
    for kind, path, src, is_dir in events:
        if is_dir:
            continue
        if kind in ("created", "modified"):
            files.add(path)
        elif kind == "deleted":
            files.discard(path)
        elif kind == "moved":
            files.discard(src or "")
            files.add(path)
    return files


def on_disk(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file() and p.name != "zz-marker.tif"}


def write(path: Path, data: bytes = b"x" * 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_changes_queued_inside_a_just_renamed_directory_are_not_lost(shm_dir: Path, watch: Any) -> None:
    a, b = shm_dir / "a", shm_dir / "b"
    write(a / "f.tif")
    write(a / "x.tif")
    before = on_disk(shm_dir)
    w = watch()
    with w.frozen():
        os.rename(a, b)
        os.unlink(b / "f.tif")
        os.rename(b / "x.tif", b / "y.tif")
    events = w.caught_up(before, w.until_marker())
    assert believed(before, events) == on_disk(shm_dir) == {str(b / "y.tif")}, events
    assert sorted(events) == sorted(
        [
            ("moved", str(b / "f.tif"), str(a / "f.tif"), False),
            ("moved", str(b / "x.tif"), str(a / "x.tif"), False),
            ("deleted", str(b / "f.tif"), None, False),
            ("moved", str(b / "y.tif"), str(b / "x.tif"), False),
        ]
    )
    assert events.index(("deleted", str(b / "f.tif"), None, False)) > events.index(
        ("moved", str(b / "f.tif"), str(a / "f.tif"), False)
    )


def test_a_directory_renamed_twice_in_quick_succession_moves_its_files_twice(
    shm_dir: Path, watch: Any
) -> None:
    a, b, c = shm_dir / "a", shm_dir / "b", shm_dir / "c"
    write(a / "deep" / "f.tif")
    before = on_disk(shm_dir)
    w = watch()
    with w.frozen():
        os.rename(a, b)
        os.rename(b, c)
    events = w.until_marker()
    assert believed(before, events) == on_disk(shm_dir) == {str(c / "deep" / "f.tif")}, events
    assert events == [
        ("moved", str(b / "deep" / "f.tif"), str(a / "deep" / "f.tif"), False),
        ("moved", str(c / "deep" / "f.tif"), str(b / "deep" / "f.tif"), False),
    ]
    # The directory keeps its watch under its last name.
    write(c / "deep" / "later.tif")
    assert w.until_marker("zz-marker2.tif") == [("created", str(c / "deep" / "later.tif"), None, False)]


def test_a_blacklisted_directory_moved_out_from_under_the_blacklist_is_watched(
    shm_dir: Path, watch: Any
) -> None:
    # A moved directory keeps its watches; one inside it that was never watched (blacklisted)
    # is allowed under its new name, and only a walk finds it.
    a, b = shm_dir / "a", shm_dir / "b"
    write(a / "f.tif")
    write(a / "skip" / "s.tif")
    w = watch(blacklist=[str(a / "skip")])
    os.rename(a, b)
    events = w.until(b / "skip" / "s.tif")
    assert sorted(events) == [
        ("created", str(b / "skip" / "s.tif"), None, False),
        ("moved", str(b / "f.tif"), str(a / "f.tif"), False),
    ]
    write(b / "skip" / "later.tif")
    assert w.until(b / "skip" / "later.tif") == [("created", str(b / "skip" / "later.tif"), None, False)]


def test_a_file_renamed_twice_in_quick_succession_is_two_moves(shm_dir: Path, watch: Any) -> None:
    x, y, z = shm_dir / "x.tif", shm_dir / "y.tif", shm_dir / "z.tif"
    write(x)
    w = watch()
    with w.frozen():
        os.rename(x, y)
        os.rename(y, z)
    events = w.until_marker()
    assert events == [
        ("moved", str(y), str(x), False),
        ("moved", str(z), str(y), False),
    ]


def test_a_directory_created_and_removed_is_reported_removed(shm_dir: Path, watch: Any) -> None:
    e = shm_dir / "e"
    w = watch(ignore_dir_events=False)
    e.mkdir()
    assert w.until_marker() == [("created", str(e), None, True)]
    e.rmdir()
    assert w.until_marker("zz-marker2.tif") == [("deleted", str(e), None, True)]


def test_a_file_held_open_and_quiet_is_reported_one_write_timeout_after_its_last_write(
    shm_dir: Path,
) -> None:
    timeout = 1.5
    target = shm_dir / "held.tif"
    with Watcher(shm_dir, settle=0.2, write_timeout=timeout) as w, open(target, "wb") as fh:
        fh.write(b"z" * 4096)
        fh.flush()
        last_write = time.monotonic()
        events = []
        while not events and time.monotonic() < last_write + 4 * timeout:
            batch = w.next_batch(timeout=0.05)
            assert batch is not None
            events.extend(batch)
        waited = time.monotonic() - last_write
    assert [(e.kind, e.path) for e in events] == [("created", str(target))]
    # Reported once quiet for write_timeout: not before, and not a second timeout later.
    assert timeout - 0.1 <= waited < 1.5 * timeout, waited


@pytest.mark.parametrize("backend", ["native", "fanotify"])
def test_a_file_closed_reopened_and_appended_before_the_watcher_reads_waits_for_its_last_close(
    shm_dir: Path, backend: str
) -> None:
    # fanotify merges the queued events of one file into one record that says "written and
    # closed" but not in which order: the watcher must not take the writer, which reopened the
    # file and still holds it, for done (README, "Backend differences"). notify has no close
    # events to go by (quiet time alone ends a file there).
    require_backend(backend)
    target = shm_dir / "stack.tif"
    w = WatcherProcess(shm_dir, backend=backend, settle=0.2, close_grace=0.3)
    appender = None
    try:
        with w.frozen():
            target.write_bytes(b"header")
            appender = open(target, "ab")  # held open across the first check below
            appender.write(b"plane" * 1000)
            appender.flush()
        # The marker is read after the file's events, so its grace ends after the file's.
        assert w.until_marker() == []
        appender.write(b"last")
        appender.close()
        assert w.until_marker("zz-marker2.tif") == [("created", str(target), None, False)]
    finally:
        if appender is not None:
            appender.close()
        w.close()
