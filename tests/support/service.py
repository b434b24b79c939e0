"""The one harness for tests that run the service: ``omero-dropbox run`` as a real background process.

No OMERO server runs here, so the importer is one of three stand-ins, each named by ``importer``:

* ``"command"`` (default): ``--importer-command`` runs :data:`RECORDER`, which records the exact
  bytes of every argument and the size of every file when it ran, and can hang, crash or fail
  on request (``FAULT_MODE``/``FAULT_MATCH`` in ``env``); read back with :meth:`Service.records`;
* ``"record"``: the in-process ``record`` importer (fast, for mass copies);
* ``"script"``: :data:`SCRIPT_IMPORTER`, which behaves like ``omero import`` for the operator
  tests: it fails with exit 65 and a reason for names containing "bad" until :meth:`Service.allow`
  is called, otherwise prints ``Image:<n>``; read back with :meth:`Service.imports`;
* ``"omero-standin"``: the real OMERO importer (``--importer omero``) with the server replaced by
  the recorded stand-in of :mod:`tests.support.omero_standin`; read back with
  :meth:`Service.omero_calls`.
  :meth:`Service.scripted` builds one with the operator tests' layout and timings.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omero_dropbox.journal import Journal
from tests.support.appended import complete_lines, complete_part
from tests.support.records import Record, read_records
from tests.support.waiting import wait_for

CLI = [sys.executable, "-m", "omero_dropbox.cli"]
REPO = Path(__file__).resolve().parents[2]
STARTED = "Started OMERO.fs DropBox client"

RECORDER = textwrap.dedent(
    """
    # Stands in for OMERO: records its argv as exact bytes, and fails on request.
    import json, os, signal, subprocess, sys, time
    args = [os.fsencode(a) for a in sys.argv[1:]]
    user, fileset, dashdash, files = args[0], args[1].decode(), args[2], args[3:]
    assert dashdash == b"--", args
    out = os.environ["RECORD_FILE"]
    counts = out + ".attempts"
    os.makedirs(counts, exist_ok=True)
    with open(os.path.join(counts, fileset), "a") as fh:
        fh.write("x")
    attempt = os.path.getsize(os.path.join(counts, fileset))
    match = os.fsencode(os.environ.get("FAULT_MATCH", "\\0"))
    mode = os.environ.get("FAULT_MODE", "") if any(match in f for f in files) else ""
    if mode == "hang" and attempt == 1:
        # A hung importer with a child: the timeout must kill the whole process group.
        child = subprocess.Popen(["sleep", "3600"])
        with open(out + ".hung-pids", "a") as fh:
            fh.write(f"{os.getpid()} {child.pid}\\n")
        time.sleep(3600)
    if mode == "crash" and attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "fail":
        print("cannot read plane 3 of", os.fsdecode(files[0]), file=sys.stderr)
        sys.exit(int(os.environ.get("FAULT_RC", "1")))
    time.sleep(float(os.environ.get("IMPORT_DELAY", "0")))
    sizes = [os.stat(f).st_size if os.path.exists(f) else -1 for f in files]
    line = json.dumps({"user": user.hex(), "fileset": fileset, "files": [f.hex() for f in files],
                       "sizes": sizes, "attempt": attempt}) + "\\n"
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, line.encode())
    os.close(fd)
    """
)

SCRIPT_IMPORTER = r"""
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

