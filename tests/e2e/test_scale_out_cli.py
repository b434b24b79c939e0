"""Service roles on the shared PostgreSQL queue, with real processes and a real private server:
``run --queue … --role watcher`` nodes journal and enqueue, ``worker`` processes import.

Each test has its own database (``pg_dsn``) on the session's private server
(:mod:`tests.support.postgres`); conditions are waited for with deadlines, never slept on.
"""

from __future__ import annotations

import collections
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from omero_dropbox.journal import Journal
from tests.support.filesets import write_ics, write_tiff
from tests.support.postgres import PostgresServer
from tests.support.service import Service, run_cli
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess, blocker_command, recorder_command

pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install 'psycopg[binary]')")

from omero_dropbox.journal import StaleClaimError
from omero_dropbox.pg_store import PgQueueStore

USERS = ("amy", "zak")


def _watcher(base: Path, dsn: str, *extra: str) -> Service:
    (base / "watcher").mkdir(parents=True, exist_ok=True)
    return Service(
        base / "watcher",
        base / "DropBox",
        base / "watcher" / "state",
        importer="record",
        extra=["--queue", dsn, "--role", "watcher", *extra],
    )


def _drop_mixed(dropbox: Path, n: int) -> int:
    """``n`` filesets: ICS pairs and single TIFFs, for two users; returns n."""
    for i in range(n):
        folder = dropbox / USERS[i % 2] / f"run{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        if i % 4 < 2:
            write_ics(folder, f"img{i}")
        else:
            write_tiff(folder / f"t{i}.tif", value=i)
    return n


def _journal_states(state: Path) -> dict[str, str]:
    """``{fileset id: state}`` in a watcher node's journal."""
    with Journal(state, readonly=True, check=False) as j:
        return {r.id: str(r.state) for r in j.filesets()}


def _imported(state: Path) -> set[str]:
    return {fid for fid, s in _journal_states(state).items() if s == "imported"}


@pytest.fixture
def processes() -> Iterator[list[WorkerProcess | Service]]:
    """Every process a test starts; whatever is still alive at the end is stopped (SIGTERM)."""
    started: list[WorkerProcess | Service] = []
    yield started
    for p in started:
        if p.alive():
            p.stop()


def test_a_watcher_node_and_two_workers_import_each_fileset_exactly_once(
    shm_dir: Path, pg_dsn: str, processes: list[WorkerProcess | Service]
) -> None:
    watcher = _watcher(shm_dir, pg_dsn)
    processes.append(watcher.start())
    workers = [WorkerProcess(shm_dir / name, pg_dsn, name).start() for name in ("w1", "w2")]
    processes.extend(workers)

    n = _drop_mixed(watcher.dropbox, 40)

    def done() -> bool:
        return len(_imported(watcher.state)) >= n

    logs = lambda: watcher.tail() + "".join(w.tail() for w in workers)  # noqa: E731
    assert wait_for(done, 180, 0.2), logs()
    records = [r for w in workers for r in w.records()]
    per_fileset = collections.Counter(r.fileset for r in records)
    assert all(c == 1 for c in per_fileset.values()), per_fileset.most_common(3)
    assert set(per_fileset) == _imported(watcher.state)
    assert len(per_fileset) == n
    # Each record is one fileset of one user: an ICS pair or a TIFF, never mixed.
    assert {len(r.files) for r in records} == {1, 2}
    assert {r.user for r in records} == set(USERS)

    out = run_cli("status", "--state-dir", str(watcher.state), "--json")
    assert out.returncode == 0, out.stderr
    assert f'"imported": {n}' in json.dumps(json.loads(out.stdout)), out.stdout[:3000]

    for p in [*workers, watcher]:
        assert p.stop() == 0, p.tail()


