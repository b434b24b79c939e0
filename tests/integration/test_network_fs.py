"""Polling on a real network filesystem: sshfs (FUSE) over a private sshd on loopback.

Files are written on the server side, as another client of a share would write them:
inotify on the mount never hears of those writes, so ``network_filesystem()`` must say the
mount is one and the auto backend must poll it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from omero_dropbox import Watcher
from omero_dropbox.watcher import network_filesystem
from tests.support.waiting import wait_for
from tests.support.watching import collect, write

SSHD = "/usr/sbin/sshd"
NEEDS = "needs root, /dev/fuse and the Debian packages sshfs and openssh-server"


@dataclass
class Share:
    server: Path  # the directory sshd serves (writes here are the other client's)
    mount: Path  # where sshfs mounts it


def _missing() -> str | None:
    if os.geteuid() != 0:
        return f"not root: {NEEDS}"
    for tool in ("sshfs", "ssh-keygen", "fusermount"):
        if shutil.which(tool) is None:
            return f"{tool} not found: {NEEDS}"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} not found: {NEEDS}"
    if not os.path.exists("/dev/fuse"):
        return f"/dev/fuse missing: {NEEDS}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def share() -> Iterator[Share]:
    why = _missing()
    if why:
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="odb-sshfs-"))
    server, mount = base / "server", base / "mount"
    server.mkdir()
    mount.mkdir()
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / key)], check=True)
    shutil.copy(base / "user_key.pub", base / "authorized_keys")
    port = _free_port()
    (base / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host_key'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nPermitRootLogin yes\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"PidFile {base / 'sshd.pid'}\nSubsystem sftp internal-sftp\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    sshd = subprocess.Popen(
        [SSHD, "-D", "-f", str(base / "sshd_config"), "-o", "StrictModes=no", "-E", str(base / "sshd.log")]
    )
    mounted = False
    try:
        assert wait_for(lambda: _accepts(port), timeout=10), (base / "sshd.log").read_text()
        # dir_cache=no: sshfs's own cache would hide the server's changes for 20 s (the
        # kernel's attribute cache of 1 s stays, as an NFS client's would).
        subprocess.run(
            ["sshfs", "-o", f"StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,"
             f"IdentityFile={base / 'user_key'},port={port},dir_cache=no",
             f"root@127.0.0.1:{server}", str(mount)],
            check=True, timeout=30,
        )  # fmt: skip
        mounted = True
        assert wait_for(lambda: os.path.ismount(mount), timeout=10)
        yield Share(server=server, mount=mount)
    finally:
        if mounted:
            subprocess.run(["fusermount", "-u", "-z", str(mount)], check=False)
        sshd.send_signal(signal.SIGTERM)
        try:
            sshd.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sshd.kill()
            sshd.wait()
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
