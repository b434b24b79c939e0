"""Packaging and the test suite's own reliability.

* Every reader of a file that another process appends to (importer records, service logs)
  leaves out a last line without its newline until the writer finishes it: a half-written
  JSON line once failed README's test command with ``JSONDecodeError: Unterminated string``.
* ``scripts/build-wheels.sh`` (the manylinux wheel, run by CI) refuses at once, naming the fix,
  when Rust is missing, instead of letting maturin download a toolchain.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.records import read_records
from tests.support.service import Service

REPO = Path(__file__).resolve().parents[2]

# A second process that appends exactly the bytes it is sent (hex, one chunk a line) with
# O_APPEND, as the importers do, and answers "ok" once each chunk is written.
APPENDER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
for chunk in sys.stdin:
    os.write(fd, bytes.fromhex(chunk))
    print("ok", flush=True)
"""


class Appender:
    """A real second process appending to ``path`` on request."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def append(self, data: bytes) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(data.hex() + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "ok\n", "the appender died"

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0


@pytest.fixture
def appender(tmp_path: Path) -> Iterator[Callable[[Path], Appender]]:
    started: list[Appender] = []

    def start(path: Path) -> Appender:
        started.append(Appender(path))
        return started[-1]

    yield start
    for a in started:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait(timeout=30)


def _record(n: int) -> bytes:
    """One record line every reader understands (RECORDER's text form, the ops importer's, Ice's)."""
    name = f"/data/DropBox/amy/{'x' * 200}-{n}.tif"
    doc = {"user": "amy", "fileset": f"fs{n}", "files": [name], "key": name}
    return json.dumps(doc).encode() + b"\n"


def _ice_reader(tmp_path: Path) -> tuple[Path, Callable[[], int]]:
    from tests.support.deployment import Deployment

    deployment = Deployment(tmp_path / "ice", tmp_path / "ice" / "DropBox")
    return deployment.imports, lambda: len(deployment.imported())


def _script_reader(tmp_path: Path) -> tuple[Path, Callable[[], int]]:
    service = Service.scripted(tmp_path / "ops")
    return service.work / "imports.jsonl", lambda: len(service.imports())


READERS: dict[str, Callable[[Path], tuple[Path, Callable[[], int]]]] = {
    "records.read_records": lambda t: (t / "r.jsonl", lambda: len(read_records(t / "r.jsonl"))),
    "service.Service.imports": _script_reader,
    "deployment.Deployment.imported": _ice_reader,
}


@pytest.mark.parametrize("reader", READERS)
def test_a_record_line_half_appended_by_another_process_is_read_once_it_is_finished(
    tmp_path: Path, appender: Callable[[Path], Appender], reader: str
) -> None:
    (tmp_path / "ice" / "DropBox").mkdir(parents=True)
    path, count = READERS[reader](tmp_path)
    assert count() == 0, "no file yet: no records"
    writer = appender(path)
    writer.append(_record(1))
    second = _record(2)
    cut = second.index(b"xxxx") + 100  # inside a JSON string: "Unterminated string" if parsed
    writer.append(second[:cut])
    assert count() == 1, "the half-written second line must be left out"
    assert count() == 1, "and left out again on the next look"
    writer.append(second[cut:])
    assert count() == 2
    writer.close()


def test_a_running_services_log_is_read_to_its_last_finished_line_and_whole_once_it_exits(
    tmp_path: Path, appender: Callable[[Path], Appender]
) -> None:
    """The log reader of the service harness, with a real process (the appender) standing in
    for `omero-dropbox run` as the log's writer."""
    service = Service(tmp_path, tmp_path / "DropBox", tmp_path / "state")
    writer = appender(service.log)
    service.proc = writer.proc
    writer.append(b"2026-01-01 00:00:00,000 INFO  queued a.tif\n")
    writer.append(b"2026-01-01 00:00:00,001 INFO  Not importing /data/DropBox/amy/b.t")
    assert service.text() == "2026-01-01 00:00:00,000 INFO  queued a.tif\n", "a half-written line is left out"
    writer.append(b"if: not a format Bio-Formats reads\n")
    line = next(ln for ln in service.text().splitlines() if "Not importing" in ln)
    assert line.endswith("/amy/b.tif: not a format Bio-Formats reads")
    writer.append(b"Traceback without a final newline")
    assert "Traceback" not in service.text()
    assert "Traceback" in service.tail(), "failure messages show everything"
    writer.close()
    # The writer is gone: nothing more will come, so its last line is complete as it is.
    assert service.text().endswith("not a format Bio-Formats reads\nTraceback without a final newline")


def test_the_wheel_build_refuses_at_once_without_rust_and_names_the_fix(tmp_path: Path) -> None:
    """Without cargo on PATH, maturin's build backend would download a ~700 MB toolchain."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("python3", "bash", "env", "dirname", "realpath", "date", "awk", "mktemp", "rm"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir), "PYTHON": sys.executable}
    out = subprocess.run(
        [str(bin_dir / "bash"), str(REPO / "scripts" / "build-wheels.sh"), str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 1, out
    assert "cargo and rustc (Rust >= 1.91) are not on PATH" in out.stderr
    assert "rustup" in out.stderr and "distribution" in out.stderr
    assert not (tmp_path / "dist").exists(), "nothing built, nothing downloaded"
