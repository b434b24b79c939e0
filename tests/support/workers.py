"""``omero-dropbox worker`` as a real background process, for the scale-out tests.

Each worker has its own state directory (the ``record`` importer writes its
``imports.jsonl`` there) and log; :data:`BLOCKER` is an importer command a test controls.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.records import Record, read_records
from tests.support.service import CLI, RECORDER, LoggedProcess
from tests.support.waiting import wait_for

STARTED = "claiming from the queue"

#: An importer that notes "<worker> started <fileset>" in $BLOCK_LOG, waits until the file
#: $BLOCK_DIR/release exists, then notes "<worker> done <fileset>": the test decides when an
#: import ends, and can kill its worker meanwhile.
BLOCKER = textwrap.dedent(
    """
    import os, sys, time
    fileset, log, tag = sys.argv[1], os.environ["BLOCK_LOG"], os.environ["WORKER_TAG"]
    def note(what):
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{tag} {what} {fileset}\\n".encode())
        os.close(fd)
    note("started")
    while not os.path.exists(os.path.join(os.environ["BLOCK_DIR"], "release")):
        time.sleep(0.05)
    note("done")
    """
)

#: The workers' ``omero.fs.*`` settings: quick retries, two imports at a time.
WORKER_DEFAULTS: Mapping[str, str] = {"ng.retryBackoff": "0.2", "throttleImport": "0"}


@dataclass
class WorkerProcess(LoggedProcess):
    """One ``omero-dropbox worker --queue DSN`` process, logging to ``base/worker.log``."""

    base: Path
    dsn: str
    name: str
    importer: Sequence[str] = ("--importer", "record")
    lease: float = 60.0
    env: Mapping[str, str] = field(default_factory=dict)
    props: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.state = self.base / "state"
        self.log = self.base / "worker.log"
        self.label = f"worker {self.name}"
        self.proc = None

    def argv(self) -> list[str]:
        argv = [*CLI, "worker", "--queue", self.dsn, "--state-dir", str(self.state)]
        argv += ["--worker-name", self.name, "--lease", str(self.lease), "--log-level", "DEBUG"]
        for name, value in {**WORKER_DEFAULTS, **self.props}.items():
            argv += ["-D", f"omero.fs.{name}={value}"]
        return [*argv, *self.importer]

    def start(self) -> WorkerProcess:
        env = dict(os.environ, WORKER_TAG=self.name, **self.env)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                self.argv(), env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=self.base
            )
        assert wait_for(lambda: STARTED in self.text() or not self.alive(), 60), self.tail()
        assert self.alive(), self.tail()
        return self

    def tail(self, n: int = 6000) -> str:
        return f"--- worker {self.name}:\n" + super().tail(n)

    def records(self) -> list[Record]:
        """What this worker's importer recorded: the ``record`` importer's file, or the
        RECORDER's ($RECORD_FILE in ``env``)."""
        return read_records(Path(self.env.get("RECORD_FILE", self.state / "imports.jsonl")))


def recorder_command(base: Path) -> list[str]:
    """The RECORDER of :mod:`tests.support.service` ($RECORD_FILE, $IMPORT_DELAY) as importer."""
    script = base / "recorder.py"
    script.write_text(RECORDER)
    return ["--importer-command", f"{sys.executable} {script} {{user}} {{fileset}} -- {{files}}"]


def blocker_command(base: Path) -> list[str]:
    script = base / "blocker.py"
    script.write_text(BLOCKER)
    return ["--importer-command", f"{sys.executable} {script} {{fileset}}"]
