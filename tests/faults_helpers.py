"""Shared pieces of the fault-injection and security suites.

* :class:`Service` runs the real ``omero-dropbox run`` process on a DropBox directory,
  with either the in-process ``record`` importer (fast, for mass copies) or a
  ``--importer-command`` that runs :data:`RECORDER`, a small program standing in for
  OMERO (no OMERO server runs here) that records the exact bytes of every argument,
  the size of every file when it ran, and can hang, crash or fail on request;
* writers that lay down mixed-format filesets and say, by construction, which
  filesets they wrote and as which user;
* :func:`check_imports` compares what the importer recorded with what was written:
  every fileset imported exactly once as the right user, a duplicate only where the
  journal records an interrupted import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from omero_dropbox.journal import INTERRUPTED_REASON, Journal

from .conftest import wait_for

CLI = [sys.executable, "-m", "omero_dropbox.cli"]
STARTED = "Started OMERO.fs DropBox client"

#: A fileset as written: its member paths as exact bytes.
Key = frozenset[bytes]

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


@dataclass(frozen=True)
class Record:
    """One import as the importer saw it."""

    user: str
    fileset: str
    files: tuple[bytes, ...]
    sizes: tuple[int, ...] = ()

    @property
    def key(self) -> Key:
        return frozenset(self.files)


def complete_part(data: bytes) -> bytes:
    """``data`` up to its last newline: a last line without one is still being appended."""
    return data[: data.rfind(b"\n") + 1]


def complete_lines(path: Path, errors: str = "strict") -> list[str]:
    """The finished lines of a file that another process appends to ([] while it does not exist).

    Every reader of such a file (importer records, logs) goes through here: a reader can see an
    append half done (a large write lands page by page), so a last line without its newline is
    left out until the writer finishes it.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [line.decode("utf-8", errors) for line in complete_part(data).split(b"\n")[:-1]]


def read_records(path: Path) -> list[Record]:
    """The importer's records, from the RECORDER (hex bytes) or the ``record`` importer (text)."""
    out = []
    for line in complete_lines(path):
        if not line.strip():
            continue
        doc = json.loads(line)
        if "sizes" in doc:
            user = bytes.fromhex(doc["user"]).decode("utf-8", "surrogateescape")
            files = tuple(bytes.fromhex(f) for f in doc["files"])
            out.append(Record(user, doc["fileset"], files, tuple(doc["sizes"])))
        else:
            files = tuple(os.fsencode(f) for f in doc["files"])
            out.append(Record(doc["user"], doc["fileset"], files))
    return out


@dataclass
class Service:
    """``omero-dropbox run`` as a real background process."""

    tmp: Path
    dropbox: Path
    state: Path
    users: Iterable[str] | None = None
    importer: str = "command"  # "command" (the RECORDER) or "record"
    props: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._starts = 0
        self.log = self.tmp / "service.log"
        self.record = (
            self.state / "imports.jsonl" if self.importer == "record" else self.tmp / "imports.jsonl"
        )

    def argv(self) -> list[str]:
        props = {
            "watchDir": str(self.dropbox),
            "dirImportWait": "2",
            "throttleImport": "0",
            "ng.completeWait": "0.5",
            "ng.settle": "0.5",
            "ng.maxConcurrentImports": "2",
            "ng.retryBackoff": "0.2",
            **self.props,
        }
        argv = [*CLI, "run", "--state-dir", str(self.state), "--log-level", self.log_level]
        for name, value in props.items():
            argv += ["-D", f"omero.fs.{name}={value}"]
        if self.users is not None:
            argv += ["--users", ",".join(self.users)]
        if self.importer == "record":
            argv += ["--importer", "record"]
        else:
            recorder = self.tmp / "recorder.py"
            recorder.write_text(RECORDER)
            argv += ["--importer-command", f"{sys.executable} {recorder} {{user}} {{fileset}} -- {{files}}"]
        return argv

    def start(self, wait: bool = True) -> None:
        env = dict(os.environ, RECORD_FILE=str(self.record), **self.env)
        self._starts = self.text().count(STARTED)
        with open(self.log, "ab") as logf:
            # cwd: a name that a shell would run (`$(touch PWNED)`) would create its file here.
            self.proc = subprocess.Popen(
                self.argv(), env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=self.tmp
            )
        if wait:
            self.wait_started()

    def wait_started(self, timeout: float = 60) -> None:
        """Until this run logged that it started (its watches are placed by then)."""
        assert wait_for(lambda: self.text().count(STARTED) > self._starts or not self.alive(), timeout)
        assert self.alive() and self.text().count(STARTED) > self._starts, self.tail()

    def text(self) -> str:
        """The log so far: while the service runs, only its finished lines."""
        running = self.alive()  # asked before reading: a log read after the exit is final
        data = self.log.read_bytes() if self.log.exists() else b""
        return (complete_part(data) if running else data).decode("utf-8", "backslashreplace")

    def tail(self, n: int = 6000) -> str:
        """The end of the log, a line still being written included (for failure messages)."""
        data = self.log.read_bytes() if self.log.exists() else b""
        return data.decode("utf-8", "backslashreplace")[-n:]

    def records(self) -> list[Record]:
        return read_records(self.record)

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM and wait; a service that does not stop in time is killed and the test fails."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(
                f"the service did not stop within {timeout} s of SIGTERM:\n{self.tail()}"
            ) from None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


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


