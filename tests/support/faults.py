"""Shared pieces of the fault-injection and security suites (the service they run is
:class:`tests.support.service.Service`):

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
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from omero_dropbox.journal import INTERRUPTED_REASON, Journal
from tests.support.records import Key, Record
from tests.support.service import Service
from tests.support.waiting import wait_for

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
    """Lower fs.inotify.max_queued_events, and fs.fanotify's (backend `auto` takes fanotify when
    run as root); the kernel reads it when an inotify instance (fanotify group) is created, so
    restore it as soon as the service has placed its watches (needs root)."""
    paths = [Path(f"/proc/sys/fs/{kind}/max_queued_events") for kind in ("inotify", "fanotify")]
    old = {p: p.read_text().strip() for p in paths if p.exists()}
    for p in old:
        p.write_text(str(events))
    try:
        yield
    finally:
        for p, value in old.items():
            p.write_text(value)