def test_b_a_killed_workers_claim_is_taken_back_and_imported_once_by_the_other(
    shm_dir: Path, pg_dsn: str, processes: list[WorkerProcess | Service]
) -> None:
    block = shm_dir / "block"
    block.mkdir()
    env = {"BLOCK_DIR": str(block), "BLOCK_LOG": str(block / "log")}
    watcher = _watcher(shm_dir, pg_dsn)
    processes.append(watcher.start())
    workers = {
        name: WorkerProcess(
            shm_dir / name, pg_dsn, name, blocker_command(shm_dir), lease=2.0, env=env
        ).start()
        for name in ("w1", "w2")
    }
    processes.extend(workers.values())

    def notes() -> list[list[str]]:
        path = block / "log"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    (watcher.dropbox / "amy").mkdir(parents=True)
    tiff = write_tiff(watcher.dropbox / "amy" / "one.tif", value=7)
    logs = lambda: watcher.tail() + "".join(w.tail() for w in workers.values())  # noqa: E731
    assert wait_for(lambda: len(notes()) >= 1, 60, 0.1), logs()
    first, _, fid = notes()[0]
    with PgQueueStore(pg_dsn) as store:
        token, _lease = store.claim_of(fid)
    assert token is not None
    workers[first].kill9()  # in the middle of its import (its importer still blocks)
    other = "w2" if first == "w1" else "w1"

    assert wait_for(lambda: [other, "started", fid] in notes(), 60, 0.1), logs()
    assert "Took back 1 claim(s)" in workers[other].text(), workers[other].tail()
    with PgQueueStore(pg_dsn) as store:
        # The killed worker coming back with its old claim is refused.
        with pytest.raises(StaleClaimError):
            store.finish(fid, token, "imported", "late result of the killed worker")
    (block / "release").touch()
    watcher.wait_state(tiff, "imported", 60)
    with PgQueueStore(pg_dsn) as store:
        history = store.history_of(fid)
    assert [h.new_state for h in history].count("imported") == 1
    assert [n for n in notes() if n[1] == "started"] == [[first, "started", fid], [other, "started", fid]]
    assert workers[other].stop() == 0, workers[other].tail()
    assert watcher.stop() == 0, watcher.tail()


def test_c_postgresql_restarted_mid_run_loses_nothing_and_imports_nothing_twice(
    shm_dir: Path, pg_dsn: str, postgres_server: PostgresServer, processes: list[WorkerProcess | Service]
) -> None:
    watcher = _watcher(shm_dir, pg_dsn)
    processes.append(watcher.start())
    # Imports of half a second: some are running, or have a result to record, when the server
    # goes.  The lease outlasts the outage, so no claim is taken back meanwhile.
    workers = [
        WorkerProcess(
            shm_dir / name,
            pg_dsn,
            name,
            recorder_command(shm_dir),
            lease=30.0,
            env={"RECORD_FILE": str(shm_dir / f"{name}.jsonl"), "IMPORT_DELAY": "0.5"},
        ).start()
        for name in ("w1", "w2")
    ]
    processes.extend(workers)
    logs = lambda: watcher.tail() + "".join(w.tail() for w in workers)  # noqa: E731

    first = _drop_mixed(watcher.dropbox, 12)
    assert wait_for(lambda: len(_imported(watcher.state)) >= 1, 120, 0.1), logs()
    postgres_server.stop()  # every connection is cut while the run goes on
    more = watcher.dropbox / "amy" / "after"
    more.mkdir(parents=True)
    for i in range(6):
        write_tiff(more / f"a{i}.tif", value=100 + i)
    n = first + 6
    # The watcher node journals the new filesets meanwhile, and says once that it waits.
    assert wait_for(lambda: "Cannot reach the shared queue" in watcher.text(), 60, 0.1), logs()
    assert wait_for(lambda: len(_journal_states(watcher.state)) >= n, 60, 0.1), logs()
    postgres_server.start()

    assert wait_for(lambda: len(_imported(watcher.state)) >= n, 180, 0.2), logs()
    assert watcher.text().count("Cannot reach the shared queue") == 1, watcher.tail()
    assert "The shared queue answers again" in watcher.text(), watcher.tail()
    for w in workers:  # one error per outage (the further tries go to DEBUG)
        errors = [line for line in w.text().splitlines() if " ERROR " in line and "Cannot start" in line]
        assert len(errors) <= 1, w.tail()
    records = [r for w in workers for r in w.records()]
    per_fileset = collections.Counter(r.fileset for r in records)
    assert all(c == 1 for c in per_fileset.values()), per_fileset.most_common(3)
    assert set(per_fileset) == _imported(watcher.state)
    assert len(per_fileset) == n
    for p in [*workers, watcher]:
        assert p.stop() == 0, p.tail()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("command", ["run", "worker"])
