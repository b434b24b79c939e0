"""The same client against our MonitorServer and upstream's own (omero-dropbox 5.7.0, run, not copied).

Behaviours both support must match (tests parametrized over both servers); where they differ by
design, the test says which does what (upstream loses events for an unreachable client; it
never implemented getMonitorState). Last, upstream's DropBox client servant receives events
from our MonitorServer.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ice import (
    UPSTREAM_DIR,
    ClientSide,
    ServerProcess,
    require_ice,
    start_ng_monitor_server,
    start_upstream_monitor_server,
)
from tests.support.waiting import wait_for

Ice, omero = require_ice()
monitors = omero.grid.monitors

DEADLINE = 20.0


@pytest.fixture(scope="module", params=["ng", "upstream"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, ServerProcess, str]]:
    if request.param == "ng":
        proc, proxy = start_ng_monitor_server()
    else:
        log_dir = Path(tempfile.mkdtemp(prefix="odb-upstream-ms-"))
        proc, proxy = start_upstream_monitor_server(log_dir)
    yield request.param, proc, proxy
    proc.stop()


@pytest.fixture
def client() -> Iterator[ClientSide]:
    side = ClientSide(Ice, omero)
    yield side
    side.close()


def _put(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return str(path)


def test_new_files_in_root_and_new_directories_arrive_as_create(
    server: tuple[str, ServerProcess, str], client: ClientSide, shm_dir: Path
) -> None:
    ms = client.server(server[2])
    mid = client.create(ms, shm_dir, types=["Creation", "Modification"], mode="Follow")
    ms.startMonitor(mid)
    files = {_put(shm_dir / "a.tif"), _put(shm_dir / "b.tif")}
    (shm_dir / "run1").mkdir()
    assert wait_for(lambda: str(shm_dir / "run1") in _watched(server, shm_dir / "run1"), DEADLINE)
    files.add(_put(shm_dir / "run1" / "c.tif"))
    assert wait_for(lambda: set(client.received.paths("Create")) >= files, DEADLINE), client.received
    assert set(client.received.paths()) == files
    ms.stopMonitor(mid)
    ms.destroyMonitor(mid)


def _watched(server: tuple[str, ServerProcess, str], path: Path) -> str:
    """Upstream places a new directory's watch asynchronously: wait for its log line first."""
    if server[0] == "upstream":
        return str(path) if f"{path}" in server[1].log else ""
    return str(path)


def test_modification_and_deletion(
    server: tuple[str, ServerProcess, str], client: ClientSide, shm_dir: Path
) -> None:
    old = _put(shm_dir / "old.tif")
    gone = _put(shm_dir / "gone.tif")
    ms = client.server(server[2])
    mid = client.create(ms, shm_dir, types=["Modification", "Deletion"], mode="Follow")
    ms.startMonitor(mid)
    with open(old, "ab") as fh:
        fh.write(b"more")
    Path(gone).unlink()
    want = {(old, "Modify"), (gone, "Delete")}
    assert wait_for(lambda: set(client.received.events()) >= want, DEADLINE), client.received
    assert set(client.received.events()) == want  # upstream may repeat Modify; the kinds match
    ms.destroyMonitor(mid)


def test_flat_mode_ignores_existing_subdirectories(
    server: tuple[str, ServerProcess, str], client: ClientSide, shm_dir: Path
) -> None:
    (shm_dir / "sub").mkdir()
    ms = client.server(server[2])
    mid = client.create(ms, shm_dir, types=["Creation"], mode="Flat")
    ms.startMonitor(mid)
    _put(shm_dir / "sub" / "inner.tif")
    top = _put(shm_dir / "top.tif")
    assert wait_for(lambda: top in client.received.paths(), DEADLINE), client.received
    assert client.received.paths() == [top]
    ms.destroyMonitor(mid)


def test_unknown_ids_raise_omero_fs_error(server: tuple[str, ServerProcess, str], client: ClientSide) -> None:
    ms = client.server(server[2])
    for op in ("startMonitor", "stopMonitor", "destroyMonitor"):
        with pytest.raises(omero.OmeroFSError) as err:
            getattr(ms, op)("no-such-id")
        assert "no-such-id" in err.value.reason


def test_get_monitor_state_is_implemented_only_by_us(
    server: tuple[str, ServerProcess, str], client: ClientSide, shm_dir: Path
) -> None:
    ms = client.server(server[2])
    mid = client.create(ms, shm_dir)
    ms.startMonitor(mid)
    if server[0] == "ng":
        assert ms.getMonitorState(mid) == monitors.MonitorState.Started
    else:  # upstream's method lacks the `current` parameter: any call fails in the server
        with pytest.raises(Ice.UnknownException):
            ms.getMonitorState(mid)
    ms.destroyMonitor(mid)


