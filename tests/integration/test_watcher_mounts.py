"""Mounts inside a watched folder, on the real kernel with real mounts.

Facilities mount an instrument's share (NFS, SMB, sshfs) or another local filesystem inside a
user's DropBox folder. Each such mount is followed as a subtree of its own: a network
filesystem is polled (kernel events never see another host's writes), a local filesystem
fanotify cannot mark gets inotify, any other keeps its root's backend; ``backends()`` lists
every such subtree after the roots. Mounts made or removed while watching are followed too.

Every mount is undone on the way out, even when a test fails.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omero_dropbox import Event, Watcher
from tests.support.mounts import sshfs, tmpfs, why_no_sshfs, why_no_tmpfs
from tests.support.waiting import wait_for
from tests.support.watching import collect, require_backend, write

LOGGER = "omero_dropbox.watcher"
POLL = 0.3
SETTLE = 1.0
# sshfs keeps the kernel's attribute cache of 1 s (as an NFS client does): a change on the
# server shows through the mount up to that much later.
ATTR_CACHE = 1.0
# What a loaded 2-core machine may add to any deadline here.
SLACK = 4.0
# A polled file is seen by the next poll and READY once unchanged for `settle` plus two polls.
POLLED_READY = 3 * POLL + SETTLE + ATTR_CACHE + SLACK


def _needs_tmpfs() -> None:
    if why := why_no_tmpfs():
        pytest.skip(why)


def _needs_sshfs() -> None:
    if why := why_no_sshfs():
        pytest.skip(why)


@pytest.fixture(params=["ext4", "tmpfs"])
def folder(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A user's folder on the machine's disk (/var/tmp) or on a tmpfs (/dev/shm)."""
    base = "/dev/shm" if request.param == "tmpfs" else "/var/tmp"
    if not os.access(base, os.W_OK):
        pytest.skip(f"{base} is not writable")
    path = Path(tempfile.mkdtemp(prefix="odb-mounts-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def disk_folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="odb-mounts-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _kinds(events: list[Event]) -> list[tuple[str, str]]:
    return sorted((e.kind, e.path) for e in events)


def _first(w: Watcher, path: Path, timeout: float) -> tuple[list[Event], float]:
    """Events until one names `path` (or `timeout`), and how long that took."""
    start = time.monotonic()
    events: list[Event] = []
    while time.monotonic() - start < timeout:
        batch = w.next_batch(timeout=0.1)
        assert batch is not None
        events.extend(batch)
        if any(e.path == str(path) for e in events):
            break
    return events, time.monotonic() - start


def _mounts_listed(w: Watcher) -> list[tuple[str, str]]:
    return w.backends()[1:]


@pytest.mark.parametrize("backend", ["native", "fanotify"])
def test_files_in_a_tmpfs_mounted_inside_the_folder_are_reported_once(folder: Path, backend: str) -> None:
    _needs_tmpfs()
    require_backend(backend)
    with tmpfs(folder / "scratch") as scratch, Watcher(folder, backend=backend, settle=SETTLE) as w:
        assert w.backends() == [(str(folder), backend), (str(scratch), backend)]
        write(folder / "outside.tif")
        write(scratch / "a.tif", b"a" * 1000)
        write(scratch / "exp" / "b.tif", b"b" * 2000)
        events = collect(w, until=3, timeout=15, quiet=1.0)
        assert _kinds(events) == [
            ("created", str(folder / "outside.tif")),
            ("created", str(scratch / "a.tif")),
            ("created", str(scratch / "exp" / "b.tif")),
        ]
        # Renamed and removed inside the mount; moved across its boundary, which the kernel
        # cannot rename: `mv` copies and deletes, reported as a deletion and a creation.
        (scratch / "a.tif").rename(scratch / "c.tif")
        (scratch / "exp" / "b.tif").unlink()
        shutil.move(folder / "outside.tif", scratch / "outside.tif")
        events = collect(w, until=4, timeout=15, quiet=1.0)
        assert _kinds(events) == [
            ("created", str(scratch / "outside.tif")),
            ("deleted", str(folder / "outside.tif")),
            ("deleted", str(scratch / "exp" / "b.tif")),
            ("moved", str(scratch / "c.tif")),
        ]


@pytest.mark.parametrize("backend", ["auto", "native", "fanotify"])
def test_a_share_mounted_inside_the_folder_is_polled_and_sees_other_hosts_writes(
    disk_folder: Path, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    _needs_sshfs()
    require_backend("fanotify" if backend == "auto" else backend)
    mount = disk_folder / "microscope"
    caplog.set_level(logging.INFO, logger=LOGGER)
    with (
        sshfs(mount) as share,
        Watcher(disk_folder, backend=backend, poll_interval=POLL, settle=SETTLE, full_sweep=3.0) as w,
    ):
        root_backend = "fanotify" if backend == "auto" else backend
        assert w.backends() == [(str(disk_folder), root_backend), (str(mount), "poll")]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert [m for m in warnings if str(mount) in m] == [
            f"{mount} is a mount of a network filesystem (fuse) inside a watched folder; kernel "
            f"events miss writes from other hosts, so it is polled every {POLL:.1f}s"
        ]
        # Written on the server, as another host writes to the share: only polling sees it.
        write(share.server / "by-other-host.tif", b"h" * 3000)
        events, took = _first(w, mount / "by-other-host.tif", timeout=30)
        assert _kinds(events) == [("created", str(mount / "by-other-host.tif"))]
        assert took < POLLED_READY
        # Written through the mount: reported once, not by kernel events and polling both.
        write(mount / "through-mount.tif", b"m" * 3000)
        write(mount / "exp1" / "deep.tif", b"d" * 3000)
        write(disk_folder / "beside.tif")
        events = collect(w, until=3, timeout=30, quiet=2 * (POLL + SETTLE) + ATTR_CACHE)
        assert _kinds(events) == [
            ("created", str(disk_folder / "beside.tif")),
            ("created", str(mount / "exp1" / "deep.tif")),
            ("created", str(mount / "through-mount.tif")),
        ]
        (share.server / "by-other-host.tif").unlink()
        events = collect(w, until=1, timeout=30, quiet=POLL + ATTR_CACHE)
        assert _kinds(events) == [("deleted", str(mount / "by-other-host.tif"))]


def test_a_local_filesystem_fanotify_cannot_mark_is_watched_with_inotify(
    disk_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _needs_tmpfs()
    require_backend("fanotify")
    ram = disk_folder / "ram"
    ram.mkdir()
    # ramfs gives no file handles: fanotify cannot mark it.
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(ram)], check=True, timeout=30)
    try:
        caplog.set_level(logging.INFO, logger=LOGGER)
        with Watcher(disk_folder, backend="fanotify", settle=SETTLE) as w:
            assert w.backends() == [(str(disk_folder), "fanotify"), (str(ram), "native")]
            infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
            assert any(
                m.startswith(f"fanotify cannot mark the filesystem mounted at {ram} (")
                and m.endswith("); watching it with inotify")
                for m in infos
            ), infos
            write(ram / "a.tif", b"a" * 1000)
            write(ram / "exp" / "b.tif", b"b" * 1000)
            events = collect(w, until=2, timeout=15, quiet=1.0)
            assert _kinds(events) == [
                ("created", str(ram / "a.tif")),
                ("created", str(ram / "exp" / "b.tif")),
            ]
    finally:
        subprocess.run(["umount", "-l", str(ram)], check=False, timeout=30)


@pytest.mark.parametrize("backend", ["native", "fanotify"])
def test_a_tmpfs_mounted_and_unmounted_while_watching_is_followed(disk_folder: Path, backend: str) -> None:
    _needs_tmpfs()
    require_backend(backend)
    scratch = disk_folder / "scratch"
    write(scratch / "covered.tif")  # on the disk, hidden while the tmpfs covers it
    with Watcher(disk_folder, backend=backend, settle=SETTLE) as w:
        assert w.backends() == [(str(disk_folder), backend)]
        with tmpfs(scratch):
            assert wait_for(lambda: _mounts_listed(w) == [(str(scratch), backend)], timeout=10), w.backends()
            write(scratch / "new.tif")
            events = collect(w, until=2, timeout=15, quiet=0.5)
            assert _kinds(events) == [
                ("created", str(scratch / "new.tif")),
                ("deleted", str(scratch / "covered.tif")),
            ]
        assert wait_for(lambda: _mounts_listed(w) == [], timeout=10), w.backends()
        events = collect(w, until=2, timeout=15, quiet=0.5)
        assert _kinds(events) == [
            ("created", str(scratch / "covered.tif")),
            ("deleted", str(scratch / "new.tif")),
        ]
        # The directory is watched with its parent's backend again.
        write(scratch / "after.tif")
        events = collect(w, until=1, timeout=15, quiet=0.5)
        assert _kinds(events) == [("created", str(scratch / "after.tif"))]


@pytest.mark.parametrize("backend", ["auto", "native", "fanotify"])
def test_a_share_mounted_while_watching_is_polled(disk_folder: Path, backend: str) -> None:
    _needs_sshfs()
    require_backend("fanotify" if backend == "auto" else backend)
    mount = disk_folder / "microscope"
    mount.mkdir()
    with Watcher(disk_folder, backend=backend, poll_interval=POLL, settle=SETTLE, full_sweep=3.0) as w:
        with sshfs(mount) as share:
            assert wait_for(lambda: _mounts_listed(w) == [(str(mount), "poll")], timeout=10), w.backends()
            write(share.server / "by-other-host.tif", b"h" * 3000)
            events, took = _first(w, mount / "by-other-host.tif", timeout=30)
            assert _kinds(events) == [("created", str(mount / "by-other-host.tif"))]
            assert took < POLLED_READY
        assert wait_for(lambda: _mounts_listed(w) == [], timeout=10), w.backends()
        events = collect(w, until=1, timeout=15, quiet=0.5)
        assert _kinds(events) == [("deleted", str(mount / "by-other-host.tif"))]


def test_a_mount_inside_a_mount_takes_the_backend_of_the_subtree_it_is_in(disk_folder: Path) -> None:
    # ramfs cannot be marked: its subtree gets inotify, and so does a tmpfs mounted inside it
    # (fanotify could mark that one, but everything below a mount point inherits its choice).
    _needs_tmpfs()
    require_backend("fanotify")
    ram = disk_folder / "ram"
    ram.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(ram)], check=True, timeout=30)
    try:
        with tmpfs(ram / "inner") as inner, Watcher(disk_folder, backend="fanotify", settle=SETTLE) as w:
            assert w.backends() == [
                (str(disk_folder), "fanotify"),
                (str(ram), "native"),
                (str(inner), "native"),
            ]
            write(disk_folder / "top.tif")
            write(ram / "a.tif")
            write(inner / "deep" / "b.tif")
            events = collect(w, until=3, timeout=15, quiet=1.0)
            assert _kinds(events) == [
                ("created", str(ram / "a.tif")),
                ("created", str(inner / "deep" / "b.tif")),
                ("created", str(disk_folder / "top.tif")),
            ]
    finally:
        subprocess.run(["umount", "-l", str(ram)], check=False, timeout=30)


def test_the_services_start_up_line_names_the_backend_of_a_mount_in_a_users_folder(
    disk_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _needs_tmpfs()
    from omero_dropbox.config import load_config
    from omero_dropbox.engine import DropBox
    from omero_dropbox.ownership import UserList

    dropbox = disk_folder / "DropBox"
    scratch = dropbox / "amy" / "scratch"
    settings = {"watchDir": str(dropbox), "ng.backend": "native", "throttleImport": "0"}
    config = load_config(overrides=[f"omero.fs.{k}={v}" for k, v in settings.items()])
    caplog.set_level(logging.INFO)
    with tmpfs(scratch):
        box = DropBox(config, lambda request: True, state_dir=disk_folder / "state", users=UserList(["amy"]))
        try:
            box.start()
            lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Monitor for user")]
            assert lines == [
                f"Monitor for user default watching {dropbox} "
                f"(mode=follow, backend=native, native for mount {scratch})"
            ]
        finally:
            box.shutdown(drain_timeout=10)
