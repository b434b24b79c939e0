"""Helpers for the tests that use real Ice: servers as subprocesses, MonitorClient servants in-process.

Ice is required: in CI it is installed, and a missing Ice must fail loudly. Only with
``OMERO_DROPBOX_ALLOW_NO_ICE=1`` do these tests skip (with that reason).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_VERSION = "5.7.0"
#: Where ``pip install --no-deps --target`` put upstream omero-dropbox (GPL; run, never copied).
UPSTREAM_DIR = Path(
    os.environ.get(
        "OMERO_DROPBOX_UPSTREAM_DIR",
        Path.home() / ".cache" / "omero-dropbox-ng" / f"upstream-omero-dropbox-{UPSTREAM_VERSION}",
    )
)


def require_ice() -> tuple[ModuleType, ModuleType]:
    """``(Ice, omero)`` with the FS Slice loaded; fails (or skips with OMERO_DROPBOX_ALLOW_NO_ICE=1)."""
    try:
        from omero_dropbox.ice import load_slice

        return load_slice()
    except ImportError as exc:
        if os.environ.get("OMERO_DROPBOX_ALLOW_NO_ICE") == "1":
            pytest.skip(
                f"Ice/omero-py not installed and OMERO_DROPBOX_ALLOW_NO_ICE=1: {exc}", allow_module_level=True
            )
        raise


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python_env(extra_path: Sequence[str] = ()) -> dict[str, str]:
    env = dict(os.environ)
    paths = [*extra_path, str(REPO / "python"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServerProcess:
    """A server subprocess whose stderr (its log) is collected line by line."""

    def __init__(
        self, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            text=True,
            errors="backslashreplace",
        )
        self.lines: list[str] = []
        self.log_file: Path | None = None  # where a server logs instead of stderr (upstream)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        text = "\n".join(self.lines)
        if self.log_file is not None and self.log_file.exists():
            text += "\n" + self.log_file.read_text(errors="backslashreplace")
        return text

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        rx = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            for line in list(self.lines):
                m = rx.search(line)
                if m:
                    found.append(m)
                    return True
            return False

        if not wait_for(lambda: seen() or self.proc.poll() is not None, timeout) or not found:
            time.sleep(0.2)  # let the reader catch the last lines of a process that exited
            if not seen():
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout} s (exit={self.proc.poll()}):\n{self.log}"
                )
        return found[0]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode


def start_ng_monitor_server(*extra: str, port: int = 0) -> tuple[ServerProcess, str]:
    """Our MonitorServer on loopback tcp; returns the process and its proxy string."""
    server = ServerProcess(
        [
            sys.executable,
            "-m",
            "omero_dropbox.ice.monitor_server",
            "--Ice.Default.Host=127.0.0.1",
            f"--omerofs.MonitorServer.Endpoints=tcp -h 127.0.0.1 -p {port}",
            "--Ice.ThreadPool.Server.SizeMax=10",
            "--Ice.MessageSizeMax=65536",  # as OMERO's Basics properties
            *extra,
        ],
        env=python_env(),
    )
    m = server.wait_for_line(r"Started OMERO\.fs MonitorServer \((.*), pid \d+\)")
    return server, m.group(1)


def start_upstream_monitor_server(log_dir: Path) -> tuple[ServerProcess, str]:
    """Upstream's own fsServerMS.py (omero-dropbox 5.7.0 from PyPI) as an Ice application."""
    script = UPSTREAM_DIR / "fsServerMS.py"
    if not script.exists():
        raise AssertionError(
            f"upstream omero-dropbox {UPSTREAM_VERSION} is not installed in {UPSTREAM_DIR}: run "
            f"pip install --no-deps --target {UPSTREAM_DIR} omero-dropbox=={UPSTREAM_VERSION} "
            "(or set OMERO_DROPBOX_UPSTREAM_DIR)"
        )
    port = free_port()
    # Upstream reads its properties from a config file only (as IceGrid gives it one).
    config = log_dir / "MonitorServer.cfg"
    config.write_text(
        "\n".join(
            [
                "Ice.Default.Host=127.0.0.1",
                "Ice.Admin.ServerId=MonitorServer",
                f"omero.logging.directory={log_dir}",
                "omero.fs.monitorServerIdString=MonitorServer",
                "omero.fs.monitorServerAdapterName=omerofs.MonitorServer",
                f"omerofs.MonitorServer.Endpoints=tcp -h 127.0.0.1 -p {port}",
                "Ice.ThreadPool.Server.SizeMax=10",
                "Ice.MessageSizeMax=65536",
            ]
        )
        + "\n"
    )
    server = ServerProcess(
        [sys.executable, str(script), f"--Ice.Config={config}"],
        env=python_env([str(UPSTREAM_DIR)]),
        cwd=log_dir,
    )
    log_file = server.log_file = log_dir / "MonitorServer.log"
    ok = wait_for(lambda: log_file.exists() and "Started OMERO.fs MonitorServer" in log_file.read_text(), 60)
    if not ok:
        server.stop()
        text = log_file.read_text() if log_file.exists() else ""
        raise AssertionError(f"upstream MonitorServer did not start:\n{server.log}\n{text}")
    return server, f"MonitorServer:tcp -h 127.0.0.1 -p {port}"


