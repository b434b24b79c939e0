"""The ``DropBox`` Ice application: a drop-in for upstream ``fsDropBox.py`` inside IceGrid.

IceGrid starts it as server ``DropBox`` (``docs/icegrid.md``)::

    python -m omero_dropbox.ice.dropbox_service [--state-dir DIR] [--omero-executable PATH]
        [--importer-command 'ARGV TEMPLATE'] [--users NAMES] [--Ice.Config=...] [--PROPERTY=VALUE ...]

What it does, as upstream:

* reads the ``omero.fs.*`` properties (and ``omero.data.dir``) from its Ice properties, which
  IceGrid fills from ``templates.xml`` and ``omero config`` (so ``omero config set`` wins);
* per ``importUsers`` entry registers a ``MonitorClient`` servant ``<clientIdString>.<user>``
  (``DropBox.default``) on adapter ``omero.fs.clientAdapterName`` (``omerofs.DropBox``), asks
  the ``MonitorServer`` (``omero.fs.serverIdString``) to ``createMonitor`` + ``startMonitor``
  for the user's watch dir, and logs ``Started OMERO.fs DropBox client``;
* imports as the user through a session the root session creates (``createSessionWithTimeouts``,
  ``timeToLive``/``timeToIdle``), running ``omero import -- --agent=dropbox <importArgs> <key>``.

What it does better, using the engine (:class:`omero_dropbox.engine.DropBox`): grouping,
the SQLite journal in ``--state-dir`` (so pending imports survive a restart), the fair,
throttled, retried import queue; a start-up scan (files copied while it was down are
imported); sessions closed after each import and keys never logged; and if the
MonitorServer restarts (or loses the monitor) the monitor is created again and the tree
rescanned, where upstream silently received nothing until restarted.

Default state dir: ``var/omero-dropbox-ng`` under the working directory (IceGrid runs
servers in ``OMERO_HOME``, beside ``var/log``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omero_dropbox.ice import load_slice

Ice, omero = load_slice()
monitors = omero.grid.monitors

if TYPE_CHECKING:  # typed stand-ins of the untyped Ice bases: see omero_dropbox.ice
    from omero_dropbox.ice import Application as _Application
    from omero_dropbox.ice import Servant as _MonitorClient
else:
    _Application, _MonitorClient = Ice.Application, monitors.MonitorClient

from omero_dropbox.choices import WatchEventType  # noqa: E402
from omero_dropbox.config import ConfigError, DropBoxConfig, UserMonitorConfig, load_config  # noqa: E402
from omero_dropbox.engine import DropBox, UserDirectory, UserList  # noqa: E402
from omero_dropbox.ice.monitor_server import configure_logging, take_command_line_properties  # noqa: E402
from omero_dropbox.importers import CommandImporter, ImportFunction  # noqa: E402
from omero_dropbox.journal import JournalError, open_private, private_dir  # noqa: E402
from omero_dropbox.ownership import policy_for  # noqa: E402
from omero_dropbox.properties import property_by_name  # noqa: E402
from omero_dropbox.watcher import scan_tree  # noqa: E402

__all__ = ["DropBoxApp", "DropBoxClientI", "RemoteEvent", "main"]

log = logging.getLogger("omero_dropbox.dropbox_service")
event_log = logging.getLogger("fsclient.fsDropBoxMonitorClient")

#: Seconds between checks that the MonitorServer still has our monitors.
SUPERVISE_EVERY = 5.0
_KINDS = {"Create": "created", "Modify": "modified", "Delete": "deleted"}
_WATCH_TYPES: dict[WatchEventType, str] = {
    "creation": "Creation",
    "modification": "Modification",
    "deletion": "Deletion",
}


@dataclass(frozen=True)
class RemoteEvent:
    """An event from the MonitorServer (or the start-up scan), in the engine's shape."""

    path: str
    kind: str  # created | modified | deleted
    is_dir: bool = False
    src_path: str | None = None


# --------------------------------------------------------------------------- scan


# --------------------------------------------------------------------------- servant


