"""Reading a live Watcher in tests: collect its events for a while, count creations, write files."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from omero_dropbox import Event, Watcher


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