def test_d_an_unreachable_queue_at_start_is_a_clear_error(shm_dir: Path, command: str) -> None:
    dsn = f"postgresql://odb:s3cret-pw@127.0.0.1:{_free_port()}/queue?connect_timeout=5"
    args = [command, "--queue", dsn, "--state-dir", str(shm_dir / "state"), "--importer", "record"]
    if command == "run":
        args += ["-D", f"omero.fs.watchDir={shm_dir / 'DropBox'}"]
    out = run_cli(*args)
    assert out.returncode != 0, out
    assert "s3cret-pw" not in out.stderr + out.stdout
    assert "cannot connect to PostgreSQL postgresql://odb:***@127.0.0.1" in out.stderr, out.stderr
    assert "is the server running" in out.stderr, out.stderr


def test_d_the_queue_property_is_used_and_its_password_not_shown(shm_dir: Path) -> None:
    dsn = f"postgresql://odb:s3cret-pw@127.0.0.1:{_free_port()}/queue"
    out = run_cli(
        "worker", "-D", f"omero.fs.ng.queue={dsn}", "--state-dir", str(shm_dir / "s"), "--importer", "record"
    )
    assert out.returncode == 1, out
    assert "s3cret-pw" not in out.stderr and "postgresql://odb:***@127.0.0.1" in out.stderr, out.stderr


def test_e_role_all_imports_itself_and_a_retry_on_the_node_queues_the_fileset_again(
    shm_dir: Path, pg_dsn: str, processes: list[WorkerProcess | Service]
) -> None:
    service = Service.scripted(shm_dir, "--queue", pg_dsn)  # role all: its own workers import
    service.props = {**service.props, "ng.maxAttempts": "1"}
    processes.append(service.start())
    good = service.drop("amy", "good.tif")
    bad = service.drop("amy", "bad.tif", b"II*\x00other pixels")
    service.wait_state(good, "imported")
    service.wait_state(bad, "failed")
    good_id, bad_id = service.fileset_id(good), service.fileset_id(bad)
    with Journal(service.state, readonly=True, check=False) as j:
        # The OMERO objects its own worker's import printed are journaled, as on one host.
        assert j.objects_of([good_id]).get(good_id), service.tail()

    service.allow("bad.tif")
    out = run_cli("retry", "--state-dir", str(service.state), bad_id[:12])
    assert out.returncode == 0, out.stderr
    service.wait_state(bad, "imported")
    assert sorted(service.imports()) == sorted([str(bad), str(good)])
    with PgQueueStore(pg_dsn) as store:
        assert store.ids_in(["imported"]) == {good_id: "imported", bad_id: "imported"}
    assert service.stop() == 0, service.tail()


def test_a_second_worker_on_the_same_state_directory_is_refused(
    shm_dir: Path, pg_dsn: str, processes: list[WorkerProcess | Service]
) -> None:
    first = WorkerProcess(shm_dir / "w1", pg_dsn, "w1").start()
    processes.append(first)
    out = run_cli("worker", "--queue", pg_dsn, "--state-dir", str(first.state), "--importer", "record")
    assert out.returncode == 1, out
    assert "is in use by another omero-dropbox service" in out.stderr, out.stderr
    assert first.stop() == 0, first.tail()


def test_d_a_malformed_queue_dsn_is_a_configuration_error(shm_dir: Path) -> None:
    out = run_cli(
        "worker", "--queue", "db password=s3cret", "--state-dir", str(shm_dir), "--importer", "record"
    )
    assert out.returncode == 2, out
    assert "not a PostgreSQL connection string" in out.stderr and "s3cret" not in out.stderr, out.stderr
