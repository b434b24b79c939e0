"""Progress lines appear on a real terminal (a pty) and never in pipes or logs."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

from omero_dropbox.progress import Progress, progress_iter
from tests.support.service import CLI


class PtyReader:
    """The master side of a pty whose slave is a child's stderr."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.data = b""

    def read_until(self, needle: bytes, proc: subprocess.Popen[bytes], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while needle not in self.data and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                self.data += chunk
            elif proc.poll() is not None:
                break
        return needle in self.data

    def close(self) -> None:
        os.close(self.master)


def make_tree(root: Path, n: int) -> None:
    for i in range(n):
        d = root / f"d{i % 20}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.czi").write_bytes(b"x")


def test_filesets_shows_progress_on_a_terminal_and_keeps_stdout_clean(shm_dir: Path) -> None:
    make_tree(shm_dir / "tree", 2000)
    term = PtyReader()
    try:
        proc = subprocess.Popen(
            [*CLI, "filesets", str(shm_dir / "tree")], stdout=subprocess.PIPE, stderr=term.slave
        )
        os.close(term.slave)
        out, _ = proc.communicate(timeout=120)
        term.read_until(b"\x00never", proc, 2)
    finally:
        term.close()
    assert proc.returncode == 0
    assert len(out.splitlines()) == 2000
    assert b"Reading" in term.data and b" files" in term.data
    assert term.data.endswith(b"\r\x1b[K"), "the progress line is erased at the end"
    assert b"Reading" not in out


def test_filesets_in_a_pipe_writes_no_progress(shm_dir: Path) -> None:
    make_tree(shm_dir / "tree", 300)
    out = subprocess.run([*CLI, "filesets", str(shm_dir / "tree")], capture_output=True, timeout=120)
    assert out.returncode == 0
    assert out.stderr == b""


def test_start_up_scan_progress_on_a_terminal_only(shm_dir: Path) -> None:
    dropbox = shm_dir / "DropBox"
    make_tree(dropbox / "amy", 300)
    argv = [
        *CLI,
        "run",
        "-D",
        f"omero.fs.watchDir={dropbox}",
        "-D",
        "omero.fs.dirImportWait=600",
        "--state-dir",
        str(shm_dir / "state"),
    ]
    term = PtyReader()
    proc = subprocess.Popen(argv, stdout=term.slave, stderr=term.slave)
    os.close(term.slave)
    try:
        assert term.read_until(b"Started OMERO.fs DropBox client", proc, 60), term.data
        assert term.read_until(b"Start-up scan", proc, 30), term.data
        assert term.read_until(b"directories watched", proc, 30), term.data
    finally:
        proc.send_signal(signal.SIGTERM)
        term.read_until(b"Stopped OMERO.fs DropBox client", proc, 60)
        proc.wait(timeout=60)
        term.close()
    # Log lines start on a line of their own (or right after the progress line is erased).
    stamps = list(re.finditer(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", term.data))
    assert len(stamps) >= 3
    for m in stamps:
        before = term.data[: m.start()]
        assert before == b"" or before.endswith((b"\n", b"\x1b[K")), term.data[m.start() - 40 : m.end()]

    log = shm_dir / "pipe.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*argv[:-1], str(shm_dir / "state2")], stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while b"Started OMERO.fs DropBox client" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the progress thread would draw within 0.2 s
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert b"Started OMERO.fs DropBox client" in log.read_bytes()
    assert b"Start-up scan" not in log.read_bytes()
    assert b"\r" not in log.read_bytes()


def test_progress_object_is_silent_when_not_a_terminal() -> None:
    buf = io.StringIO()
    with Progress("x", 10, stream=buf) as bar:
        bar.update(5)
    assert buf.getvalue() == ""
    assert list(progress_iter(range(3), "y", stream=buf)) == [0, 1, 2]
    assert buf.getvalue() == ""


def test_progress_line_with_a_total() -> None:
    bar = Progress("Reading", 200, stream=io.StringIO(), enabled=True)
    bar.update(50)
    assert bar.line().startswith("Reading [######                  ]  25%  50/200 files")
