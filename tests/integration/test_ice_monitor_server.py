"""Our MonitorServer over real Ice (loopback tcp): a real server process, a real MonitorClient servant.

Ordering proofs instead of sleeps: to show an event is *not* sent, the test first does the
thing that must stay silent, then writes a sentinel that must be reported; the native watcher
reports in order, so once the sentinel arrived the silent one would have too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ice import ClientSide, ServerProcess, python_env, require_ice, start_ng_monitor_server
from tests.support.waiting import wait_for

Ice, omero = require_ice()
monitors = omero.grid.monitors

DEADLINE = 20.0


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ServerProcess, str]]:
    proc, proxy = start_ng_monitor_server()
    yield proc, proxy
    assert proc.stop() == 0, proc.log
    assert "Stopping OMERO.fs MonitorServer" in proc.log


@pytest.fixture
def client() -> Iterator[ClientSide]:
    side = ClientSide(Ice, omero)
    yield side
    side.close()


@pytest.fixture
def ms(server: tuple[ServerProcess, str], client: ClientSide) -> object:
    return client.server(server[1])


def write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_create_start_receive_stop_destroy(
    ms: object, client: ClientSide, server: tuple[ServerProcess, str], shm_dir: Path
) -> None:
    mid = client.create(ms, shm_dir)
    assert ms.getMonitorState(mid) == monitors.MonitorState.Stopped  # type: ignore[attr-defined]
    ms.startMonitor(mid)  # type: ignore[attr-defined]
    assert ms.getMonitorState(mid) == monitors.MonitorState.Started  # type: ignore[attr-defined]
    files = {str(write(shm_dir / f"f{i}.tif")) for i in range(3)}
    assert wait_for(lambda: set(client.received.paths("Create")) >= files, DEADLINE), client.received
    assert all(mid == call[0] for call in client.received.calls)
    assert sorted(client.received.paths()) == sorted(files)  # each once, nothing else

    ms.stopMonitor(mid)  # type: ignore[attr-defined]
    assert ms.getMonitorState(mid) == monitors.MonitorState.Stopped  # type: ignore[attr-defined]
    ms.stopMonitor(mid)  # type: ignore[attr-defined]  # idempotent
    unseen = str(write(shm_dir / "while-stopped.tif"))
    ms.startMonitor(mid)  # type: ignore[attr-defined]
    sentinel = str(write(shm_dir / "after-restart.tif"))
    assert wait_for(lambda: sentinel in client.received.paths(), DEADLINE)
    assert unseen not in client.received.paths()

    ms.destroyMonitor(mid)  # type: ignore[attr-defined]
    with pytest.raises(omero.OmeroFSError) as err:
        ms.getMonitorState(mid)  # type: ignore[attr-defined]
    assert mid in err.value.reason and "createMonitor again" in err.value.reason
    log = server[0].log
    for word in ("created. Proxy:", "started", "stopped", "destroyed"):
        assert f"Monitor id = {mid} {word}" in log


def test_batches_respect_block_size(ms: object, client: ClientSide, shm_dir: Path) -> None:
    mid = client.create(ms, shm_dir, block_size=3)
    ms.startMonitor(mid)  # type: ignore[attr-defined]
    files = {str(write(shm_dir / f"b{i:02}.tif")) for i in range(20)}
    assert wait_for(lambda: set(client.received.paths()) >= files, DEADLINE)
    sizes = [len(evs) for _, evs in client.received.calls]
    assert max(sizes) <= 3 and sum(sizes) == 20
    assert len(sizes) >= 7
    ms.destroyMonitor(mid)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("types", "expect"),
    [
        (["Creation"], {"new": "Create", "s-new": "Create"}),
        (["Modification"], {"old": "Modify", "s-old": "Modify"}),
        (["Deletion"], {"gone": "Delete", "s-gone": "Delete"}),
        (["All"], {"new": "Create", "old": "Modify", "gone": "Delete", "s-new": "Create"}),
    ],
)
def test_every_watch_event_type(
    ms: object, client: ClientSide, shm_dir: Path, types: list[str], expect: dict[str, str]
) -> None:
    for name in ("old", "gone", "s-old", "s-gone"):
        write(shm_dir / f"{name}.tif")
    mid = client.create(ms, shm_dir, types=types)
    ms.startMonitor(mid)  # type: ignore[attr-defined]

    def modify(name: str) -> None:
        with open(shm_dir / f"{name}.tif", "ab") as fh:
            fh.write(b"more")

    write(shm_dir / "new.tif")
    modify("old")
    (shm_dir / "gone.tif").unlink()
    # Last, the type's own event: once it arrived, the silent ones above would have too.
    if types[0] == "Modification":
        modify("s-old")
    elif types[0] == "Deletion":
        (shm_dir / "s-gone.tif").unlink()
    else:
        write(shm_dir / "s-new.tif")
    want = {(str(shm_dir / f"{name}.tif"), kind) for name, kind in expect.items()}
    assert wait_for(lambda: set(client.received.events()) >= want, DEADLINE), client.received
    assert set(client.received.events()) == want
    ms.destroyMonitor(mid)  # type: ignore[attr-defined]


def test_rename_is_delete_plus_create(ms: object, client: ClientSide, shm_dir: Path) -> None:
    a = write(shm_dir / "a.tif")
    mid = client.create(ms, shm_dir, types=["Creation", "Deletion"])
    ms.startMonitor(mid)  # type: ignore[attr-defined]
    a.rename(shm_dir / "b.tif")
    want = {(str(a), "Delete"), (str(shm_dir / "b.tif"), "Create")}
    assert wait_for(lambda: set(client.received.events()) >= want, DEADLINE), client.received
    ms.destroyMonitor(mid)  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["Flat", "Recurse", "Follow"])
def test_every_path_mode(ms: object, client: ClientSide, shm_dir: Path, mode: str) -> None:
    (shm_dir / "existing").mkdir()
    mid = client.create(ms, shm_dir, mode=mode)
    ms.startMonitor(mid)  # type: ignore[attr-defined]
    in_new = write(shm_dir / "new" / "deep" / "n.tif")
    in_existing = write(shm_dir / "existing" / "e.tif")
    sentinel = write(shm_dir / "top.tif")
    want = {
        "Flat": {str(sentinel)},
        "Recurse": {str(in_existing), str(sentinel)},
        "Follow": {str(in_new), str(in_existing), str(sentinel)},
    }[mode]
    assert wait_for(lambda: set(client.received.paths()) >= want, DEADLINE), client.received
    if mode == "Recurse":  # the sentinel for "nothing from new dirs" is the existing dir's file
        assert wait_for(lambda: str(in_existing) in client.received.paths(), DEADLINE)
    assert set(client.received.paths()) == want
    ms.destroyMonitor(mid)  # type: ignore[attr-defined]


def test_filters_and_directory_events(ms: object, client: ClientSide, shm_dir: Path) -> None:
    mid = client.create(
        ms,
        shm_dir,
        whitelist=[".tif", ".ome.tiff"],
        blacklist=["skip"],
        ignore_sys_files=True,
        ignore_dir_events=False,
    )
    ms.startMonitor(mid)  # type: ignore[attr-defined]
    (shm_dir / "skip").mkdir()
    write(shm_dir / "skip" / "no.tif")
    write(shm_dir / "notes.txt")
    write(shm_dir / ".hidden.tif")
    write(shm_dir / "copy.tif.part")
    d = shm_dir / "plate"
    d.mkdir()
    ok = {str(write(d / "yes.ome.tiff")), str(write(shm_dir / "yes.tif"))}
    assert wait_for(lambda: set(client.received.paths()) >= ok | {str(d)}, DEADLINE), client.received
    assert set(client.received.paths()) == ok | {str(d)}
    ms.destroyMonitor(mid)  # type: ignore[attr-defined]


def test_name_that_is_not_utf8_is_logged_not_sent(
    ms: object, client: ClientSide, server: tuple[ServerProcess, str], shm_dir: Path
) -> None:
    mid = client.create(ms, shm_dir)
    ms.startMonitor(mid)  # type: ignore[attr-defined]
    with open(os.path.join(os.fsencode(shm_dir), b"bad-\xff.tif"), "wb") as fh:
        fh.write(b"x")
    sentinel = str(write(shm_dir / "good.tif"))
    assert wait_for(lambda: sentinel in client.received.paths(), DEADLINE)
    assert client.received.paths() == [sentinel]
    assert wait_for(lambda: "bad-\\xff.tif is not valid UTF-8" in server[0].log, DEADLINE)
    ms.destroyMonitor(mid)  # type: ignore[attr-defined]


def test_errors_are_omero_fs_errors_a_person_can_act_on(
    ms: object, client: ClientSide, shm_dir: Path
) -> None:
    for op in ("startMonitor", "stopMonitor", "destroyMonitor", "getMonitorState"):
        with pytest.raises(omero.OmeroFSError) as err:
            getattr(ms, op)("no-such-id")
        assert "no monitor with id 'no-such-id'" in err.value.reason
    cases = {
        str(shm_dir / "missing"): "does not exist",
        "relative/dir": "is not absolute",
        "": "pathString is empty",
        str(write(shm_dir / "file.tif")): "is not a directory",
    }
    for path, words in cases.items():
        with pytest.raises(omero.OmeroFSError) as err:
            client.create(ms, path)
        assert words in err.value.reason and (path in err.value.reason or not path)
    with pytest.raises(omero.OmeroFSError, match="OneShot is not supported"):
        client.create(ms, shm_dir, mtype="OneShot")
    with pytest.raises(omero.OmeroFSError, match="eTypes is empty"):
        client.create(ms, shm_dir, types=[])
    with pytest.raises(omero.OmeroFSError, match="blockSize=-1"):
        client.create(ms, shm_dir, block_size=-1)
    with pytest.raises(omero.OmeroFSError, match="proxy is null"):
        ms.createMonitor(  # type: ignore[attr-defined]
            monitors.MonitorType.Persistent,
            [monitors.WatchEventType.All],
            monitors.PathMode.Follow,
            str(shm_dir),
            [],
            [],
            0.0,
            0,
            True,
            True,
            True,
            None,
        )


def test_client_that_disappears_gets_the_buffered_events_when_back(
    ms: object, client: ClientSide, server: tuple[ServerProcess, str], shm_dir: Path
) -> None:
    mid = client.create(ms, shm_dir, block_size=50)
    ms.startMonitor(mid)  # type: ignore[attr-defined]
    first = str(write(shm_dir / "before.tif"))
    assert wait_for(lambda: first in client.received.paths(), DEADLINE)
    client.take_down()
    during = {str(write(shm_dir / "away" / f"w{i:03}.tif")) for i in range(120)}
    assert wait_for(lambda: f"Callback to monitor id = {mid} failed" in server[0].log, DEADLINE)
    client.bring_up()
    assert wait_for(lambda: set(client.received.paths()) >= during, 40), (
        len(set(client.received.paths()) & during),
        server[0].log[-2000:],
    )
    assert sorted(client.received.paths()) == sorted({first} | during)  # each once
    assert wait_for(lambda: f"Callback to monitor id = {mid} works again" in server[0].log, DEADLINE)
    ms.destroyMonitor(mid)  # type: ignore[attr-defined]


def test_buffer_is_bounded_and_says_so(client: ClientSide, shm_dir: Path) -> None:
    proc, proxy = start_ng_monitor_server("--omero.fs.ng.monitorBufferLimit=5")
    try:
        ms = client.server(proxy)
        mid = client.create(ms, shm_dir)
        ms.startMonitor(mid)
        client.take_down()
        files = [str(write(shm_dir / f"x{i:02}.tif")) for i in range(12)]
        assert wait_for(lambda: f"Event buffer of monitor id = {mid} is full (5 events" in proc.log, DEADLINE)
        client.bring_up()
        assert wait_for(lambda: "works again" in proc.log, 40), proc.log
        got = client.received.paths()
        assert len(got) == 5 and set(got) <= set(files)
        assert "(7 dropped at the buffer bound)" in proc.log
    finally:
        assert proc.stop() == 0


def test_refused_events_are_dropped_and_later_ones_delivered(
    ms: object, client: ClientSide, server: tuple[ServerProcess, str], shm_dir: Path
) -> None:
    mid = client.create(ms, shm_dir)
    ms.startMonitor(mid)  # type: ignore[attr-defined]
    client.servant.refuse = True
    write(shm_dir / "refused.tif")
    assert wait_for(lambda: f"Callback to monitor id = {mid} refused 1 event(s)" in server[0].log, DEADLINE)
    client.servant.refuse = False
    later = str(write(shm_dir / "later.tif"))
    assert wait_for(lambda: later in client.received.paths(), DEADLINE)
    assert client.received.paths() == [later]
    ms.destroyMonitor(mid)  # type: ignore[attr-defined]


def test_server_without_endpoints_says_which_property(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "omero_dropbox.ice.monitor_server"],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 1
    assert "omerofs.MonitorServer.Endpoints" in r.stderr


def test_core_import_does_not_load_ice() -> None:
    code = (
        "import sys, omero_dropbox, omero_dropbox.engine, omero_dropbox.cli, omero_dropbox.importers; "
        "print('Ice' in sys.modules or 'IcePy' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], env=python_env(), capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr


def test_poll_backend_for_network_shares(client: ClientSide, shm_dir: Path) -> None:
    proc, proxy = start_ng_monitor_server(
        "--omero.fs.ng.backend=poll", "--omero.fs.ng.pollInterval=0.2", "--omero.fs.ng.settle=0.3"
    )
    try:
        assert "watch backend poll" in proc.log
        ms = client.server(proxy)
        mid = client.create(ms, shm_dir)
        ms.startMonitor(mid)
        f = str(write(shm_dir / "sub" / "polled.tif"))
        assert wait_for(lambda: f in client.received.paths(), DEADLINE), proc.log
    finally:
        assert proc.stop() == 0


def test_bad_backend_property_names_it(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "omero_dropbox.ice.monitor_server",
            "--omerofs.MonitorServer.Endpoints=tcp -h 127.0.0.1",
            "--omero.fs.ng.backend=carrier-pigeon",
        ],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 1
    assert "omero.fs.ng.backend" in r.stderr and "carrier-pigeon" in r.stderr