# ------------------------------------------------------------------------------ writers


def write_file(path: bytes | str | Path, data: bytes) -> bytes:
    """Write ``data`` to ``path`` (parents created); returns the path as bytes."""
    p = os.fsencode(path)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as fh:
        fh.write(data)
    return p


def write_fileset(directory: bytes | str | Path, stem: str, kind: int, rng: random.Random) -> Key:
    """One fileset of a format chosen by ``kind % 5``; returns its members as written."""
    d = os.fsencode(directory)
    s = os.fsencode(stem)
    kind %= 5
    if kind == 0:
        files = [write_file(d + b"/" + s + b".tif", b"II*\x00" + rng.randbytes(64))]
    elif kind == 1:
        files = [
            write_file(d + b"/" + s + b".ics", b"\t\nics_version\t1.0\nfilename\t" + s + b"\n"),
            write_file(d + b"/" + s + b".ids", rng.randbytes(128)),
        ]
    elif kind == 2:
        files = [
            write_file(d + b"/" + s + b".hdr", b"\x5c\x01\x00\x00" + bytes(344)),
            write_file(d + b"/" + s + b".img", rng.randbytes(256)),
        ]
    elif kind == 3:
        files = [
            write_file(d + b"/" + s + b".dv", rng.randbytes(1024)),
            write_file(d + b"/" + s + b".dv.log", b"log\n"),
        ]
    else:
        files = [write_file(d + b"/" + s + b".png", b"\x89PNG\r\n\x1a\n" + rng.randbytes(32))]
    return frozenset(files)


# ----------------------------------------------------------------------------- checking


@dataclass
class Outcome:
    """What happened to the filesets written, for assertions and RELIABILITY.md."""

    written: int
    imported: int
    duplicated: int  # extra imports of a fileset, not explained by an interrupted import
    lost: int
    interrupted_reruns: int  # extra imports explained by the journal

    def row(self, scenario: str, files: int, seconds: float) -> str:
        return (
            f"| {scenario} | {files} | {self.written} | {self.imported} | {self.duplicated} | "
            f"{self.lost} | {self.interrupted_reruns} | {seconds:.1f} s |"
        )


def check_imports(
    records: list[Record], expected: Mapping[Key, str], state: Path, *, allow_extra: bool = False
) -> Outcome:
    """Every expected fileset imported exactly once, as its user; a re-run only after a crash.

    Raises AssertionError naming examples of what went wrong.
    """
    got = Counter(r.key for r in records)
    users: dict[Key, set[str]] = {}
    ids: dict[Key, set[str]] = {}
    for r in records:
        users.setdefault(r.key, set()).add(r.user)
        ids.setdefault(r.key, set()).add(r.fileset)
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    assert not missing, (
        f"{len(missing)} of {len(expected)} filesets never imported, e.g. {_show(missing)}; "
        f"{len(extra)} imports of filesets never written, e.g. {_show(extra)}"
    )
    if not allow_extra:
        assert not extra, f"{len(extra)} imports of filesets never written, e.g. {_show(extra)}"
    wrong = [k for k in expected if users[k] != {expected[k]}]
    assert not wrong, f"imported as the wrong user: {[(sorted(k), users[k]) for k in wrong[:3]]}"
    claimed = Counter(f for k in got for f in k)
    shared = [f for f, n in claimed.items() if n > 1]
    assert not shared, f"files claimed by two different imports: {shared[:3]}"
    reruns = 0
    twice = [k for k in expected if got[k] > 1]
    if twice:
        with Journal(state, readonly=True) as journal:
            for k in twice:
                (fid,) = ids[k]
                reasons = [h.reason for h in journal.history_of(fid)]
                interrupted = reasons.count(INTERRUPTED_REASON)
                assert got[k] - 1 <= interrupted, (
                    f"imported {got[k]} times with {interrupted} interrupted import(s) in the journal: "
                    f"{sorted(k)} {reasons}"
                )
                reruns += got[k] - 1
    outcome = Outcome(len(expected), sum(1 for k in expected if k in got), 0, 0, reruns)
    _report(outcome, sum(len(k) for k in expected))
    return outcome


