"""A real `omero-dropbox run` for the operator-experience tests (status, retry, forget, HTTP).

The importer is a real command (a small Python script, run without a shell) standing in
for OMERO, which cannot run here: it fails with exit 65 and a reason on stderr for files
whose name contains "bad" until `allow(name)` is called, and otherwise records the import
in imports.jsonl and prints `Image:<n>` on stdout, as `omero import` does.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

from .conftest import wait_for
from .faults_helpers import complete_lines, complete_part

CLI = [sys.executable, "-m", "omero_dropbox.cli"]

IMPORTER = r"""
import json, os, sys
state, key = sys.argv[1], sys.argv[2]
name = os.path.basename(key)
if "bad" in name and not os.path.exists(os.path.join(state, "allow-" + name)):
    print("reading", name, file=sys.stderr)
    print("cannot read pixels of " + name + ": unsupported compression", file=sys.stderr)
    sys.exit(65)
with open(os.path.join(state, "imports.jsonl"), "a") as fh:
    fh.write(json.dumps({"key": key}) + "\n")
    n = sum(1 for _ in open(os.path.join(state, "imports.jsonl")))
print("Image:%d" % (100 + n))
"""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


class Service:
    """`omero-dropbox run` with the script importer; `extra` adds CLI arguments."""

    def __init__(self, base: Path, *extra: str, dir_import_wait: float = 0.5) -> None:
        self.base = base
        self.dropbox = base / "DropBox"
        self.state = base / "state"
        self.work = base / "importer"
        self.log = base / "service.log"
        self.dropbox.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        script = base / "importer.py"
        script.write_text(IMPORTER)
        self.argv = [
            *CLI,
            "run",
            "-D",
            f"omero.fs.watchDir={self.dropbox}",
            "-D",
            f"omero.fs.dirImportWait={dir_import_wait}",
            "-D",
            "omero.fs.ng.completeWait=0.3",
            "-D",
            "omero.fs.throttleImport=0",
            "-D",
            "omero.fs.ng.retryBackoff=0.2",
            "--state-dir",
            str(self.state),
            "--importer-command",
            f"{sys.executable} {script} {self.work} {{key}}",
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(self.argv, stdout=fh, stderr=subprocess.STDOUT)
        assert wait_for(lambda: b"Started OMERO.fs DropBox client" in self.log.read_bytes(), 60), self.text()
        return self

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def text(self) -> str:
        """The log so far: while the service runs, only its finished lines."""
        running = self.proc is not None and self.proc.poll() is None  # before reading: then it is final
        data = self.log.read_bytes() if self.log.exists() else b""
        return (complete_part(data) if running else data).decode("utf-8", "replace")

    @property
    def url(self) -> str:
        m = re.search(r"Status page on (http://\S+/) ", self.text())
        assert m, self.text()
        return m.group(1)

    def drop(self, user: str, name: str, data: bytes = b"II*\x00pixels") -> Path:
        path = self.dropbox / user / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def allow(self, name: str) -> None:
        (self.work / f"allow-{name}").touch()

    def imports(self) -> list[str]:
        lines = complete_lines(self.work / "imports.jsonl")
        return [json.loads(line)["key"] for line in lines if line.strip()]

    def status(self) -> dict[str, object]:
        out = run_cli("status", "--state-dir", str(self.state), "--json")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert isinstance(doc, dict)
        return doc

    def fileset_state(self, path: Path) -> str | None:
        from omero_dropbox.journal import Journal

        with Journal(self.state, readonly=True, check=False) as j:
            rec = j.file_state(str(path))
            if rec is None or rec.fileset_id is None:
                return None
            fs = j.fileset_by_id(rec.fileset_id)
            return fs.state if fs else None

    def fileset_id(self, path: Path) -> str:
        from omero_dropbox.journal import Journal

        with Journal(self.state, readonly=True, check=False) as j:
            rec = j.file_state(str(path))
            assert rec is not None and rec.fileset_id is not None, f"{path} is not in the journal"
            return rec.fileset_id

    def wait_state(self, path: Path, state: str, timeout: float = 60) -> None:
        assert wait_for(lambda: self.fileset_state(path) == state, timeout, 0.1), (
            f"{path} is {self.fileset_state(path)}, expected {state}\n{self.text()}"
        )