class DropBoxClientI(_MonitorClient):
    """``MonitorClient`` servant ``<clientIdString>.<user>``: events go to the engine, nothing blocks."""

    def __init__(self, user_cfg: UserMonitorConfig, engine: DropBox) -> None:
        self.user_cfg = user_cfg
        self.engine = engine
        self.monitor_id: str | None = None
        self.received = 0

    def fsEventHappened(self, id: str, el: Sequence[Any], current: Any = None) -> None:
        if self.monitor_id is None or id != self.monitor_id:
            raise omero.ApiUsageException(
                message=f"Unknown fs server id: {id} (this client's monitor is {self.monitor_id})"
            )
        cookie = time.time()
        event_log.info("EVENT_RECORD::Cookie::%s::Batch::%d", cookie, len(el))
        events = []
        for info in el:
            if not info.fileId:
                raise omero.ApiUsageException(message="Empty fileId in an event from the MonitorServer")
            category = str(info.type)
            event_log.info("EVENT_RECORD::Cookie::%s::%s::%s", cookie, category, info.fileId)
            kind = _KINDS.get(category)
            if kind is not None:
                events.append(RemoteEvent(info.fileId, kind))
        self.received += len(el)
        self.engine.feed(events)


# --------------------------------------------------------------------------- monitors


class MonitorLink:
    """One user's monitor on the MonitorServer: create, start, watch over it, recreate + rescan."""

    def __init__(
        self,
        user_cfg: UserMonitorConfig,
        server: Any,
        client: Any,
        servant: DropBoxClientI,
        config: DropBoxConfig,
    ) -> None:
        self.user_cfg = user_cfg
        self.server = server
        self.client = client
        self.servant = servant
        self.config = config
        self.monitor_id: str | None = None
        self._lost_logged = False
        self._last_error = ""
        self._state_unsupported = False

    def register(self) -> bool:
        u = self.user_cfg
        types = [getattr(monitors.WatchEventType, _WATCH_TYPES[t]) for t in u.event_types] or [
            monitors.WatchEventType.All
        ]
        try:
            monitor_id = self.server.createMonitor(
                monitors.MonitorType.Persistent,
                types,
                getattr(monitors.PathMode, u.path_mode.capitalize()),
                str(u.watch_dir),
                list(u.whitelist),
                list(u.blacklist),
                float(u.timeout),
                int(u.block_size),
                bool(u.ignore_sys_files),
                bool(u.ignore_dir_events),
                bool(self.config.platform_check),
                self.client,
            )
            self.servant.monitor_id = monitor_id
            self.monitor_id = monitor_id
            log.info("Created monitor with id = %s", monitor_id)
            self.server.startMonitor(monitor_id)
        except omero.OmeroFSError as exc:
            if exc.reason != self._last_error:  # retried every few seconds: say it once
                log.error("Failed create or start monitor for user %s: %s", u.import_user, exc.reason)
                self._last_error = exc.reason
            self.unregister()
            return False
        except Ice.LocalException as exc:
            if not self._lost_logged:
                log.warning(
                    "MonitorServer unreachable for user %s (%s); retrying every %g s",
                    u.import_user,
                    type(exc).__name__,
                    SUPERVISE_EVERY,
                )
                self._lost_logged = True
            return False
        self._lost_logged = False
        self._last_error = ""
        log.info("Monitor id = %s started for user %s (%s)", self.monitor_id, u.import_user, u.watch_dir)
        return True

    def healthy(self) -> bool:
        """Is our monitor still known and started by the MonitorServer? Restarts a stopped one."""
        if self.monitor_id is None:
            return False
        if self._state_unsupported:
            return True
        try:
            state = self.server.getMonitorState(self.monitor_id)
        except Ice.UnknownException:
            # Upstream's MonitorServer never implemented getMonitorState; its restarts cannot be seen.
            log.info(
                "This MonitorServer does not implement getMonitorState (upstream's): if it restarts, "
                "restart DropBox too"
            )
            self._state_unsupported = True
            return True
        except omero.OmeroFSError:
            log.warning(
                "MonitorServer no longer knows monitor id = %s (it restarted?); creating a new one",
                self.monitor_id,
            )
            return False
        except Ice.LocalException as exc:
            if not self._lost_logged:
                log.warning(
                    "MonitorServer unreachable (%s); will re-register when it is back", type(exc).__name__
                )
                self._lost_logged = True
            self.monitor_id = None
            return False
        if state != monitors.MonitorState.Started:
            try:
                self.server.startMonitor(self.monitor_id)
            except (omero.OmeroFSError, Ice.LocalException) as exc:
                log.warning(
                    "Could not restart monitor id = %s (%s); creating a new one", self.monitor_id, exc
                )
                self.unregister()
                return False
        return True

    def unregister(self) -> None:
        if self.monitor_id is None:
            return
        for op in (self.server.stopMonitor, self.server.destroyMonitor):
            try:
                op(self.monitor_id)
            except (omero.OmeroFSError, Ice.LocalException) as exc:
                log.info("Could not %s monitor id = %s: %s", op.__name__, self.monitor_id, type(exc).__name__)
                break
        self.monitor_id = None