def test_unreachable_client_upstream_loses_events_we_keep_them(
    server: tuple[str, ServerProcess, str], client: ClientSide, shm_dir: Path
) -> None:
    name, proc, proxy = server
    ms = client.server(proxy)
    mid = client.create(ms, shm_dir, types=["Creation"], mode="Follow")
    ms.startMonitor(mid)
    first = _put(shm_dir / "first.tif")
    assert wait_for(lambda: first in client.received.paths(), DEADLINE)
    client.take_down()
    during = {_put(shm_dir / f"during-{i}.tif") for i in range(5)}
    assert wait_for(lambda: "Callback to monitor id" in proc.log and "failed" in proc.log, DEADLINE), proc.log
    client.bring_up()
    after = _put(shm_dir / "after.tif")
    assert wait_for(lambda: after in client.received.paths(), 40), proc.log[-3000:]
    delivered = during & set(client.received.paths())
    if name == "ng":
        assert delivered == during
    else:
        assert delivered == set(), "upstream was expected to drop events for an unreachable client"
    ms.destroyMonitor(mid)


# --------------------------------------------------------------------------- upstream's DropBox servant


class FakeOmeroServerContext:
    """Stands in for upstream's ServerContext (a root session on an OMERO server, which cannot run
    here): ``lookupExperimenter`` knows only the users given."""

    def __init__(self, users: set[str]) -> None:
        self.users = users
        self.lookups: list[str] = []

    def hasSession(self) -> bool:
        return True

    def newSession(self) -> None:
        return None

    def getSession(self) -> Any:
        return self

    def getAdminService(self) -> Any:
        return self

    def lookupExperimenter(self, name: str) -> object:
        self.lookups.append(name)
        if name not in self.users:
            raise omero.ApiUsageException(message=f"No such experimenter: {name}")
        return object()

    def check(self) -> bool:
        return True

    def cleanup(self) -> None:
        return None


def test_upstream_dropbox_client_receives_events_from_our_monitor_server_fake_omero_server(
    client: ClientSide, shm_dir: Path
) -> None:
    sys.path.insert(0, str(UPSTREAM_DIR))
    try:
        import fsDropBoxMonitorClient  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(UPSTREAM_DIR))
    proc, proxy = start_ng_monitor_server()
    detected: list[list[str]] = []
    lock = threading.Lock()

    def used_files(ids: list[str], readers: str = "") -> dict[str, list[str]]:
        # Stands in for `omero import -f` (a JVM run against the server's jars).
        with lock:
            detected.append(sorted(ids))
        return {i: [i] for i in ids}

    ctx = FakeOmeroServerContext({"amy"})
    servant = fsDropBoxMonitorClient.MonitorClientI(
        str(shm_dir), client.communicator, getUsedFiles=used_files, ctx=ctx, worker_wait=1, worker_batch=100
    )
    servant.setDirImportWait(3600)  # nothing is imported: no OMERO server here
    try:
        client.adapter.add(servant, client.communicator.stringToIdentity("DropBox.default"))
        prx = client.communicator.stringToProxy(f"DropBox.default:tcp -h 127.0.0.1 -p {client.port}")
        ms = client.server(proxy)
        mid = ms.createMonitor(
            monitors.MonitorType.Persistent,
            [monitors.WatchEventType.Creation, monitors.WatchEventType.Modification],
            monitors.PathMode.Follow,
            str(shm_dir),
            [],
            [],
            0.0,
            0,
            True,
            True,
            True,
            monitors.MonitorClientPrx.uncheckedCast(prx),
        )
        servant.setId(mid)
        ms.startMonitor(mid)
        amy = {_put(shm_dir / "amy" / "a.tif"), _put(shm_dir / "amy" / "run" / "b.tif")}
        _put(shm_dir / "bob" / "c.tif")  # bob is unknown to the (fake) server
        assert wait_for(lambda: {f for ids in detected for f in ids} >= amy, DEADLINE), proc.log
        assert {f for ids in detected for f in ids} == amy
        assert "bob" in ctx.lookups and f"Monitor id = {mid} started" in proc.log
        assert servant.state.keys() and set(servant.state.keys()) == amy  # pending, as upstream would import
        ms.destroyMonitor(mid)
    finally:
        servant.stop()
        proc.stop()


def test_our_dropbox_with_upstream_monitor_server(tmp_path: Path, shm_dir: Path) -> None:
    from tests.support.deployment import Deployment

    (shm_dir / "DropBox").mkdir()
    dep = Deployment(tmp_path, shm_dir / "DropBox")
    log_dir = tmp_path / "upstream-log"
    log_dir.mkdir()
    dep.monitor_server, dep.ms_proxy = start_upstream_monitor_server(log_dir)
    try:
        before = _put(dep.drop / "amy" / "before.png")
        db = dep.start_dropbox()
        assert wait_for(lambda: dep.imported_files() == [before], DEADLINE), db.log
        new = _put(dep.drop / "zak" / "new.png")
        assert wait_for(lambda: dep.imported_files() == sorted([before, new]), DEADLINE), db.log
        assert f"::Create::{new}" in db.log  # over Ice, from upstream's MonitorServer
        assert wait_for(lambda: "does not implement getMonitorState" in db.log, DEADLINE)
        assert db.log.count("Created monitor with id") == 1  # no re-registration loop
    finally:
        dep.stop()
