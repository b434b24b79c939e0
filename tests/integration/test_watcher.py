"""The watcher on real directories with real kernel events: the guarantee suite runs on every
backend (the `backend` fixture: native, notify, poll); where one legitimately differs, the test
asserts that backend's documented behaviour (README, "Backend differences")."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from omero_dropbox import Watcher
from omero_dropbox.watcher import system_file_rules
from tests.support.processes import sigint_as_a_terminal_sends_it
from tests.support.watching import WatchBackend, collect, created, reader_starved, require_backend, write

# ------------------------------------------------------------------ basics


def test_created_file_is_reported_once_when_complete(shm_dir: Path, backend: WatchBackend) -> None:
    with backend.watcher(shm_dir) as w:
        assert w.backends() == [(str(shm_dir), backend.name)]
        write(shm_dir / "a.tif")
        events = collect(w, until=1, quiet=0.5)
    assert [(e.kind, e.path, e.is_dir) for e in events] == [("created", str(shm_dir / "a.tif"), False)]


def test_reports_tells_in_advance_which_paths_the_watcher_will_report(
    shm_dir: Path, backend: WatchBackend
) -> None:
    # The engine asks this before waiting for a file it has not seen (a fileset member, a
    # companion's key): a file the watcher drops by its name must not be waited for.
    root = os.fsencode(shm_dir)
    names = [b"amy/a.ics", b"amy/b.TIF", b"amy/\xff.tif", b"amy/.x.ics", b"amy/.snap/a.ics",
             b"amy/skip/a.ics", b"amy/a.txt", b"amy/a.tif~"]  # fmt: skip
    with backend.watcher(shm_dir, whitelist=[".tif", "ics"], blacklist=["amy/skip"], settle=0.2) as w:
        predicted = {os.fsdecode(root + b"/" + n) for n in names if w.reports(root + b"/" + n)}
        for n in names:
            write(Path(os.fsdecode(root + b"/" + n)))
        events = collect(w, until=len(predicted), quiet=0.5)
    assert set(created(events)) == predicted
    assert len(predicted) == 3  # a.ics, b.TIF and the non-UTF-8 .tif
    assert not w.reports(os.fsdecode(root) + "/../elsewhere/a.tif")


def test_file_written_in_chunks_over_seconds_is_one_event_after_last_chunk(
    shm_dir: Path, backend: WatchBackend
) -> None:
    target = shm_dir / "slow.tif"
    # Pauses of 0.4 s. Without close events (notify, poll) quiet time alone ends a file, so
    # settle must exceed the writer's pauses (README, "Backend differences").
    with backend.watcher(shm_dir, settle=0.3 if backend.closes else 1.0) as w:
        with open(target, "wb") as fh:
            for _ in range(6):
                fh.write(b"y" * 4096)
                fh.flush()
                early = w.next_batch(timeout=0.4)
                assert early == [], f"reported while still being written: {early}"
        finished_at = time.monotonic()
        events = collect(w, until=1, quiet=0.5)
    assert [(e.kind, e.path) for e in events] == [("created", str(target))]
    assert time.monotonic() >= finished_at


def test_file_created_and_held_open_before_its_first_write_waits_for_the_close(
    shm_dir: Path, backend: WatchBackend
) -> None:
    # A microscope may create its output file long before the first byte arrives. The watcher
    # asks the kernel for no open events, so it must not mistake this for a finished link.
    target = shm_dir / "acquiring.tif"
    with backend.watcher(shm_dir, settle=0.2) as w:
        with open(target, "wb") as fh:
            early = collect(w, until=None if backend.closes else 1, quiet=1.0)
            if backend.closes:
                assert early == [], f"reported before anything was written: {early}"
            else:
                # Documented difference: without close events an empty file quiet for
                # `settle` is complete; its first write is then a modification.
                assert [(e.kind, e.path) for e in early] == [("created", str(target))]
            fh.write(b"z" * 4096)
        events = collect(w, until=1, quiet=0.3)
    expected = "created" if backend.closes else "modified"
    assert [(e.kind, e.path) for e in events] == [(expected, str(target))]


def test_file_closed_then_reopened_and_appended_within_the_grace_is_one_event(
    shm_dir: Path, backend: WatchBackend
) -> None:
    # Some acquisition software writes a header, closes, and reopens the file to append data.
    target = shm_dir / "stack.tif"
    with backend.watcher(shm_dir, close_grace=0.5) as w:
        write(target, b"header")
        with open(target, "ab") as fh:
            fh.write(b"plane" * 1000)
            early = collect(w, quiet=1.0)
            assert early == [], f"reported while being appended: {early}"
        events = collect(w, until=1, quiet=0.8)
    assert [(e.kind, e.path) for e in events] == [("created", str(target))]


def test_several_roots_each_report_their_complete_files_once(
    tmp_path: Path, shm_dir: Path, backend: WatchBackend
) -> None:
    disk_root = tmp_path / "disk"
    disk_root.mkdir()
    roots = [shm_dir, disk_root]
    with backend.watcher(roots, settle=0.2) as w:
        for root in roots:
            for i in range(20):
                write(root / f"sub{i % 3}" / f"f{i}.tif")
        events = collect(w, until=40, quiet=0.5)
    seen = created(events)
    expected = {str(root / f"sub{i % 3}" / f"f{i}.tif") for root in roots for i in range(20)}
    assert set(seen) == expected
    assert max(seen.values()) == 1


def test_file_deleted_before_ready_is_dropped_silently(shm_dir: Path, backend: WatchBackend) -> None:
    with backend.watcher(shm_dir, event_types=["all"]) as w:
        fh = open(shm_dir / "gone.tif", "wb")
        fh.write(b"abc")
        os.unlink(shm_dir / "gone.tif")
        fh.close()
        write(shm_dir / "kept.tif")
        events = collect(w, until=1, quiet=0.5)
    assert [(e.kind, os.path.basename(e.path)) for e in events] == [("created", "kept.tif")]


def test_rename_inside_tree_is_one_moved_event(shm_dir: Path, backend: WatchBackend) -> None:
    (shm_dir / "sub").mkdir()
    with backend.watcher(shm_dir) as w:
        write(shm_dir / "a.tif")
        collect(w, until=1)
        os.rename(shm_dir / "a.tif", shm_dir / "sub" / "b.tif")
        events = collect(w, until=1, quiet=0.5)
    assert len(events) == 1
    (ev,) = events
    assert ev.kind == "moved"
    assert ev.src_path == str(shm_dir / "a.tif")
    assert ev.path == str(shm_dir / "sub" / "b.tif")


def test_directory_rename_moves_every_reported_file_and_keeps_watching(
    shm_dir: Path, backend: WatchBackend
) -> None:
    with backend.watcher(shm_dir) as w:
        for i in range(3):
            write(shm_dir / "exp" / "deep" / f"f{i}.tif")
        collect(w, until=3)
        os.rename(shm_dir / "exp", shm_dir / "exp2")
        moved = collect(w, until=3, quiet=0.3)
        write(shm_dir / "exp2" / "deep" / "later.tif")
        later = collect(w, until=1, quiet=0.3)
    assert sorted((e.kind, e.src_path, e.path) for e in moved) == sorted(
        ("moved", str(shm_dir / "exp" / "deep" / f"f{i}.tif"), str(shm_dir / "exp2" / "deep" / f"f{i}.tif"))
        for i in range(3)
    )
    assert [(e.kind, e.path) for e in later] == [("created", str(shm_dir / "exp2" / "deep" / "later.tif"))]


def test_partial_name_renamed_to_final_name_is_reported_under_final_name(
    shm_dir: Path, backend: WatchBackend
) -> None:
    with backend.watcher(shm_dir) as w:
        write(shm_dir / "scan.tif.part")
        os.rename(shm_dir / "scan.tif.part", shm_dir / "scan.tif")
        events = collect(w, until=1, quiet=0.5)
    assert [(e.kind, e.path) for e in events] == [("created", str(shm_dir / "scan.tif"))]


def test_moved_in_file_and_directory_are_reported(shm_dir: Path, backend: WatchBackend) -> None:
    outside = shm_dir / "outside"
    inside = shm_dir / "inside"
    inside.mkdir()
    write(outside / "one.tif")
    write(outside / "tree" / "two.tif")
    with backend.watcher(inside, settle=0.2) as w:
        os.rename(outside / "one.tif", inside / "one.tif")
        os.rename(outside / "tree", inside / "tree")
        events = collect(w, until=2, quiet=0.5)
    assert sorted(created(events)) == [str(inside / "one.tif"), str(inside / "tree" / "two.tif")]


def test_moved_out_file_is_a_deletion(shm_dir: Path, backend: WatchBackend) -> None:
    inside = shm_dir / "inside"
    inside.mkdir()
    with backend.watcher(inside, event_types=["all"]) as w:
        write(inside / "a.tif")
        collect(w, until=1)
        os.rename(inside / "a.tif", shm_dir / "a.tif")
        events = collect(w, until=1, quiet=0.3)
    assert [(e.kind, e.path) for e in events] == [("deleted", str(inside / "a.tif"))]


def test_touch_and_chmod_of_reported_file_do_not_re_report(shm_dir: Path, backend: WatchBackend) -> None:
    with backend.watcher(shm_dir, event_types=["all"]) as w:
        write(shm_dir / "a.tif")
        collect(w, until=1)
        os.utime(shm_dir / "a.tif")
        os.chmod(shm_dir / "a.tif", 0o600)
        events = collect(w, quiet=0.8)
    assert events == []


def test_rewrite_of_reported_file_is_a_modification(shm_dir: Path, backend: WatchBackend) -> None:
    with backend.watcher(shm_dir, event_types=["all"]) as w:
        write(shm_dir / "a.tif")
        collect(w, until=1)
        write(shm_dir / "a.tif", b"new content")
        events = collect(w, until=1, quiet=0.3)
    assert [(e.kind, e.path) for e in events] == [("modified", str(shm_dir / "a.tif"))]


def test_hard_link_and_symlink_without_close_event_are_reported_after_settle(
    shm_dir: Path, backend: WatchBackend
) -> None:
    write(shm_dir / "src.tif")
    (shm_dir / "watched").mkdir()
    with backend.watcher(shm_dir / "watched", settle=0.3) as w:
        os.link(shm_dir / "src.tif", shm_dir / "watched" / "hard.tif")
        os.symlink(shm_dir / "src.tif", shm_dir / "watched" / "soft.tif")
        events = collect(w, until=2, quiet=0.3)
    assert sorted(created(events)) == [str(shm_dir / "watched" / n) for n in ("hard.tif", "soft.tif")]


# --------------------------------------------------------- new-directory race


def test_files_written_into_freshly_created_nested_directories_are_all_reported(
    shm_dir: Path, backend: WatchBackend
) -> None:
    count = 500
    with backend.watcher(shm_dir, settle=0.2) as w:
        expected = set()
        for i in range(count):
            deep = shm_dir / f"d{i}" / "x" / "y"
            deep.mkdir(parents=True)
            write(deep / "f.tif")
            expected.add(str(deep / "f.tif"))
        events = collect(w, until=count, timeout=30, quiet=0.5)
    seen = created(events)
    assert set(seen) == expected, f"missed {len(expected - set(seen))} of {count}"
    assert max(seen.values()) == 1, "a file was reported twice"


def test_directory_created_with_many_levels_at_once_is_fully_watched(
    shm_dir: Path, backend: WatchBackend
) -> None:
    with backend.watcher(shm_dir, settle=0.2) as w:
        (shm_dir / "a" / "b" / "c" / "d").mkdir(parents=True)
        write(shm_dir / "a" / "b" / "c" / "d" / "first.tif")
        collect(w, until=1)
        write(shm_dir / "a" / "b" / "second.tif")
        events = collect(w, until=1, quiet=0.3)
    assert list(created(events)) == [str(shm_dir / "a" / "b" / "second.tif")]


# ------------------------------------------------------------------- overflow


def _set_sysctl(name: str, value: str) -> str:
    path = Path("/proc/sys") / name.replace(".", "/")
    old = path.read_text().strip()
    path.write_text(value)
    return old


def _watcher_with_a_tiny_queue(root: Path, backend: str = "native") -> Watcher:
    """A watcher whose kernel queue holds 64 events, so that a burst really overflows it."""
    if os.geteuid() != 0:
        pytest.skip("lowering fs.inotify.max_queued_events needs root")
    require_backend(backend)
    # The kernel reads the limit when the inotify instance (fanotify group) is created: lower
    # it only for that moment.
    sysctl = "fs.fanotify.max_queued_events" if backend == "fanotify" else "fs.inotify.max_queued_events"
    old = _set_sysctl(sysctl, "64")
    try:
        return Watcher(root, settle=0.2, backend=backend)
    finally:
        _set_sysctl(sysctl, old)


@pytest.mark.needs_root
@pytest.mark.parametrize("kernel", ["native", "notify", "fanotify"])
def test_queue_overflow_is_rescanned_without_losses_or_duplicates(shm_dir: Path, kernel: str) -> None:
    # (notify's inotify passes the overflow on as its Rescan flag.)
    for i in range(50):
        (shm_dir / f"dir{i}").mkdir()
    w = _watcher_with_a_tiny_queue(shm_dir, kernel)
    total = 3000
    with w:
        with reader_starved():
            for i in range(total):
                write(shm_dir / f"dir{i % 50}" / f"f{i}.tif")
        events = collect(w, until=total, timeout=60, quiet=1.0)
        stats = w.stats()
    seen = created(events)
    assert stats["overflows"] > 0, "the test did not force an overflow"
    assert stats["rescans"] > 0
    assert len(seen) == total, f"missed {total - len(seen)} files after overflow"
    assert max(seen.values()) == 1, "rescan re-reported files"


@pytest.mark.needs_root
def test_files_reported_before_an_overflow_are_quiet_in_its_rescan_unless_rewritten(shm_dir: Path) -> None:
    # Closed files are reported without being looked at; a rescan must still tell a rewrite
    # from a file whose times were set afterwards (cp -p, tar, rsync -t), in the past or the
    # future, without re-reporting the latter.
    flood = shm_dir / "flood"
    flood.mkdir()
    w = _watcher_with_a_tiny_queue(shm_dir)
    day = 86_400
    names = ["plain.tif", "future.tif", "past.tif", "later_future.tif", "rewritten.tif"]
    with w:
        for name in names:
            write(shm_dir / name)
        now = time.time()
        os.utime(shm_dir / "future.tif", (now + day, now + day))
        os.utime(shm_dir / "past.tif", (now - day, now - day))
        first = collect(w, until=len(names), quiet=0.5)
        assert sorted(created(first)) == sorted(str(shm_dir / n) for n in names)
        os.utime(shm_dir / "later_future.tif", (now + day, now + day))
        collect(w, quiet=0.3)
        overflows = w.stats()["overflows"]
        with reader_starved():
            for i in range(3000):
                write(flood / f"f{i}.tif")
            with open(shm_dir / "rewritten.tif", "ab") as fh:
                fh.write(b"more")
            for i in range(3000, 6000):
                write(flood / f"f{i}.tif")
        events = collect(w, until=6001, timeout=60, quiet=1.0)
        assert w.stats()["overflows"] > overflows, "the test did not force an overflow"
    again = Counter(e.path for e in events if not e.path.startswith(str(flood)))
    assert again == {str(shm_dir / "rewritten.tif"): 1}, again
    assert len(created(events)) == 6000


# ------------------------------------------------------------------ options


def test_flat_mode_watches_the_root_only(shm_dir: Path, backend: WatchBackend) -> None:
    (shm_dir / "sub").mkdir()
    with backend.watcher(shm_dir, mode="flat") as w:
        write(shm_dir / "sub" / "no.tif")
        write(shm_dir / "yes.tif")
        events = collect(w, until=1, quiet=0.5)
    assert list(created(events)) == [str(shm_dir / "yes.tif")]


def test_recurse_mode_watches_existing_but_not_new_subdirectories(
    shm_dir: Path, backend: WatchBackend
) -> None:
    (shm_dir / "old").mkdir()
    with backend.watcher(shm_dir, mode="recurse", settle=0.2) as w:
        (shm_dir / "new").mkdir()
        write(shm_dir / "new" / "no.tif")
        write(shm_dir / "old" / "yes.tif")
        events = collect(w, until=1, quiet=0.6)
    assert list(created(events)) == [str(shm_dir / "old" / "yes.tif")]


def test_event_types_limit_what_is_reported(shm_dir: Path, backend: WatchBackend) -> None:
    with backend.watcher(shm_dir, event_types=["deletion"], settle=0.2) as w:
        write(shm_dir / "a.tif")
        assert collect(w, quiet=0.5) == []
        os.unlink(shm_dir / "a.tif")
        events = collect(w, until=1, quiet=0.3)
    assert [(e.kind, e.path) for e in events] == [("deleted", str(shm_dir / "a.tif"))]


def test_system_files_are_ignored_and_the_rules_are_published(shm_dir: Path, backend: WatchBackend) -> None:
    names = [
        ".DS_Store",
        "._a.tif",
        "a.tif~",
        "b.part",
        "Thumbs.db",
        "desktop.ini",
        "c.crdownload",
        ".nfs0001",
    ]
    with backend.watcher(shm_dir) as w:
        for name in names:
            write(shm_dir / name)
        write(shm_dir / "untitled folder" / "x.tif")
        write(shm_dir / "real.tif")
        events = collect(w, until=1, quiet=0.5)
    assert list(created(events)) == [str(shm_dir / "real.tif")]
    patterns = {pattern for _, pattern, _ in system_file_rules()}
    assert {".", "~", ".part", "thumbs.db", "desktop.ini", "untitled folder"} <= patterns


def test_system_files_are_reported_when_filtering_is_off(shm_dir: Path, backend: WatchBackend) -> None:
    with backend.watcher(shm_dir, ignore_sys_files=False) as w:
        write(shm_dir / ".hidden.tif")
        events = collect(w, until=1, quiet=0.3)
    assert list(created(events)) == [str(shm_dir / ".hidden.tif")]


def test_whitelist_matches_case_insensitive_multi_part_suffixes(shm_dir: Path, backend: WatchBackend) -> None:
    with backend.watcher(shm_dir, whitelist=[".ome.tiff", "ICS"]) as w:
        for name in ["a.OME.TIFF", "b.ics", "c.tiff", "d.txt"]:
            write(shm_dir / name)
        events = collect(w, until=2, quiet=0.5)
    assert sorted(os.path.basename(p) for p in created(events)) == ["a.OME.TIFF", "b.ics"]


def test_blacklisted_subtree_gets_no_watch_and_no_events(shm_dir: Path, backend: WatchBackend) -> None:
    for i in range(5):
        (shm_dir / "skip" / f"s{i}").mkdir(parents=True)
    (shm_dir / "keep").mkdir()
    with backend.watcher(shm_dir, blacklist=["skip"]) as w:
        # (notify's own inotify watches the blacklisted subtree too; `watches` counts the
        # directories followed, and its events are dropped like the others.)
        assert w.stats()["watches"] == 2, "blacklisted directories must not be watched"
        write(shm_dir / "skip" / "s1" / "no.tif")
        write(shm_dir / "keep" / "yes.tif")
        events = collect(w, until=1, quiet=0.5)
    assert list(created(events)) == [str(shm_dir / "keep" / "yes.tif")]


def test_directory_events_are_reported_when_asked(shm_dir: Path, backend: WatchBackend) -> None:
    with backend.watcher(shm_dir, ignore_dir_events=False, settle=0.2) as w:
        (shm_dir / "d").mkdir()
        write(shm_dir / "d" / "f.tif")
        events = collect(w, until=2, quiet=0.3)
    assert sorted((e.kind, e.is_dir, os.path.basename(e.path)) for e in events) == [
        ("created", False, "f.tif"),
        ("created", True, "d"),
    ]


def test_block_size_bounds_each_batch(shm_dir: Path, backend: WatchBackend) -> None:
    with backend.watcher(shm_dir, block_size=7) as w:
        for i in range(30):
            write(shm_dir / f"f{i}.tif")
        sizes = []
        got = 0
        deadline = time.monotonic() + 10
        while got < 30 and time.monotonic() < deadline:
            batch = w.next_batch(timeout=0.5)
            assert batch is not None
            if batch:
                sizes.append(len(batch))
                got += len(batch)
    assert got == 30
    assert max(sizes) <= 7
    assert len(sizes) >= 5


def test_initial_scan_reports_existing_files_once(shm_dir: Path, backend: WatchBackend) -> None:
    write(shm_dir / "old1.tif")
    write(shm_dir / "a" / "b" / "old2.tif")
    with backend.watcher(shm_dir, initial_scan=True, settle=0.2) as w:
        events = collect(w, until=2, quiet=0.5)
    assert sorted(created(events)) == [str(shm_dir / "a" / "b" / "old2.tif"), str(shm_dir / "old1.tif")]
    assert max(created(events).values()) == 1


def test_without_initial_scan_existing_files_are_not_reported(shm_dir: Path, backend: WatchBackend) -> None:
    write(shm_dir / "old.tif")
    with backend.watcher(shm_dir, initial_scan=False, settle=0.2) as w:
        assert collect(w, quiet=0.6) == []


def test_non_utf8_names_survive_as_surrogate_escaped_str(shm_dir: Path, backend: WatchBackend) -> None:
    raw = os.fsencode(shm_dir) + b"/caf\xe9-\xff.tif"
    with backend.watcher(shm_dir) as w:
        with open(raw, "wb") as fh:
            fh.write(b"data")
        events = collect(w, until=1, quiet=0.3)
    assert len(events) == 1
    assert os.fsencode(events[0].path) == raw


def test_poll_backend_never_reports_a_partial_write_early(shm_dir: Path) -> None:
    target = shm_dir / "slow.tif"
    with Watcher(shm_dir, backend="poll", poll_interval=0.1, settle=0.5) as w:
        assert w.backends() == [(str(shm_dir), "poll")]
        with open(target, "wb") as fh:
            for _ in range(8):
                fh.write(b"z" * 1000)
                fh.flush()
                assert w.next_batch(timeout=0.2) == []
        events = collect(w, until=1, timeout=10, quiet=0.5)
    assert [(e.kind, e.path) for e in events] == [("created", str(target))]
    assert target.stat().st_size == 8000


def test_poll_backend_sees_new_directories_and_deletions(shm_dir: Path) -> None:
    with Watcher(shm_dir, backend="poll", poll_interval=0.1, settle=0.3, event_types=["all"]) as w:
        write(shm_dir / "n" / "m" / "f.tif")
        assert list(created(collect(w, until=1))) == [str(shm_dir / "n" / "m" / "f.tif")]
        os.unlink(shm_dir / "n" / "m" / "f.tif")
        events = collect(w, until=1, quiet=0.3)
    assert [(e.kind, e.path) for e in events] == [("deleted", str(shm_dir / "n" / "m" / "f.tif"))]


# -------------------------------------------------------------- errors, life


def test_missing_root_raises_an_error_naming_it(shm_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        Watcher(shm_dir / "does-not-exist")


def test_root_that_is_a_file_raises_an_error_naming_it(shm_dir: Path) -> None:
    write(shm_dir / "plain.txt")
    with pytest.raises(NotADirectoryError, match=r"plain\.txt"):
        Watcher(shm_dir / "plain.txt")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("mode", "deep", "mode: unknown path mode 'deep'; allowed: 'flat', 'recurse', 'follow'"),
        ("event_types", ["Creatoin"], "event_types: unknown event type"),
        ("backend", "magic", "backend: unknown backend 'magic'"),
        ("settle", -1.0, "settle: must be a non-negative number"),
        ("block_size", -3, "block_size"),
    ],
)
def test_bad_options_are_rejected_with_a_message_naming_them(
    shm_dir: Path, option: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Watcher(shm_dir, **{option: value})  # type: ignore[arg-type]


def test_close_stops_promptly_and_ends_iteration(shm_dir: Path) -> None:
    w = Watcher(shm_dir)
    result: list[object] = []

    def consume() -> None:
        result.extend(list(w))

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.2)  # let the consumer block inside the native wait
    started = time.monotonic()
    w.close()
    t.join(timeout=5)
    assert not t.is_alive()
    assert time.monotonic() - started < 2
    assert w.closed
    assert w.next_batch(timeout=0.1) is None


def test_blocking_iteration_is_interrupted_by_ctrl_c(shm_dir: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from omero_dropbox import Watcher
        w = Watcher({str(shm_dir)!r})
        print("ready", flush=True)
        try:
            for batch in w:
                pass
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            w.close()
            sys.exit(0)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_a_terminal_sends_it,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)  # the child is now blocked in next_batch with the GIL released
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert "interrupted" in out
    assert proc.returncode == 0


# ------------------------------------------------------------- permissions


def _run_as_nobody(
    root: Path, actions: str, expect: int, **options: object
) -> tuple[list[str], list[str], list[list[str]]]:
    """Fork a child that drops to uid/gid 65534, watches `root`, and reports events and log lines."""
    read_fd, write_fd = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            os.close(ready_r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            records: list[str] = []

            class Keep(logging.Handler):
                def emit(self, record: logging.LogRecord) -> None:
                    records.append(record.getMessage())

            logging.getLogger("omero_dropbox.watcher").addHandler(Keep())
            logging.getLogger("omero_dropbox.watcher").setLevel(logging.INFO)
            with Watcher(root, **{"settle": 0.2, **options}) as w:  # type: ignore[arg-type]
                os.write(ready_w, b"r")
                events = collect(w, until=expect, timeout=20, quiet=0.5)
                backends = [list(b) for b in w.backends()]
            payload = {
                "events": [e.path for e in events if e.kind == "created"],
                "logs": records,
                "backends": backends,
            }
            os.write(write_fd, json.dumps(payload).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"r"
    os.close(ready_r)
    exec(actions)  # the parent's actions run while the child watches
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    payload = json.loads(b"".join(chunks))
    return payload["events"], payload["logs"], payload["backends"]


@pytest.mark.needs_root
def test_permission_denied_directory_is_logged_once_and_picked_up_when_readable(shm_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the watcher as another user")
    os.chmod(shm_dir, 0o755)
    root = shm_dir / "box"
    locked = root / "locked"
    write(locked / "inside.tif")
    write(root / "open.tif")
    for p in (root, locked, locked / "inside.tif", root / "open.tif"):
        os.chown(p, 65534, 65534)
    os.chmod(locked, 0o000)
    actions = f"import os, time\ntime.sleep(0.5)\nos.chmod({str(locked)!r}, 0o755)\n"
    # initial scan is off: only the locked file, found when it becomes readable, is new.
    events, logs, _ = _run_as_nobody(root, actions, expect=1)
    assert events == [str(locked / "inside.tif")]
    denied = [m for m in logs if "permission denied" in m and str(locked) in m]
    assert len(denied) == 1, logs
    assert any("readable now" in m for m in logs)


@pytest.mark.needs_root
def test_watch_limit_falls_back_to_polling_with_one_clear_log_line(shm_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to lower fs.inotify.max_user_watches for another user")
    os.chmod(shm_dir, 0o755)
    root = shm_dir / "big"
    for i in range(20):
        (root / f"d{i}").mkdir(parents=True)
    for dirpath, _, _ in os.walk(root):
        os.chown(dirpath, 65534, 65534)
    # The limit is per user and checked at every watch: user nobody, which holds no
    # watches, may place 5 while the child starts; the parent restores it right after.
    limit = Path("/proc/sys/fs/inotify/max_user_watches")
    old = limit.read_text().strip()
    limit.write_text("5")
    actions = (
        f"from pathlib import Path\nPath({str(limit)!r}).write_text({old!r})\n"
        f"import os\nwith open({str(root / 'd7' / 'late.tif')!r}, 'wb') as fh: fh.write(b'x')\n"
    )
    try:
        events, logs, backends = _run_as_nobody(
            root, actions, expect=1, backend="auto", poll_interval=0.1, settle=0.3
        )
    finally:
        limit.write_text(old)
    assert backends == [[str(root), "poll"]]
    assert events == [str(root / "d7" / "late.tif")]
    fallback = [m for m in logs if "fs.inotify.max_user_watches" in m]
    assert len(fallback) == 1, logs
    assert "falling back to polling" in fallback[0]


# ------------------------------------------------------------------ fanotify


@pytest.mark.needs_root
def test_auto_chooses_fanotify_where_the_process_may_mark_the_filesystem(shm_dir: Path) -> None:
    require_backend("fanotify")
    with Watcher(shm_dir, backend="auto", settle=0.2) as w:
        assert w.backends() == [(str(shm_dir), "fanotify")]
        write(shm_dir / "deep" / "er" / "a.tif")
        events = collect(w, until=1, quiet=0.3)
    assert [e.path for e in events if e.kind == "created"] == [str(shm_dir / "deep" / "er" / "a.tif")]


@pytest.mark.needs_root
def test_auto_falls_back_to_inotify_without_cap_sys_admin_and_says_so(shm_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the watcher as another user")
    os.chmod(shm_dir, 0o755)
    root = shm_dir / "box"
    root.mkdir()
    os.chown(root, 65534, 65534)
    actions = f"with open({str(root / 'a.tif')!r}, 'wb') as fh: fh.write(b'x')\n"
    # User nobody holds no capabilities: fanotify_init refuses (EPERM).
    events, logs, backends = _run_as_nobody(root, actions, expect=1, backend="auto")
    assert backends == [[str(root), "native"]]
    assert events == [str(root / "a.tif")]
    assert any("fanotify is unavailable" in m and "using inotify" in m for m in logs), logs


@pytest.mark.needs_root
def test_backend_fanotify_without_cap_sys_admin_fails_naming_what_it_needs(shm_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the watcher as another user")
    os.chmod(shm_dir, 0o755)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                Watcher(shm_dir, backend="fanotify").close()
                message = "no error"
            except OSError as e:
                message = f"{type(e).__name__}: {e}"
            os.write(write_fd, message.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    message = b"".join(chunks).decode()
    # (fanotify_init works unprivileged since Linux 5.13; the filesystem mark is refused.)
    assert message.startswith("WatcherError: fanotify is unavailable for"), message
    assert "Operation not permitted" in message and "CAP_SYS_ADMIN" in message


def test_fanotify_drops_events_outside_the_roots(shm_dir: Path) -> None:
    # The mark covers the whole filesystem: everything else on it must stay out.
    require_backend("fanotify")
    root, outside = shm_dir / "root", shm_dir / "outside"
    root.mkdir()
    outside.mkdir()
    with Watcher(root, backend="fanotify", settle=0.2) as w:
        for i in range(20):
            write(outside / f"d{i % 4}" / f"f{i}.tif")
        (outside / "d0").rename(outside / "d9")
        write(root / "mine.tif")
        events = collect(w, until=1, quiet=0.5)
        stats = w.stats()
    assert [(e.kind, e.path) for e in events] == [("created", str(root / "mine.tif"))]
    assert stats["raw_events"] > 20, "the outside events were not even seen"


@pytest.mark.needs_root
def test_fanotify_marks_a_filesystem_mounted_inside_a_root_too(shm_dir: Path) -> None:
    # A filesystem mark covers one filesystem: another one mounted below a root needs its own.
    require_backend("fanotify")
    inner = shm_dir / "inner"
    inner.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(inner)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (inner / "deep").mkdir()
        with Watcher(shm_dir, backend="fanotify", settle=0.2) as w:
            write(inner / "deep" / "a.tif")
            write(shm_dir / "b.tif")
            events = collect(w, until=2, quiet=0.3)
    finally:
        subprocess.run(["umount", str(inner)], check=True)
    assert sorted(e.path for e in events if e.kind == "created") == sorted(
        [str(inner / "deep" / "a.tif"), str(shm_dir / "b.tif")]
    )