def _report(outcome: Outcome, files: int) -> None:
    """With $ODB_RELIABILITY_REPORT set, append this scenario's figures (for RELIABILITY.md)."""
    target = os.environ.get("ODB_RELIABILITY_REPORT")
    if not target:
        return
    scenario = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    row = {"scenario": scenario, "files": files, **dataclasses.asdict(outcome)}
    with open(target, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def _show(keys: list[Key]) -> list[list[str]]:
    return [sorted(os.fsdecode(f) for f in k) for k in keys[:3]]


def file_reason(state: Path, path: bytes | str | Path) -> tuple[str, str] | None:
    """``(state, reason)`` the journal holds for one file, or None."""
    with Journal(state, readonly=True) as journal:
        rec = journal.file_state(os.fsdecode(path))
    return None if rec is None else (rec.state, rec.reason)


def journal_counts(state: Path) -> dict[str, int]:
    """Filesets per state, all users together."""
    if not (state / "journal.sqlite3").exists():
        return {}
    with Journal(state, readonly=True, check=False) as journal:
        counts: Counter[str] = Counter()
        for per_user in journal.counts("filesets").values():
            counts.update(per_user)
    return dict(counts)


def settled(service: Service, expected_imports: int, timeout: float) -> bool:
    """Wait for ``expected_imports`` distinct filesets in the record, then past one more dirImportWait.

    The extra wait gives anything that would be imported twice the time to show up.
    """
    ok = wait_for(lambda: len({r.key for r in service.records()}) >= expected_imports, timeout, 0.25)
    wait = float(dict(service.props).get("dirImportWait", "2"))
    time.sleep(wait + 1.0)
    return ok


def write_user_tree(
    dropbox: Path, user: str, n_files: int, seed: int, subdir: str = "", per_dir: int = 60
) -> dict[Key, str]:
    """About ``n_files`` files in filesets of mixed formats under ``dropbox/user/subdir/expN/``."""
    rng = random.Random(seed)
    out: dict[Key, str] = {}
    written = i = 0
    base = os.fsencode(dropbox / user / subdir).rstrip(b"/")
    while written < n_files:
        fs = write_fileset(base + b"/exp%d" % (i // per_dir), f"s{i}", rng.randrange(5), rng)
        out[fs] = user
        written += len(fs)
        i += 1
    return out


def _write_users(args: tuple[Path, list[str], int, int, str]) -> dict[Key, str]:
    dropbox, users, n_files, seed, subdir = args
    out: dict[Key, str] = {}
    for user in users:
        out.update(write_user_tree(dropbox, user, n_files, seed + zlib.crc32(user.encode()), subdir))
    return out


def parallel_write(
    dropbox: Path, users: list[str], files_per_user: int, writers: int, seed: int, subdir: str = ""
) -> dict[Key, str]:
    """``writers`` processes write every user's tree at full speed; returns every fileset written."""
    ctx = multiprocessing.get_context("fork")
    chunks = [(dropbox, users[i::writers], files_per_user, seed, subdir) for i in range(writers)]
    with ctx.Pool(writers) as pool:
        out: dict[Key, str] = {}
        for part in pool.map(_write_users, chunks):
            out.update(part)
    return out


@contextlib.contextmanager
def small_inotify_queue(events: int) -> Iterator[None]:
    """Lower fs.inotify.max_queued_events; the kernel reads it when an inotify instance is created,
    so restore it as soon as the service has placed its watches (needs root)."""
    path = Path("/proc/sys/fs/inotify/max_queued_events")
    old = path.read_text().strip()
    path.write_text(str(events))
    try:
        yield
    finally:
        path.write_text(old)