#: ``omero.fs.*`` settings of the fault suites (short waits, two imports at a time).
RECORDER_DEFAULTS: Mapping[str, str] = {
    "dirImportWait": "2",
    "throttleImport": "0",
    "ng.completeWait": "0.5",
    "ng.settle": "0.5",
    "ng.maxConcurrentImports": "2",
    "ng.retryBackoff": "0.2",
}
#: ``omero.fs.*`` settings of the operator tests (status, retry, HTTP); the rest are the defaults.
SCRIPT_DEFAULTS: Mapping[str, str] = {
    "dirImportWait": "0.5",
    "ng.completeWait": "0.3",
    "throttleImport": "0",
    "ng.retryBackoff": "0.2",
}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """One short ``omero-dropbox`` command (status, retry, forget, ...), run to its end."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


class LoggedProcess:
    """A CLI process started by a harness, its output in ``self.log``: stopping it and reading
    what it said. Subclasses set ``proc``, ``log`` and ``label`` (who it is, in failure messages)."""

    proc: subprocess.Popen[bytes] | None
    log: Path
    label: str

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM and wait; a process that does not stop in time is killed and the test fails."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(
                f"{self.label} did not stop within {timeout} s of SIGTERM:\n{self.tail()}"
            ) from None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def text(self) -> str:
        """The log so far: while the process runs, only its finished lines."""
        running = self.alive()  # asked before reading: a log read after the exit is final
        data = self.log.read_bytes() if self.log.exists() else b""
        return (complete_part(data) if running else data).decode("utf-8", "backslashreplace")

    def tail(self, n: int = 6000) -> str:
        """The end of the log, a line still being written included (for failure messages)."""
        data = self.log.read_bytes() if self.log.exists() else b""
        return data.decode("utf-8", "backslashreplace")[-n:]


@dataclass
class Service(LoggedProcess):
    """``omero-dropbox run`` as a real background process, logging to ``tmp/service.log``.

    ``props`` override ``defaults`` (both ``omero.fs.*`` names without the prefix); ``extra``
    is appended to the command line; ``command`` replaces the importer command.
    """

    tmp: Path
    dropbox: Path
    state: Path
    users: Iterable[str] | None = None
    importer: str = "command"  # "command" (RECORDER), "record" (in-process) or "script" (SCRIPT_IMPORTER)
    props: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    extra: Sequence[str] = ()
    command: str | None = None
    defaults: Mapping[str, str] = field(default_factory=lambda: dict(RECORDER_DEFAULTS))

    def __post_init__(self) -> None:
        self.proc = None
        self._starts = 0
        self.log = self.tmp / "service.log"
        self.label = "the service"
        self.work = self.tmp / "importer"  # the script importer's records and allow-files
        self.record = (
            self.state / "imports.jsonl" if self.importer == "record" else self.tmp / "imports.jsonl"
        )

    @classmethod
    def scripted(cls, base: Path, *extra: str, dir_import_wait: float = 0.5) -> Service:
        """The operator tests' service: ``base/DropBox``, ``base/state``, the script importer."""
        service = cls(
            base,
            base / "DropBox",
            base / "state",
            importer="script",
            props={"dirImportWait": str(dir_import_wait)},
            extra=extra,
            defaults=SCRIPT_DEFAULTS,
        )
        service.dropbox.mkdir(parents=True, exist_ok=True)
        service.work.mkdir(parents=True, exist_ok=True)
        return service

    def importer_command(self) -> list[str]:
        if self.importer == "record":
            return ["--importer", "record"]
        if self.importer == "omero-standin":
            return ["--importer", "omero"]
        if self.command is not None:
            return ["--importer-command", self.command]
        if self.importer == "script":
            script = self.tmp / "importer.py"
            script.write_text(SCRIPT_IMPORTER)
            return ["--importer-command", f"{sys.executable} {script} {self.work} {{key}}"]
        recorder = self.tmp / "recorder.py"
        recorder.write_text(RECORDER)
        return ["--importer-command", f"{sys.executable} {recorder} {{user}} {{fileset}} -- {{files}}"]

    def argv(self) -> list[str]:
        props = {"watchDir": str(self.dropbox), **self.defaults, **self.props}
        cli = (
            [sys.executable, "-m", "tests.support.omero_standin"] if self.importer == "omero-standin" else CLI
        )
        argv = [*cli, "run", "--state-dir", str(self.state), "--log-level", self.log_level]
        for name, value in props.items():
            argv += ["-D", f"omero.fs.{name}={value}"]
        if self.users is not None:
            argv += ["--users", ",".join(self.users)]
        return [*argv, *self.importer_command(), *self.extra]

    # ------------------------------------------------------------------ the process

    def start(self, wait: bool = True) -> Service:
        env = dict(os.environ, RECORD_FILE=str(self.record), **self.env)
        if self.importer == "omero-standin":
            from tests.support.omero_standin import install_fake_omero

            install_fake_omero(self.tmp / "bin")
            env["PATH"] = f"{self.tmp / 'bin'}{os.pathsep}{env['PATH']}"
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
            env["OMERO_STANDIN_RECORD"] = str(self.omero_record)
        self._starts = self.text().count(STARTED)
        with open(self.log, "ab") as logf:
            # cwd: a name that a shell would run (`$(touch PWNED)`) would create its file here.
            self.proc = subprocess.Popen(
                self.argv(), env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=self.tmp
            )
        if wait:
            self.wait_started()
        return self

    def wait_started(self, timeout: float = 60) -> None:
        """Until this run logged that it started (its watches are placed by then)."""
        assert wait_for(lambda: self.text().count(STARTED) > self._starts or not self.alive(), timeout)
        assert self.alive() and self.text().count(STARTED) > self._starts, self.tail()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ what it said

    @property
    def url(self) -> str:
        """The status page's address, once the service logged it (``--http`` in ``extra``)."""
        assert wait_for(lambda: "Status page on http://" in self.text(), 60), self.tail()
        found = re.search(r"Status page on (http://\S+/)", self.text())
        assert found is not None, self.tail()
        return found.group(1)

    def status(self) -> dict[str, object]:
        """``omero-dropbox status --json`` of this service's state directory."""
        out = run_cli("status", "--state-dir", str(self.state), "--json")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert isinstance(doc, dict)
        return doc

    # ------------------------------------------------------------------ what it imported

    def records(self) -> list[Record]:
        """What the RECORDER or the ``record`` importer recorded."""
        return read_records(self.record)

    @property
    def omero_record(self) -> Path:
        return self.tmp / "omero-standin.jsonl"

    def omero_calls(self, call: str | None = None) -> list[dict[str, object]]:
        """What the OMERO stand-in was asked (``call``: only that kind), in order."""
        calls = [json.loads(line) for line in complete_lines(self.omero_record) if line.strip()]
        return [c for c in calls if call is None or c.get("call") == call]

    def imports(self) -> list[str]:
        """The keys the script importer imported, in order."""
        lines = complete_lines(self.work / "imports.jsonl")
        return [json.loads(line)["key"] for line in lines if line.strip()]

    def drop(self, user: str, name: str, data: bytes = b"II*\x00pixels") -> Path:
        path = self.dropbox / user / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def allow(self, name: str) -> None:
        """Let the script importer import ``name`` (it fails names containing "bad" until then)."""
        (self.work / f"allow-{name}").touch()

    def fileset_state(self, path: Path) -> str | None:
        with Journal(self.state, readonly=True, check=False) as j:
            rec = j.file_state(str(path))
            if rec is None or rec.fileset_id is None:
                return None
            fs = j.fileset_by_id(rec.fileset_id)
            return fs.state if fs else None

    def fileset_id(self, path: Path) -> str:
        with Journal(self.state, readonly=True, check=False) as j:
            rec = j.file_state(str(path))
            assert rec is not None and rec.fileset_id is not None, f"{path} is not in the journal"
            return rec.fileset_id

    def wait_state(self, path: Path, state: str, timeout: float = 60) -> None:
        assert wait_for(lambda: self.fileset_state(path) == state, timeout, 0.1), (
            f"{path} is {self.fileset_state(path)}, expected {state}\n{self.text()}"
        )


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    """Start the service, and make sure it is gone afterwards (SIGTERM, exit status checked)."""
    service.start()
    try:
        yield service
    finally:
        if service.alive():
            rc = service.stop()
            assert rc == 0, service.tail()
