"""Reading a live Watcher in tests: collect its events for a while, count creations, write files;
the backends the guarantee suite runs on."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from omero_dropbox import Event, Watcher

StrPath = str | os.PathLike[str]


def collect(
    watcher: Watcher, until: int | None = None, timeout: float = 10.0, quiet: float = 0.0
) -> list[Event]:
    """Events until `until` have arrived (or `timeout`), then `quiet` more seconds of observation."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while until is not None and len(events) < until and time.monotonic() < deadline:
        batch = watcher.next_batch(timeout=min(0.2, max(0.01, deadline - time.monotonic())))
        assert batch is not None
        events.extend(batch)
    end = time.monotonic() + quiet
    while time.monotonic() < end:
        batch = watcher.next_batch(timeout=max(0.01, end - time.monotonic()))
        assert batch is not None
        events.extend(batch)
    return events


def created(events: list[Event]) -> Counter[str]:
    return Counter(e.path for e in events if e.kind == "created")


def write(path: Path, data: bytes = b"x" * 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


@dataclass(frozen=True)
class WatchBackend:
    """One backend the guarantee suite runs on, with the options that keep its tests quick.

    `closes`: the backend turns close-after-write into READY (our own inotify, fanotify). The others
    (notify, as on macOS and Windows; poll) go by quiet time alone: a writer pausing longer than
    `settle` has its file reported early, so their tests choose a `settle` above the pauses.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    closes: bool = False

    def watcher(self, roots: StrPath | list[StrPath], **options: Any) -> Watcher:
        return Watcher(roots, **{**self.options, **options})


@contextlib.contextmanager
def reader_starved() -> Iterator[None]:
    """While inside, the watcher's threads cannot run: every thread of this process is held on
    one CPU where the calling thread runs first-in-first-out (real time), so a burst written
    here queues up in the kernel whole and really overflows a small queue, however fast the
    reader drains it otherwise (fanotify merges a file's records into one, and our reader then
    keeps up with a writer in Python). Needs root; keep the burst well under the kernel's
    real-time budget (0.95 s of each second)."""
    tasks = [int(t) for t in os.listdir("/proc/self/task")]
    cpus = os.sched_getaffinity(0)
    one = {min(cpus)}
    for task in tasks:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(task, one)
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    try:
        yield
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        for task in tasks:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(task, cpus)


@functools.cache
def fanotify_unavailable() -> str | None:
    """Why backend "fanotify" cannot run here (it needs CAP_SYS_ADMIN), or None when it can."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    probe = tempfile.mkdtemp(prefix="odb-fanotify-probe-", dir=base)
    try:
        with Watcher(probe, backend="fanotify"):
            return None
    except OSError as e:
        return f"backend fanotify is unavailable here (needs root / CAP_SYS_ADMIN): {e}"
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def require_backend(name: str) -> None:
    """Skip the calling test, with the reason, when backend `name` cannot run here."""
    if name == "fanotify" and (why := fanotify_unavailable()):
        pytest.skip(why)


WATCH_BACKENDS = {
    "native": WatchBackend("native", {"backend": "native"}, closes=True),
    "notify": WatchBackend("notify", {"backend": "notify"}),
    # One filesystem mark; close-after-write like our inotify (skipped where it cannot run).
    "fanotify": WatchBackend("fanotify", {"backend": "fanotify"}, closes=True),
    # A rewrite in place is found by a full sweep only: keep it short here.
    "poll": WatchBackend("poll", {"backend": "poll", "poll_interval": 0.05, "full_sweep": 0.3}),
}
