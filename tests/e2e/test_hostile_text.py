"""Hostile names and private state, through the real ``omero-dropbox run``.

Lab users choose every byte of every name under ``DropBox/<user>/``, and the importer repeats
those names in its output.  A name with a newline, a carriage return, an ANSI escape, a
right-to-left override or bytes that are not UTF-8 must reach no log, no journal reason, no
``status`` output and no status page raw.  And what the service keeps (the journal, every
user's file names, the importers' output) is private to it whatever the umask, and the OMERO
admin password is inherited by no importer.

The importer is the RECORDER of tests/support/service.py (a real process standing in for OMERO; no OMERO
server runs here), or a small command that dumps its environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import unicodedata
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.faults import journal_counts, write_file
from tests.support.service import CLI, Service, running
from tests.support.waiting import wait_for

# A line of its own that a name tries to write into the log (upstream's log line format).
FORGED_STAMP = "2020-01-01 00:00:00,000"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO |WARNI|ERROR|CRITI) \[")

OK_NAME = b"ok\n" + FORGED_STAMP.encode() + b" INFO  FORGED-OK\r\x1b[31mred\xe2\x80\xae\xff.tif"
BAD_NAME = b"bad\n" + FORGED_STAMP.encode() + b" ERROR FORGED-BAD\x1b[2J\xe2\x81\xa6\xfe.tif"
LONE_COMPANION = b"x\n" + FORGED_STAMP.encode() + b" INFO  FORGED-COMPANION\x1b]0;t\x07.ids"
# An ICS 2.0 .ics holds its pixels: grouping skips the .ids beside it, naming the .ics.
PAIR_STEM = b"pair\n" + FORGED_STAMP.encode() + b" INFO  FORGED-PAIR\xe2\x80\xae"


def raw_controls(text: str, *, lines: bool) -> list[str]:
    """The characters in ``text`` that should have been escaped (``\\n`` allowed if ``lines``)."""
    bad = []
    for ch in text:
        if ch == "\n" and lines:
            continue
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            bad.append(ch)
    return bad


def strings_in(doc: Any) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield k
            yield from strings_in(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from strings_in(v)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The service (a child) inherits the umask in force when it starts."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def status_doc(state: Path) -> dict[str, Any]:
    r = subprocess.run([*CLI, "status", "--json", "--state-dir", str(state)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert isinstance(doc, dict)
    return doc


def get_page(url: str) -> str:
    with urllib.request.urlopen(url + "?refresh=0", timeout=30) as r:
        return str(r.read().decode("utf-8"))


def assert_log_is_clean(text: str, what: str) -> None:
    assert not raw_controls(text, lines=True), (what, raw_controls(text, lines=True))
    for line in text.splitlines():
        assert not line.startswith((FORGED_STAMP, "FORGED")), (what, line)
        assert LOG_LINE.match(line), f"{what}: a line that is not a log record: {line!r}"


def test_hostile_names_reach_no_log_status_or_page_raw_with_recorder_importer(shm_dir: Path) -> None:
    dropbox, state, logs = shm_dir / "DropBox", shm_dir / "state", shm_dir / "logs"
    service = Service(
        shm_dir,
        dropbox,
        state,
        users=["amy"],
        props={"dirImportWait": "1"},
        env={"FAULT_MODE": "fail", "FAULT_RC": "65", "FAULT_MATCH": "bad"},
        extra=("--log-dir", str(logs), "--http", "127.0.0.1:0"),
    )
    user_dir = os.fsencode(dropbox / "amy")
    # Written before the start: the start-up scan reports the .ics and its .ids together.
    ok = write_file(user_dir + b"/" + OK_NAME, b"II*\x00pixels")
    write_file(user_dir + b"/" + BAD_NAME, b"II*\x00pixels")
    write_file(user_dir + b"/" + LONE_COMPANION, b"\x00" * 64)
    ics = write_file(user_dir + b"/" + PAIR_STEM + b".ics", b"\t\nics_version\t2.0\nfilename\tpair\n")
    write_file(user_dir + b"/" + PAIR_STEM + b".ids", b"\x00" * 64)
    with running(service):

        def settled() -> bool:
            counts = journal_counts(state)
            doc = status_doc(state)
            skipped = doc["users"].get("amy", {}).get("skipped_files", 0)
            return counts.get("imported") == 2 and counts.get("failed") == 1 and skipped == 2

        assert wait_for(settled, 90), service.tail()
        page = get_page(service.url)
    assert sorted(r.files for r in service.records()) == [(ok,), (ics,)]

    dropbox_log = (logs / "DropBox.log").read_bytes().decode("utf-8")  # no raw undecodable byte
    for text, what in ((dropbox_log, "DropBox.log"), (service.text(), "stderr")):
        assert_log_is_clean(text, what)
        # The names are there, escaped, and so is the skip reason that quotes the key file's name.
        assert "companion not used by its key file (pair\\x0a" + FORGED_STAMP in text, what
        assert "FORGED-COMPANION\\x1b]0;t\\x07.ids: companion file whose key file never arrived" in text
        assert "FORGED-BAD\\x1b[2J\\u2066\\xfe.tif" in text, what
        assert "red\\u202e\\xff.tif" in text, what

    r = subprocess.run([*CLI, "status", "--state-dir", str(state)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode("utf-8")
    assert not raw_controls(out, lines=True), raw_controls(out, lines=True)
    assert not any(line.startswith((FORGED_STAMP, "FORGED")) for line in out.splitlines()), out
    assert "FORGED-BAD\\x1b[2J\\u2066\\xfe.tif" in out

    doc = status_doc(state)
    for s in strings_in(doc):
        assert not raw_controls(s, lines=False), (s, raw_controls(s, lines=False))
    (failure,) = doc["failures"]
    assert failure["key"].endswith("bad\\x0a" + FORGED_STAMP + " ERROR FORGED-BAD\\x1b[2J\\u2066\\xfe.tif")
    assert "cannot read plane 3 of" in failure["reason"] and "\\x1b[2J" in failure["reason"]
    skips = [e["reason"] for e in doc["recent"] if e["to"] == "skipped"]
    assert any("companion not used by its key file (pair\\x0a" in r for r in skips), skips

    assert not raw_controls(page, lines=True), raw_controls(page, lines=True)
    assert "FORGED-BAD\\x1b[2J\\u2066\\xfe.tif" in page


ENV_DUMP = textwrap.dedent(
    """
    import json, os, sys
    with open(os.environ["ENV_DUMP"], "w") as fh:
        json.dump(dict(os.environ), fh)
    """
)


def private_modes(root: Path) -> dict[str, int]:
    """Mode of ``root`` and of everything under it, by path relative to ``root``."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def test_state_and_logs_are_private_and_no_importer_inherits_the_admin_password_under_umask_022(
    shm_dir: Path,
) -> None:
    dropbox, state, logs = shm_dir / "DropBox", shm_dir / "state", shm_dir / "logs"
    dump = shm_dir / "importer-env.json"
    script = shm_dir / "env_dump.py"
    script.write_text(ENV_DUMP)
    service = Service(
        shm_dir,
        dropbox,
        state,
        users=["amy"],
        env={"OMERO_DROPBOX_ADMIN_PASSWORD": "admin-secret-4711", "ENV_DUMP": str(dump)},
        extra=("--log-dir", str(logs), "--http", "127.0.0.1:0"),
        command=f"{sys.executable} {script} {{files}}",
    )
    with umask(0o022), running(service):
        write_file(dropbox / "amy" / "one.tif", b"II*\x00pixels")
        assert wait_for(lambda: journal_counts(state).get("imported") == 1, 60), service.tail()
        assert wait_for(lambda: (state / "service.json").exists(), 30), service.tail()
        env = json.loads(dump.read_text())
        state_modes = private_modes(state)
        log_modes = private_modes(logs)
    assert env["ENV_DUMP"] == str(dump), "the dump is the importer's environment"
    assert "OMERO_DROPBOX_ADMIN_PASSWORD" not in env
    assert "admin-secret-4711" not in json.dumps(env)

    for name in ("journal.sqlite3", "journal.sqlite3-wal", "service.json", "http-token"):
        assert name in state_modes, state_modes
    assert state_modes["."] == 0o700, oct(state_modes["."])
    wide = {p: oct(m) for p, m in state_modes.items() if m & 0o077}
    assert not wide, f"state files readable by group or others: {wide}"
    # DropBox.log is 0640 like packaging/logrotate's `create 0640`: nothing for others.
    assert "DropBox.log" in log_modes, log_modes
    wide = {p: oct(m) for p, m in log_modes.items() if m & 0o027}
    assert not wide, f"log files open to others or group-writable: {wide}"


def test_a_wider_state_dir_is_narrowed_and_said_and_records_are_private_with_record_importer(
    shm_dir: Path,
) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    service = Service(shm_dir, dropbox, state, users=["amy"], importer="record")
    with umask(0o022), running(service):
        write_file(dropbox / "amy" / "one.tif", b"II*\x00pixels")
        assert wait_for(lambda: len(service.records()) == 1, 60), service.tail()
    assert f"State directory {state} was mode 0755" in service.text()
    modes = private_modes(state)
    assert modes["."] == 0o700 and modes["imports.jsonl"] == 0o600, modes
    wide = {p: oct(m) for p, m in modes.items() if m & 0o077}
    assert not wide, f"state files readable by group or others: {wide}"
