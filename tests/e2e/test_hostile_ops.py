"""Operational attacks: a second service, a locked journal, a full disk at restart, signals and
orphaned importers, and idle connections to the status page.

Every test drives the real ``omero-dropbox run`` process (``tests.support.service.Service``) with the
RECORDER importer standing in for OMERO (no OMERO server runs here); the journal is real SQLite,
the importers real process groups, the status page a real socket.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from omero_dropbox.http_status import CONNECTION_DEADLINE
from omero_dropbox.journal import INTERRUPTED_REASON, Journal
from tests.support.faults import check_imports, journal_counts, write_fileset
from tests.support.service import CLI, Service, running
from tests.support.waiting import wait_for

USERS = ["amy", "zak"]


def _alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _hung_pids(service: Service) -> tuple[int, int]:
    """(leader, child) of the importer the RECORDER made hang."""
    path = Path(f"{service.record}.hung-pids")
    assert wait_for(path.exists, 60), service.tail()
    assert wait_for(lambda: path.read_text().endswith("\n"), 10)
    leader, child = map(int, path.read_text().split())
    return leader, child


def _reasons(state: Path, key: Path) -> list[str]:
    with Journal(state, readonly=True) as journal:
        rec = journal.file_state(str(key))
        assert rec is not None and rec.fileset_id is not None, f"{key} is not in the journal"
        return [h.reason for h in journal.history_of(rec.fileset_id)]


def _hanging(shm_dir: Path, **env: str) -> Service:
    return Service(
        shm_dir,
        shm_dir / "DropBox",
        shm_dir / "state",
        users=USERS,
        props={"dirImportWait": "1", "ng.maxConcurrentImports": "1"},
        env={"FAULT_MODE": "hang", "FAULT_MATCH": "hangs", **env},
    )


# ------------------------------------------------------------------ 1. one service per state dir


def test_a_second_run_on_the_same_state_dir_exits_at_once_naming_the_first_while_status_retry_forget_work(
    shm_dir: Path,
) -> None:
    first = _hanging(shm_dir, OMERO_DROPBOX_DRAIN_TIMEOUT="1")
    dropbox, state = first.dropbox, first.state
    with running(first):
        done = {write_fileset(dropbox / "zak", "done", 0, random.Random(1)): "zak"}
        assert wait_for(lambda: journal_counts(state).get("imported") == 1, 60), first.tail()
        hangs = {write_fileset(dropbox / "amy", "hangs", 0, random.Random(2)): "amy"}
        _hung_pids(first)  # the first service's import is in flight

        (shm_dir / "second").mkdir()
        second = Service(shm_dir / "second", dropbox, state, users=USERS)
        second.start(wait=False)
        assert wait_for(lambda: not second.alive(), 30), (
            "a second service on the same --state-dir kept running:\n" + second.tail()
        )
        assert second.proc is not None and second.proc.returncode != 0
        message = second.text()
        assert f"in use by another omero-dropbox service (PID {first.proc.pid}" in message, message  # type: ignore[union-attr]
        assert "--state-dir" in message and str(state) in message, message
        assert "Started OMERO.fs DropBox client" not in message, message

        # The operator's commands need no lock.  (done.tif goes first, or the next start would
        # find the forgotten file and import it again.)
        (dropbox / "zak" / "done.tif").unlink()
        for command in (["status"], ["retry", "--all-failed"], ["forget", str(dropbox / "zak" / "done.tif")]):
            result = subprocess.run(
                [*CLI, command[0], "--state-dir", str(state), *command[1:]],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, (command, result.stdout, result.stderr)
        assert first.alive(), first.tail()
    # The in-flight import ran once in the first service (ended at its drain deadline), never in
    # the second; the next start runs it again, as an interrupted import.
    assert not Path(f"{second.record}.attempts").exists(), "the second service ran an importer"
    with running(first):
        assert wait_for(lambda: len(first.records()) == 2, 60), first.tail()
    check_imports(first.records(), {**done, **hangs}, state)


# ------------------------------------------------------------------------- 2. a locked journal


def _hold_write_lock(state: Path) -> sqlite3.Connection:
    """What an operator's ``sqlite3 journal.sqlite3`` shell does with ``BEGIN IMMEDIATE;``."""
    conn = sqlite3.connect(str(state / "journal.sqlite3"), isolation_level=None, timeout=0)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_journal_write_locked_by_an_sqlite3_shell_holds_new_work_and_imports_it_once_released(
    shm_dir: Path,
) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    service = Service(shm_dir, dropbox, state, users=USERS, env={"OMERO_DROPBOX_JOURNAL_BUSY_TIMEOUT": "1"})
    with running(service):
        shell = _hold_write_lock(state)
        try:
            expected = {write_fileset(dropbox / "amy", "locked", 0, random.Random(3)): "amy"}
            # Past the busy timeout: the service says why and keeps the work, instead of dying.
            assert wait_for(lambda: "Not taking new work" in service.text() or not service.alive(), 90), (
                service.tail()
            )
            assert service.alive(), service.tail()
            text = service.text()
            assert "locked by another process" in text and "write lock" in text, service.tail()
            assert not service.records()
        finally:
            shell.execute("COMMIT")
            shell.close()
        assert wait_for(lambda: journal_counts(state) == {"imported": 1}, 60), service.tail()
    check_imports(service.records(), expected, state)
    warnings = [ln for ln in service.text().splitlines() if "is locked by another process" in ln]
    assert len(warnings) == 1, warnings  # at most once a minute


