"""The poll backend's cycle model on real directories: incremental polls (one lstat per
directory, changed directories listed again, new files looked at until they settle) and a
full sweep as the safety net."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from omero_dropbox import Event, Watcher
from tests.support.watching import collect, created, write


def polled(root: Path, full_sweep: float) -> Watcher:
    """Every event type, polled every 0.1 s, READY after 0.3 quiet seconds."""
    return Watcher(root, backend="poll", poll_interval=0.1, settle=0.3, full_sweep=full_sweep)


def kinds(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.kind, e.path) for e in events]


def test_a_rewrite_within_the_same_second_is_reported_when_its_size_changes(shm_dir: Path) -> None:
    # notify's PollWatcher compared whole-second mtimes: this rewrite went unreported.
    target = shm_dir / "a.tif"
    with polled(shm_dir, full_sweep=3600) as w:
        write(target, b"first")
        assert kinds(collect(w, until=1)) == [("created", str(target))]
        first = target.stat().st_mtime_ns
        write(target, b"second, longer")
        # Same second as before, another nanosecond: only the size and the nanoseconds tell.
        second, nanos = divmod(first, 1_000_000_000)
        os.utime(target, ns=(first, second * 1_000_000_000 + (nanos + 1) % 1_000_000_000))
        assert target.stat().st_mtime_ns // 1_000_000_000 == second
        events = collect(w, until=1, quiet=0.5)
    assert kinds(events) == [("modified", str(target))]


def test_a_settled_file_rewritten_in_place_is_reported_by_the_next_full_sweep(shm_dir: Path) -> None:
    target = shm_dir / "d" / "a.tif"
    with polled(shm_dir, full_sweep=3.0) as w:
        write(target, b"first")
        assert kinds(collect(w, until=1)) == [("created", str(target))]
        # Quiet for longer than settle + 2 polls: no longer looked at every poll.
        time.sleep(0.8)
        rewritten = time.monotonic()
        with open(target, "r+b") as fh:  # in place: its directory does not change
            fh.write(b"FIRST and more")
        events = collect(w, until=1, timeout=10)
        waited = time.monotonic() - rewritten
    assert kinds(events) == [("modified", str(target))]
    # Not found by a poll (the directory is unchanged and the file had settled) but by a sweep.
    assert waited > 0.5, waited


def test_new_nested_directories_renames_and_removals_under_poll(shm_dir: Path) -> None:
    with polled(shm_dir, full_sweep=3600) as w:
        deep = shm_dir / "a" / "b" / "c" / "d"
        write(deep / "f.tif")
        write(shm_dir / "a" / "g.tif")
        assert set(created(collect(w, until=2))) == {str(deep / "f.tif"), str(shm_dir / "a" / "g.tif")}
        # A later subdirectory of a directory found while polling is polled too.
        write(deep / "e" / "h.tif")
        assert kinds(collect(w, until=1)) == [("created", str(deep / "e" / "h.tif"))]
        os.rename(shm_dir / "a" / "g.tif", shm_dir / "a" / "g2.tif")
        events = collect(w, until=1, quiet=0.5)
        assert [(e.kind, e.src_path, e.path) for e in events] == [
            ("moved", str(shm_dir / "a" / "g.tif"), str(shm_dir / "a" / "g2.tif"))
        ]
        shutil.rmtree(shm_dir / "a" / "b")
        events = collect(w, until=2, quiet=0.5)
    assert sorted(kinds(events)) == [("deleted", str(deep / "e" / "h.tif")), ("deleted", str(deep / "f.tif"))]


def test_a_file_replaced_by_rename_over_it_and_odd_names_under_poll(shm_dir: Path) -> None:
    raw = os.fsencode(shm_dir) + b"/caf\xe9-\xff.tif"
    target = shm_dir / "a.tif"
    with polled(shm_dir, full_sweep=3600) as w:
        with open(raw, "wb") as fh:
            fh.write(b"data")
        write(target, b"v1")
        events = collect(w, until=2)
        assert sorted(os.fsencode(e.path) for e in events) == sorted([raw, os.fsencode(target)])
        # An atomic save: written under a name the system-file rules skip, renamed over.
        write(shm_dir / ".a.tif.tmp", b"version 2")
        os.replace(shm_dir / ".a.tif.tmp", target)
        events = collect(w, until=1, quiet=0.5)
    assert kinds(events) == [("modified", str(target))]


def test_full_sweep_must_be_positive(shm_dir: Path) -> None:
    with pytest.raises(ValueError, match="full_sweep: must be greater than 0"):
        Watcher(shm_dir, backend="poll", full_sweep=0)


def test_a_directory_renamed_under_poll_moves_its_files(shm_dir: Path) -> None:
    exp, exp2 = shm_dir / "exp", shm_dir / "exp2"
    with polled(shm_dir, full_sweep=3600) as w:
        write(exp / "a.tif")
        write(exp / "sub" / "b.tif")
        assert len(collect(w, until=2)) == 2
        os.rename(exp, exp2)
        events = collect(w, until=2, quiet=0.5)
    assert sorted((e.kind, e.src_path, e.path) for e in events) == [
        ("moved", str(exp / "a.tif"), str(exp2 / "a.tif")),
        ("moved", str(exp / "sub" / "b.tif"), str(exp2 / "sub" / "b.tif")),
    ]