# --------------------------------------------------------------------------- application


def _parse_args(args: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m omero_dropbox.ice.dropbox_service")
    parser.add_argument("--state-dir", type=Path, default=Path("var") / "omero-dropbox-ng")
    parser.add_argument("--omero-executable", help="the omero CLI (default: on PATH or beside python)")
    parser.add_argument(
        "--importer-command", help="import with this argv template instead of omero (see omero-dropbox run)"
    )
    parser.add_argument("--users", help="comma list of the users that exist (default: ask OMERO)")
    return parser.parse_args(list(args))


def config_from_properties(props: Any) -> DropBoxConfig:
    """The configuration from Ice properties (IceGrid: templates.xml + ``omero config``)."""
    overrides = []
    for prefix in ("omero.fs.", "omero.data.dir"):
        for name, value in sorted(props.getPropertiesForPrefix(prefix).items()):
            if property_by_name(name) is not None:
                overrides.append(f"{name}={value}")
            elif name.startswith("omero.fs.") and not name.startswith("omero.fs.ng.monitorBuffer"):
                log.warning("Unknown property %s ignored", name)
    return load_config(overrides=overrides)


def _save_monitor_ids(state_dir: Path, ids: list[str]) -> None:
    path = state_dir / "monitors.json"
    tmp = path.with_suffix(".tmp")
    with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as fh:
        fh.write(json.dumps(ids))
    os.replace(tmp, path)


def _old_monitor_ids(state_dir: Path) -> list[str]:
    try:
        return [str(i) for i in json.loads((state_dir / "monitors.json").read_text())]
    except (OSError, ValueError, TypeError):
        return []


class DropBoxApp(_Application):
    """``python -m omero_dropbox.ice.dropbox_service``: the DropBox server."""

    def run(self, args: list[str]) -> int:
        communicator = self.communicator()
        props = communicator.getProperties()
        rest = take_command_line_properties(props, args[1:])
        configure_logging(props, "DropBox")
        self.shutdownOnInterrupt()
        try:
            opts = _parse_args(rest)
            config = config_from_properties(props)
            take_command_line_properties(props, rest, config.client_adapter_name.split(".")[0])
        except ConfigError as exc:
            log.error("Failed get properties from templates.xml: %s", exc)
            log.error("Quitting")
            return 1
        log.info("Monitor parameters = %s", [u.import_user for u in config.users])
        try:
            private_dir(opts.state_dir)
        except OSError as exc:
            log.error("Cannot create the state directory %s (--state-dir): %s", opts.state_dir, exc)
            return 1
        sessions = None
        users: UserDirectory | None = UserList(opts.users.split(",")) if opts.users else None
        if opts.importer_command:
            importer: ImportFunction = CommandImporter(opts.importer_command, config.import_timeout or None)
        else:
            from omero_dropbox.ice.sessions import UserSessions, internal_root_factory, omero_importer_for

            first = config.users[0]
            sessions = UserSessions(
                internal_root_factory(communicator, config.max_retries, config.retry_interval),
                time_to_live_ms=first.time_to_live_ms,
                time_to_idle_ms=first.time_to_idle_ms,
            )
            users = users or sessions
            importer = omero_importer_for(
                config, sessions, omero=opts.omero_executable, session_root=opts.state_dir / "omero-sessions"
            )
        log.info("Importer: %r; journal: %s", importer, opts.state_dir)
        try:
            engine = DropBox(config, importer, state_dir=opts.state_dir, users=users, watch=False)
        except (JournalError, OSError) as exc:
            log.error("Cannot open the journal in %s (--state-dir): %s", opts.state_dir, exc)
            return 1

        server = communicator.stringToProxy(config.server_id_string)
        server = monitors.MonitorServerPrx.uncheckedCast(server.ice_twoway())
        adapter = communicator.createObjectAdapter(config.client_adapter_name)
        links = []
        for user_cfg in config.users:
            if user_cfg.is_default and not user_cfg.watch_dir.exists():
                user_cfg.watch_dir.mkdir(parents=True, exist_ok=True)
                log.info("Created DropBox directory %s", user_cfg.watch_dir)
            log.info("Creating client for user: %s", user_cfg.import_user)
            servant = DropBoxClientI(user_cfg, engine)
            identity = communicator.stringToIdentity(f"{config.client_id_string}.{user_cfg.import_user}")
            client = monitors.MonitorClientPrx.uncheckedCast(adapter.add(servant, identity))
            links.append(MonitorLink(user_cfg, server, client, servant, config))
        adapter.activate()

        # Monitors a previous run of this service left behind would only deliver to a stale id.
        for old in _old_monitor_ids(opts.state_dir):
            try:
                server.destroyMonitor(old)
                log.info("Destroyed monitor id = %s left by the previous run", old)
            except (omero.OmeroFSError, Ice.LocalException):
                pass

        stop = threading.Event()
        supervisor = Supervisor(links, engine, opts.state_dir)
        supervisor.check(first=True)  # as upstream: monitors exist before "Started ..." is logged
        engine.start()
        supervisor_thread = threading.Thread(
            target=supervisor.run, args=(stop,), name="monitors", daemon=True
        )
        supervisor_thread.start()
        runner = threading.Thread(target=self._run_engine, args=(engine, stop), name="engine", daemon=True)
        runner.start()
        communicator.waitForShutdown()
        log.info("Stopping OMERO.fs DropBox client")
        stop.set()
        supervisor_thread.join(timeout=10)
        for link in links:
            link.unregister()
        runner.join()
        if sessions is not None:
            sessions.close()
        log.info("Exiting with exit code: 0")
        return 0

    @staticmethod
    def _run_engine(engine: DropBox, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                engine.step(timeout=0.25)
        finally:
            engine.shutdown()


class Supervisor:
    """Keeps every user's monitor registered; scans the tree whenever a monitor is (re)created.

    A file modified in the last ``settle`` seconds may still be being written: it is handed to
    the engine only once its size and mtime held still for ``settle`` seconds (if it is being
    written, the monitor's own ``Create`` on close comes too; the engine ignores the repeat).
    """

    def __init__(self, links: list[MonitorLink], engine: DropBox, state_dir: Path) -> None:
        self.links = links
        self.engine = engine
        self.state_dir = state_dir
        self.settle = max(engine.config.settle, 1.0)
        self._unsettled: dict[str, tuple[UserMonitorConfig, int, float, float]] = {}

    def run(self, stop: threading.Event) -> None:
        next_check = time.monotonic() + SUPERVISE_EVERY
        while not stop.is_set():
            if time.monotonic() >= next_check:
                self.check(first=False)
                next_check = time.monotonic() + SUPERVISE_EVERY
            self.release_settled()
            stop.wait(1.0)

    def check(self, first: bool) -> None:
        changed = False
        for link in self.links:
            if link.healthy() or not link.register():
                continue
            changed = True
            count = self.scan(link.user_cfg)
            log.info(
                "%s scan of %s: %d file(s) found",
                "Start-up" if first else "Re-registration",
                link.user_cfg.watch_dir,
                count,
            )
        if changed:
            _save_monitor_ids(self.state_dir, [link.monitor_id for link in self.links if link.monitor_id])

    def scan(self, user_cfg: UserMonitorConfig) -> int:
        count = 0
        batch: list[RemoteEvent] = []
        now = time.time()
        for path in scan_tree(policy_for(user_cfg)):
            try:
                st = os.stat(path)
            except OSError:
                continue
            count += 1
            if now - st.st_mtime < self.settle:
                self._unsettled[path] = (user_cfg, st.st_size, st.st_mtime, time.monotonic())
                continue
            batch.append(RemoteEvent(path, "created"))
            if len(batch) >= 1000:
                self.engine.feed(batch)
                batch = []
        self.engine.feed(batch)
        return count

    def release_settled(self) -> None:
        now = time.monotonic()
        for path, (user_cfg, size, mtime, since) in list(self._unsettled.items()):
            if now - since < self.settle:
                continue
            try:
                st = os.stat(path)
            except OSError:
                del self._unsettled[path]
                continue
            if (st.st_size, st.st_mtime) == (size, mtime):
                del self._unsettled[path]
                self.engine.feed([RemoteEvent(path, "created")])
            else:
                self._unsettled[path] = (user_cfg, st.st_size, st.st_mtime, now)


def main(argv: Sequence[str] | None = None) -> int:
    # This service logs in with IceGrid's internal root; an admin password in the environment is
    # never needed, and no importer it starts may inherit one.
    os.environ.pop("OMERO_DROPBOX_ADMIN_PASSWORD", None)
    args = list(sys.argv if argv is None else argv)
    return int(DropBoxApp().main(args))


if __name__ == "__main__":
    sys.exit(main())