# --------------------------------------------------------------------------- client side


@dataclass
class Received:
    """What a MonitorClient servant got: one entry per fsEventHappened call."""

    calls: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)

    def events(self, monitor_id: str | None = None) -> list[tuple[str, str]]:
        return [e for mid, evs in list(self.calls) for e in evs if monitor_id is None or mid == monitor_id]

    def paths(self, kind: str | None = None) -> list[str]:
        return [p for p, k in self.events() if kind is None or k == kind]


def make_client_class(Ice: ModuleType, omero: ModuleType) -> type:
    monitors = omero.grid.monitors

    class RecordingClient(monitors.MonitorClient):  # type: ignore[misc, name-defined]
        """Records every call; ``refuse`` makes it answer with ApiUsageException instead."""

        def __init__(self) -> None:
            self.received = Received()
            self.refuse = False

        def fsEventHappened(self, id: str, el: Any, current: Any = None) -> None:
            if self.refuse:
                raise omero.ApiUsageException(message="refusing on purpose")
            self.received.calls.append((id, [(e.fileId, str(e.type)) for e in el]))

    return RecordingClient


class ClientSide:
    """A communicator in the test process with a MonitorClient servant on loopback tcp."""

    def __init__(self, Ice: ModuleType, omero: ModuleType) -> None:
        self.Ice = Ice
        self.omero = omero
        self.monitors = omero.grid.monitors
        data = Ice.InitializationData()
        data.properties = Ice.createProperties()
        data.properties.setProperty("Ice.Default.Host", "127.0.0.1")
        data.properties.setProperty("Ice.ThreadPool.Server.SizeMax", "4")
        data.properties.setProperty("Ice.MessageSizeMax", "65536")
        self.communicator = Ice.initialize(data)
        self.servant = make_client_class(Ice, omero)()
        self.port = free_port()
        self.adapter: Any = None
        self.bring_up()

    @property
    def received(self) -> Received:
        return self.servant.received  # type: ignore[no-any-return]

    def bring_up(self) -> None:
        self.adapter = self.communicator.createObjectAdapterWithEndpoints(
            f"client-{time.monotonic_ns()}", f"tcp -h 127.0.0.1 -p {self.port}"
        )
        self.adapter.add(self.servant, self.communicator.stringToIdentity("DropBox.test"))
        self.adapter.activate()

    def take_down(self) -> None:
        self.adapter.destroy()
        self.adapter = None

    @property
    def proxy(self) -> Any:
        prx = self.communicator.stringToProxy(f"DropBox.test:tcp -h 127.0.0.1 -p {self.port}")
        return self.monitors.MonitorClientPrx.uncheckedCast(prx)

    def server(self, proxy_string: str) -> Any:
        prx = self.communicator.stringToProxy(proxy_string)
        return self.monitors.MonitorServerPrx.checkedCast(prx)

    def create(
        self,
        server: Any,
        path: Path | str,
        *,
        types: Sequence[str] = ("Creation",),
        mode: str = "Follow",
        whitelist: Sequence[str] = (),
        blacklist: Sequence[str] = (),
        block_size: int = 0,
        ignore_sys_files: bool = True,
        ignore_dir_events: bool = True,
        mtype: str = "Persistent",
    ) -> str:
        m = self.monitors
        return str(
            server.createMonitor(
                getattr(m.MonitorType, mtype),
                [getattr(m.WatchEventType, t) for t in types],
                getattr(m.PathMode, mode),
                str(path),
                list(whitelist),
                list(blacklist),
                0.0,
                block_size,
                ignore_sys_files,
                ignore_dir_events,
                True,
                self.proxy,
            )
        )

    def close(self) -> None:
        self.communicator.destroy()
