"""Real mounts for tests: a tmpfs, or an sshfs (FUSE) share over a private sshd on loopback,
mounted where a test asks (inside a watched root). Each is unmounted on the way out, even when
the test failed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.waiting import wait_for

SSHD = "/usr/sbin/sshd"
NEEDS_SSHFS = "needs root, /dev/fuse and the Debian packages sshfs and openssh-server"


@dataclass
class Share:
    server: Path  # the directory sshd serves (writes here are another host's)
    mount: Path  # where sshfs mounts it


def why_no_tmpfs() -> str | None:
    """Why a tmpfs cannot be mounted here, or None."""
    if os.geteuid() != 0:
        return "not root: mounting a tmpfs needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount not found"
    return None


def why_no_sshfs() -> str | None:
    """Why an sshfs share cannot be mounted here, or None."""
    if os.geteuid() != 0:
        return f"not root: {NEEDS_SSHFS}"
    for tool in ("sshfs", "ssh-keygen", "fusermount"):
        if shutil.which(tool) is None:
            return f"{tool} not found: {NEEDS_SSHFS}"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} not found: {NEEDS_SSHFS}"
    if not os.path.exists("/dev/fuse"):
        return f"/dev/fuse missing: {NEEDS_SSHFS}"
    return None


@contextlib.contextmanager
def tmpfs(at: Path) -> Iterator[Path]:
    """A fresh tmpfs mounted on directory `at` (made if missing)."""
    at.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(at)], check=True, timeout=30)
    try:
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], check=False, timeout=30)


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


@contextlib.contextmanager
def sshfs(at: Path) -> Iterator[Share]:
    """An sshfs share of a fresh server directory (outside `at`'s tree), mounted on `at`.

    dir_cache=no: sshfs's own cache would hide the server's changes for 20 s (the kernel's
    attribute cache of 1 s stays, as an NFS client's would).
    """
    at.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="odb-sshfs-"))
    server = base / "server"
    server.mkdir()
    sshd: subprocess.Popen[bytes] | None = None
    mounted = False
    try:
        for key in ("host_key", "user_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / key)], check=True, timeout=30
            )
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
            [
                SSHD,
                "-D",
                "-f",
                str(base / "sshd_config"),
                "-o",
                "StrictModes=no",
                "-E",
                str(base / "sshd.log"),
            ]
        )
        assert wait_for(lambda: _accepts(port), timeout=10), (base / "sshd.log").read_text()
        subprocess.run(
            ["sshfs", "-o", f"StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,"
             f"IdentityFile={base / 'user_key'},port={port},dir_cache=no",
             f"root@127.0.0.1:{server}", str(at)],
            check=True, timeout=30,
        )  # fmt: skip
        mounted = True
        assert wait_for(lambda: os.path.ismount(at), timeout=10)
        yield Share(server=server, mount=at)
    finally:
        if mounted:
            subprocess.run(["fusermount", "-u", "-z", str(at)], check=False, timeout=30)
        if sshd is not None:
            sshd.send_signal(signal.SIGTERM)
            try:
                sshd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sshd.kill()
                sshd.wait()
        shutil.rmtree(base, ignore_errors=True)