def test_import_result_that_a_locked_journal_cannot_record_is_held_and_never_imported_twice(
    shm_dir: Path,
) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    service = Service(
        shm_dir,
        dropbox,
        state,
        users=USERS,
        props={"ng.maxConcurrentImports": "1"},
        env={"OMERO_DROPBOX_JOURNAL_BUSY_TIMEOUT": "1", "IMPORT_DELAY": "2"},
    )
    with running(service):
        expected = {write_fileset(dropbox / "amy", "slow", 0, random.Random(4)): "amy"}
        assert wait_for(lambda: "Importing " in service.text(), 60), service.tail()
        shell = _hold_write_lock(state)  # while the import runs: its result cannot be recorded
        try:
            assert wait_for(lambda: "cannot record it" in service.text() or not service.alive(), 60), (
                service.tail()
            )
            assert service.alive() and service.records(), service.tail()
        finally:
            shell.execute("COMMIT")
            shell.close()
        assert wait_for(lambda: journal_counts(state) == {"imported": 1}, 30), service.tail()
    with running(service):
        more = {write_fileset(dropbox / "zak", "later", 0, random.Random(5)): "zak"}
        assert wait_for(lambda: journal_counts(state).get("imported") == 2, 60), service.tail()
    check_imports(service.records(), {**expected, **more}, state)


# --------------------------------------------------------------------- 3. full disk at restart


