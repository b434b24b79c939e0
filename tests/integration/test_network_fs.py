"""Polling on a real network filesystem: sshfs (FUSE) over a private sshd on loopback.

Files are written on the server side, as another client of a share would write them:
inotify on the mount never hears of those writes, so ``network_filesystem()`` must say the
mount is one and the auto backend must poll it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omero_dropbox import Watcher
from omero_dropbox.watcher import network_filesystem
from tests.support.mounts import Share, sshfs, why_no_sshfs
from tests.support.watching import collect, write


@pytest.fixture
def share() -> Iterator[Share]:
    if why := why_no_sshfs():
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="odb-sshfs-mount-"))
    try:
        with sshfs(base / "mount") as mounted:
            yield mounted
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_mount_is_a_network_filesystem_and_auto_polls_it(share: Share) -> None:
    assert network_filesystem(share.mount) == "fuse"
    assert network_filesystem(share.server) is None
    with Watcher(share.mount, backend="auto", poll_interval=0.2) as w:
        assert w.backends() == [(str(share.mount), "poll")]


def test_files_written_on_the_server_are_reported_ready_on_the_mount(share: Share) -> None:
    with Watcher(share.mount, backend="auto", poll_interval=0.2, settle=1.5, full_sweep=3.0) as w:
        write(share.server / "a.tif", b"a" * 1000)
        write(share.server / "exp1" / "deep" / "b.tif", b"b" * 2000)
        events = collect(w, until=2, timeout=30)
        assert sorted((e.kind, e.path) for e in events) == [
            ("created", str(share.mount / "a.tif")),
            ("created", str(share.mount / "exp1" / "deep" / "b.tif")),
        ]
        # A file written in chunks on the server is reported once, whole.
        with open(share.server / "exp1" / "slow.tif", "wb") as fh:
            for _ in range(5):
                fh.write(b"z" * 1000)
                fh.flush()
                time.sleep(0.3)
        events = collect(w, until=1, timeout=30)
        assert [(e.kind, e.path) for e in events] == [("created", str(share.mount / "exp1" / "slow.tif"))]
        assert (share.mount / "exp1" / "slow.tif").stat().st_size == 5000
        # Rewritten in place with another size (SFTP mtimes are whole seconds), and removed.
        with open(share.server / "a.tif", "r+b") as fh:
            fh.write(b"A" * 1500)
        (share.server / "exp1" / "deep" / "b.tif").unlink()
        events = collect(w, until=2, timeout=30, quiet=0.5)
    assert sorted((e.kind, e.path) for e in events) == [
        ("deleted", str(share.mount / "exp1" / "deep" / "b.tif")),
        ("modified", str(share.mount / "a.tif")),
    ]
