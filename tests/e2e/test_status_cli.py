"""`omero-dropbox status`, `retry` and `forget` as real processes against a running service.

One service (real watcher, real SQLite journal, a real importer command standing in for
OMERO) is shared by the module; every test drops its own files.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omero_dropbox.config import load_config
from omero_dropbox.engine import DropBox, UserList
from omero_dropbox.journal import Journal
from omero_dropbox.status import collect
from tests.support.processes import sigint_as_a_terminal_sends_it
from tests.support.service import CLI, Service, run_cli
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    root = Path(tempfile.mkdtemp(prefix="odb-ops-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    # dirImportWait 60: a lone .tif (which a multi-file format could still claim) waits,
    # while complete formats (.czi) import after completeWait.
    svc = Service.scripted(root, dir_import_wait=60).start()
    yield svc
    assert svc.stop() == 0, svc.text()
    shutil.rmtree(root, ignore_errors=True)


def test_status_table_per_user_with_waiting_failures_and_reasons(service: Service) -> None:
    service.drop("amy", "ok1.czi")
    bad = service.drop("amy", "bad1.czi")
    service.drop("zak", "ok2.czi")
    waiting = service.drop("zak", "still-coming.tif")  # waits dirImportWait (60 s)
    service.wait_state(bad, "failed")
    assert wait_for(lambda: len(service.imports()) >= 2, 60), service.text()

    def settled() -> bool:
        # The service refreshes what only it knows (waiting files) every 2 s.
        users = service.status()["users"]
        assert isinstance(users, dict)
        return users.get("zak", {}).get("waiting") == 1 and users.get("amy", {}).get("waiting") == 0

    assert wait_for(settled, 30, 0.3), service.status()
    out = run_cli("status", "--state-dir", str(service.state))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Service: running (pid ")
    header = next(line for line in lines if line.startswith("user "))
    assert header.split() == ["user", "waiting", "queued", "importing", "imported", "today", "failed"]
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.split()[:1] in (["amy"], ["zak"])}
    # waiting, queued, importing, imported today, failed
    assert rows["amy"] == ["0", "0", "0", "1", "1"]
    assert rows["zak"] == ["1", "0", "0", "1", "0"]
    text = out.stdout
    assert "Last failures" in text
    assert str(bad) in text
    assert "cannot read pixels of bad1.czi: unsupported compression" in text
    assert str(waiting) not in service.imports()


def test_status_json_schema_for_scripts(service: Service) -> None:
    bad = service.drop("json-user", "bad-json.czi")
    service.wait_state(bad, "failed")
    doc = service.status()
    assert doc["schema"] == 1
    assert doc["service"]["running"] is True  # type: ignore[index]
    assert set(doc["users"]["json-user"]) == {  # type: ignore[index]
        "waiting",
        "queued",
        "importing",
        "imported_today",
        "failed",
        "imported",
        "skipped_files",
    }
    failure = next(f for f in doc["failures"] if f["key"] == str(bad))  # type: ignore[attr-defined]
    assert failure["user"] == "json-user"
    assert "unsupported compression" in failure["reason"]
    assert len(failure["fileset"]) == 32 and failure["attempts"] == 1
    # Keys older scripts use stay.
    assert doc["filesets"]["json-user"]["failed"] == 1  # type: ignore[index]
    assert any(e["to"] == "failed" for e in doc["recent"])  # type: ignore[attr-defined]


def test_retry_by_id_prefix_imports_in_the_running_service_and_records_who(service: Service) -> None:
    bad = service.drop("amy", "bad-retry.czi")
    service.wait_state(bad, "failed")
    fid = service.fileset_id(bad)
    service.allow("bad-retry.czi")  # the cause is fixed
    out = run_cli("retry", "--state-dir", str(service.state), fid[:8])
    assert out.returncode == 0, out.stderr
    assert f"Re-queued {fid[:12]} amy {bad}" in out.stdout
    assert "The running service imports them now." in out.stdout
    service.wait_state(bad, "imported")
    assert service.imports().count(str(bad)) == 1
    with Journal(service.state, readonly=True, check=False) as j:
        history = j.history_of(fid)
    requeue = [e for e in history if e.old_state == "failed" and e.new_state == "queued"]
    assert len(requeue) == 1
    assert "retry requested by" in requeue[0].reason and "(omero-dropbox retry)" in requeue[0].reason


def test_retry_all_failed(service: Service) -> None:
    bads = [service.drop("zak", f"bad-all-{i}.czi") for i in range(3)]
    for b in bads:
        service.wait_state(b, "failed")
    for b in bads:
        service.allow(b.name)
    out = run_cli("retry", "--state-dir", str(service.state), "--all-failed")
    assert out.returncode == 0, out.stderr
    for b in bads:
        service.wait_state(b, "imported")
        assert str(b) in out.stdout


def test_retry_refuses_what_cannot_be_retried_and_says_why(service: Service) -> None:
    good = service.drop("amy", "good-noretry.czi")
    service.wait_state(good, "imported")
    fid = service.fileset_id(good)
    out = run_cli("retry", "--state-dir", str(service.state), fid)
    assert out.returncode == 1
    assert "already imported" in out.stderr and "forget" in out.stderr
    out = run_cli("retry", "--state-dir", str(service.state), "ffffffffffff")
    assert out.returncode == 1 and "no fileset id starts with 'ffffffffffff'" in out.stderr
    out = run_cli("retry", "--state-dir", str(service.state))
    assert out.returncode == 2 and "--all-failed" in out.stderr


def test_forget_then_drop_the_same_file_again_imports_it_again(service: Service) -> None:
    path = service.drop("amy", "again.czi", b"II*\x00same content")
    service.wait_state(path, "imported")
    fid = service.fileset_id(path)
    # Writing the same bytes again keeps inode and content: without forget, nothing happens.
    path.write_bytes(b"II*\x00same content")
    time.sleep(1.5)  # the only way to show a non-event: give it well over completeWait
    assert service.imports().count(str(path)) == 1

    out = run_cli("forget", "--state-dir", str(service.state), str(path))
    assert out.returncode == 0, out.stderr
    assert f"Forgot fileset {fid[:12]} (imported) of amy" in out.stdout
    path.write_bytes(b"II*\x00same content")
    assert wait_for(lambda: service.imports().count(str(path)) == 2, 60), service.text()
    service.wait_state(path, "imported")
    with Journal(service.state, readonly=True, check=False) as j:
        states = [e.new_state for e in j.history_of(fid)]
    assert states.count("imported") >= 2 and "forgotten" in states
    forgotten = states.index("forgotten")
    assert "imported" in states[forgotten:], states


def test_forget_a_directory_and_refusals(service: Service) -> None:
    a = service.drop("zak", "sub/a.czi")
    b = service.drop("zak", "sub/b.czi")
    service.wait_state(a, "imported")
    service.wait_state(b, "imported")
    out = run_cli("forget", "--state-dir", str(service.state), str(a.parent))
    assert out.returncode == 0, out.stderr
    assert "Forgot 2 file(s)" in out.stdout
    assert service.fileset_state(a) is None and service.fileset_state(b) is None
    out = run_cli("forget", "--state-dir", str(service.state), str(service.dropbox / "zak" / "never.czi"))
    assert out.returncode == 1
    assert "nothing is recorded for" in out.stderr


def test_status_watch_refreshes_until_ctrl_c(service: Service) -> None:
    proc = subprocess.Popen(
        [*CLI, "status", "--state-dir", str(service.state), "--json", "--watch", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_a_terminal_sends_it,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        second = json.loads(proc.stdout.readline())
        assert second["generated_at"] > first["generated_at"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_status_of_a_stopped_service_says_so(tmp_path: Path) -> None:
    svc = Service.scripted(tmp_path, dir_import_wait=0.5)
    with svc:
        path = svc.drop("amy", "x.czi")
        svc.wait_state(path, "imported")
    out = run_cli("status", "--state-dir", str(svc.state))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Service: not running")
    assert not (svc.state / "service.json").exists()


def test_forget_refuses_a_queued_fileset(tmp_path: Path) -> None:
    # Real journal, no service: a fileset still queued must not be forgotten under a running import.
    path = tmp_path / "DropBox" / "amy" / "q.czi"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"II*\x00queued")
    from omero_dropbox.identity import file_identity, fileset_id

    with Journal(tmp_path / "state") as j:
        ident = file_identity(str(path))
        j.record_file(str(path), "amy", ident)
        fid = fileset_id([ident])
        j.upsert_fileset(fid, "amy", str(path), [str(path)], "single")
        j.transition(fid, "queued")
    out = run_cli("forget", "--state-dir", str(tmp_path / "state"), str(path))
    assert out.returncode == 1
    assert "is queued; wait until it is imported or failed" in out.stderr


def test_status_never_counts_a_submitted_file_as_still_waiting(shm_dir: Path) -> None:
    # `status` adds the files the running service holds in memory (its snapshot) to what the
    # journal says. The snapshot is refreshed every 2 s; a fileset submitted in between must
    # not be counted both as waiting (snapshot) and as queued or imported (journal).
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    (dropbox / "amy").mkdir(parents=True)
    props = {"watchDir": str(dropbox), "dirImportWait": "3", "ng.settle": "0.2", "throttleImport": "0"}
    config = load_config(overrides=[f"omero.fs.{k}={v}" for k, v in props.items()])
    box = DropBox(config, lambda request: True, state_dir=state, users=UserList(["amy"]))
    box.start()
    try:
        (dropbox / "amy" / "scan.tif").write_bytes(b"II*\0" + bytes(200))
        counted: list[int] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            box.step()  # one engine step: events, submission, snapshot; as `run` does
            with Journal(state, readonly=True, check=False) as journal:
                amy = collect(journal, state)["users"].get("amy", {})
            counted.append(sum(amy.get(k, 0) for k in ("waiting", "queued", "importing", "imported_today")))
            if amy.get("imported_today") == 1:
                break
        assert counted and counted[-1] == 1, counted
        assert 1 in counted[:-1], "the snapshot never showed the file waiting: the test proves nothing"
        assert max(counted) == 1, f"counted twice at some step: {counted}"
    finally:
        box.stop()
        box.shutdown(drain_timeout=10)