@pytest.fixture
def tiny_state_dir(shm_dir: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs for the state directory, always unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the state directory needs root")
    state = shm_dir / "state"
    state.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


@pytest.mark.needs_root
def test_restart_on_a_full_state_disk_says_full_not_corrupt_and_the_journal_is_intact(
    shm_dir: Path, tiny_state_dir: Path
) -> None:
    dropbox, state = shm_dir / "DropBox", tiny_state_dir
    service = Service(shm_dir, dropbox, state, users=USERS)
    with running(service):
        expected = {write_fileset(dropbox / "amy", "before", 0, random.Random(6)): "amy"}
        assert wait_for(lambda: journal_counts(state) == {"imported": 1}, 60), service.tail()
    filler = _fill(state)

    result = subprocess.run(
        [*service.argv()], capture_output=True, text=True, timeout=120, env=dict(os.environ, RECORD_FILE="x")
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "corrupt" not in output and "move it aside" not in output, output
    errors = [ln for ln in output.splitlines() if "is full" in ln]
    assert errors and str(state) in errors[-1] and "free some space" in errors[-1], output

    os.unlink(filler)
    with running(service):  # the journal was intact: nothing is imported again
        more = {write_fileset(dropbox / "zak", "after", 0, random.Random(7)): "zak"}
        assert wait_for(lambda: journal_counts(state) == {"imported": 2}, 60), service.tail()
    check_imports(service.records(), {**expected, **more}, state)


# ----------------------------------------------------------------- 4. signals and orphaned importers


def test_sighup_drains_running_imports_and_exits_0_and_nothing_is_imported_twice(shm_dir: Path) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    service = Service(shm_dir, dropbox, state, users=USERS, env={"IMPORT_DELAY": "2"})
    service.start()
    expected = {write_fileset(dropbox / "amy", "hup", 0, random.Random(8)): "amy"}
    assert wait_for(lambda: "Importing " in service.text(), 60), service.tail()
    assert service.proc is not None
    service.proc.send_signal(signal.SIGHUP)
    try:
        rc = service.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        service.kill9()
        raise AssertionError("SIGHUP did not stop the service:\n" + service.tail()) from None
    assert rc == 0, service.tail()
    assert "Received SIGHUP" in service.text()
    assert journal_counts(state) == {"imported": 1}
    with running(service):
        more = {write_fileset(dropbox / "zak", "after", 0, random.Random(9)): "zak"}
        assert wait_for(lambda: journal_counts(state).get("imported") == 2, 60), service.tail()
    check_imports(service.records(), {**expected, **more}, state)


def test_sigterm_with_a_hung_importer_ends_its_process_group_at_the_drain_deadline_and_it_runs_again(
    shm_dir: Path,
) -> None:
    service = _hanging(shm_dir, OMERO_DROPBOX_DRAIN_TIMEOUT="1")
    dropbox, state = service.dropbox, service.state
    service.start()
    key = dropbox / "amy" / "hangs.tif"
    expected = {write_fileset(key.parent, "hangs", 0, random.Random(10)): "amy"}
    leader, child = _hung_pids(service)
    assert service.stop(timeout=60) == 0, service.tail()
    assert not _alive(leader) and not _alive(child), "the hung importer outlived the service"
    assert "Ended 1 importer(s) still running at the drain deadline" in service.text(), service.tail()
    assert journal_counts(state) == {"importing": 1}  # journaled as interrupted, not as failed
    with running(service):
        assert wait_for(lambda: journal_counts(state) == {"imported": 1}, 60), service.tail()
    check_imports(service.records(), expected, state)
    assert INTERRUPTED_REASON in _reasons(state, key)


def test_kill_9_of_the_service_leaves_no_importer_process_and_the_restart_imports_once_more(
    shm_dir: Path,
) -> None:
    service = _hanging(shm_dir)
    dropbox, state = service.dropbox, service.state
    service.start()
    key = dropbox / "amy" / "hangs.tif"
    expected = {write_fileset(key.parent, "hangs", 0, random.Random(11)): "amy"}
    leader, child = _hung_pids(service)
    service.kill9()
    # The importer's leader dies with the service (PR_SET_PDEATHSIG); its child, in the same
    # process group, is left to the next start.
    assert wait_for(lambda: not _alive(leader), 30), "the importer outlived the service"
    service.start()
    try:
        assert wait_for(lambda: not _alive(child), 30), "the restart left the old importer's child running"
        assert "left running by the previous run" in service.text(), service.tail()
        assert wait_for(lambda: journal_counts(state) == {"imported": 1}, 60), service.tail()
    finally:
        assert service.stop() == 0, service.tail()
    check_imports(service.records(), expected, state)
    assert INTERRUPTED_REASON in _reasons(state, key)
    assert len(service.records()) == 1


def _start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return int(fh.read().rsplit(b") ", 1)[1].split()[19])


def test_a_start_ends_recorded_importer_groups_but_not_a_process_that_reused_a_recorded_pid(
    shm_dir: Path,
) -> None:
    # What a killed service left in importers.running: one group still running (the leader
    # gone, a member left), and one PID that another process now has (same number, later start).
    state = shm_dir / "state"
    state.mkdir()
    leftover = subprocess.Popen(
        ["sh", "-c", "sleep 3600 & read x"], start_new_session=True, stdin=subprocess.PIPE
    )
    innocent = subprocess.Popen(["sleep", "3600"], start_new_session=True)
    try:
        assert wait_for(lambda: len(_group(leftover.pid)) == 2, 10)
        (state / "importers.running").write_text(
            f"{leftover.pid} {_start_time(leftover.pid)}\n{innocent.pid} {_start_time(innocent.pid) - 1}\n"
        )
        leftover.communicate(b"\n", timeout=10)  # the leader exits; its child runs on
        assert len(_group(leftover.pid)) == 1
        service = Service(shm_dir, shm_dir / "DropBox", state, users=USERS)
        with running(service):
            assert wait_for(lambda: not _group(leftover.pid), 30), service.tail()
            assert innocent.poll() is None, "a process that merely reused a recorded PID was killed"
        assert f"Ended importer process group {leftover.pid} (1 process(es)" in service.text()
    finally:
        for proc in (leftover, innocent):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                with open(f"/proc/{name}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b") ", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != b"Z":
                    members.append(int(name))
    return members


# ------------------------------------------------------------------- 5. idle connections


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return None


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed it (EOF, after any 503 it sent)."""
    try:
        while data := sock.recv(4096):
            del data
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_idle_and_half_sent_connections_neither_block_the_status_page_nor_hold_a_thread_for_ever(
    shm_dir: Path,
) -> None:
    service = Service(
        shm_dir,
        shm_dir / "DropBox",
        shm_dir / "state",
        users=USERS,
        importer="record",
        extra=("--http", "127.0.0.1:0"),
    )
    with running(service):
        url = service.url
        host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()  # type: ignore[union-attr]
        socks = [socket.create_connection((host, int(port)), timeout=5) for _ in range(40)]
        socks[0].sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the end of it
        for s in socks:
            s.setblocking(False)
        try:
            assert wait_for(lambda: _get(url) == 200 and _get(url + "healthz") == 200, 30, 0.5), (
                service.tail()
            )
            # The server closes every one of them (the excess at once, the rest when they time out).
            assert wait_for(lambda: all(_closed_by_server(s) for s in socks), 30, 0.2), service.tail()
        finally:
            for s in socks:
                s.close()
        assert _get(url + "healthz") == 200
    assert service.text().count("connections at once") == 1, service.tail()


def test_a_client_trickling_its_request_is_cut_at_the_deadline_and_never_blocks_other_requests(
    shm_dir: Path,
) -> None:
    """Slow loris: a byte every second never trips the 5 s silence timeout; the connection is cut
    at CONNECTION_DEADLINE in all, and the page answers other clients all the while."""
    service = Service(
        shm_dir,
        shm_dir / "DropBox",
        shm_dir / "state",
        users=USERS,
        importer="record",
        extra=("--http", "127.0.0.1:0"),
    )
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 200
    with running(service):
        url = service.url
        host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()  # type: ignore[union-attr]
        with socket.create_connection((host, int(port)), timeout=5) as slow:
            opened = time.monotonic()
            sent = 0
            cut_after = None
            while sent < len(request) and time.monotonic() - opened < CONNECTION_DEADLINE + 15:
                try:
                    slow.sendall(request[sent : sent + 1])
                except OSError:  # the server shut the connection down
                    cut_after = time.monotonic() - opened
                    break
                sent += 1
                slow.settimeout(1.0)
                try:
                    if slow.recv(1) == b"":
                        cut_after = time.monotonic() - opened
                        break
                except TimeoutError:
                    pass  # still open: the server waits for the rest, as it should for a while
                assert _get(url + "healthz") == 200, "another client is served while one trickles"
        assert cut_after is not None, (
            f"a connection trickling for {time.monotonic() - opened:.0f} s was not cut"
        )
        assert CONNECTION_DEADLINE - 1 <= cut_after <= CONNECTION_DEADLINE + 10, cut_after
        assert _get(url) == 200
