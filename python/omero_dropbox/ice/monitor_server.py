"""A drop-in ``::omero::grid::monitors::MonitorServer`` backed by the native watcher.

IceGrid starts it as server ``MonitorServer`` (``docs/icegrid.md``)::

    python -m omero_dropbox.ice.monitor_server [--Ice.Config=...] [--PROPERTY=VALUE ...]

It serves identity ``omero.fs.monitorServerIdString`` (``MonitorServer``) on adapter
``omero.fs.monitorServerAdapterName`` (``omerofs.MonitorServer``), like upstream's
``fsServerMS.py``, and implements every operation of the Slice interface, including
``getMonitorState``, which upstream never implemented.

Mapping of ``createMonitor`` arguments to :class:`omero_dropbox.Watcher`:

* ``eTypes``: ``Creation``, ``Modification``, ``Deletion``, ``All`` -> ``event_types``;
* ``pMode``: ``Flat``, ``Recurse``, ``Follow`` -> ``mode`` (as upstream's Linux monitor:
  ``Recurse`` watches the sub-directories that exist at start, ``Follow`` also new ones);
* ``whitelist`` (suffixes), ``blacklist`` (sub-trees), ``ignoreSysFiles`` and
  ``ignoreDirEvents`` are honoured (upstream's Linux monitor ignored the first three);
* ``blockSize``: at most this many *events* per ``fsEventHappened`` call, as the Slice
  documents (upstream counted internal batches). ``0`` means no limit asked for; calls are
  still split at :data:`MAX_EVENTS_PER_CALL` events / :data:`MAX_BYTES_PER_CALL` bytes so
  that a mass copy never exceeds ``Ice.MessageSizeMax``;
* ``timeout`` and ``platformCheck`` are accepted and unused (upstream: the same for
  ``Persistent`` monitors on Linux); ``mType`` must be ``Persistent``, the only type DropBox uses.

Events, as upstream's Linux monitor sends them: a file is ``Create`` once it is complete
(closed after writing, or moved in); ``Modify`` when an existing file is rewritten;
``Delete`` when it is deleted or moved out; a rename inside the tree is ``Delete`` of the
old path (with ``Deletion``) plus ``Create`` of the new one (with ``Creation``).
Directory events only with ``ignoreDirEvents=False``. A name that is not valid UTF-8
cannot travel in a Slice string: it is logged and left out.

Delivery: ``fsEventHappened`` is called two-way, in order, from one thread per monitor.
When the client is unreachable the events are *kept* and sent when it is back (upstream
dropped them), retrying with back-off up to :data:`RETRY_MAX` seconds. The buffer holds at
most ``omero.fs.ng.monitorBufferLimit`` events (default :data:`DEFAULT_BUFFER_LIMIT`); at
the bound the oldest are dropped and a WARNING says how many. A client that *answers* with
an exception (``omero.ServerError``, an unknown exception) refused those events: they are
logged and dropped, since sending them again cannot help.

Errors are ``omero.OmeroFSError`` whose ``reason`` names the problem and the fix.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from omero_dropbox.choices import WATCH_EVENT_TYPES, Backend, PathMode, WatchEventType
from omero_dropbox.ice import load_slice
from omero_dropbox.logging_setup import stderr_handler
from omero_dropbox.text import escape_log_handlers

Ice, omero = load_slice()
monitors = omero.grid.monitors

if TYPE_CHECKING:  # typed stand-ins of the untyped Ice bases: see omero_dropbox.ice
    from omero_dropbox.ice import Application as _Application
    from omero_dropbox.ice import Servant as _MonitorServer
    from omero_dropbox.watcher import Event, Watcher
else:
    _Application, _MonitorServer = Ice.Application, monitors.MonitorServer

__all__ = ["DEFAULT_BUFFER_LIMIT", "MonitorServerApp", "MonitorServerI", "main"]

log = logging.getLogger("omero_dropbox.monitor_server")

DEFAULT_BUFFER_LIMIT = 200_000
MAX_EVENTS_PER_CALL = 1000
MAX_BYTES_PER_CALL = 512 * 1024
RETRY_INITIAL = 0.5
RETRY_MAX = 10.0
_POLL = 0.5

_EVENT_TYPES: dict[str, tuple[WatchEventType, ...]] = {
    "Creation": ("creation",),
    "Modification": ("modification",),
    "Deletion": ("deletion",),
    "All": WATCH_EVENT_TYPES,
}
_PATH_MODES: dict[str, PathMode] = {"Flat": "flat", "Recurse": "recurse", "Follow": "follow"}


class WatcherOptions(TypedDict, total=False):
    """The watcher settings every monitor shares (``omero.fs.ng.backend``, ``pollInterval``, ``settle``);
    one left out keeps the watcher's default."""

    backend: Backend
    poll_interval: float
    settle: float


def _fs_error(reason: str) -> Exception:
    err: Exception = omero.OmeroFSError(reason=reason)
    return err


def _enum_name(value: object) -> str:
    return str(getattr(value, "_name", value))


@dataclass(frozen=True)
class MonitorParams:
    """The validated arguments of one ``createMonitor`` call."""

    path: str
    mode: PathMode
    event_types: frozenset[WatchEventType]
    whitelist: tuple[str, ...]
    blacklist: tuple[str, ...]
    block_size: int
    ignore_sys_files: bool
    ignore_dir_events: bool

    def describe(self) -> str:
        return (
            f"path={self.path} mode={self.mode} events={','.join(sorted(self.event_types))} "
            f"blockSize={self.block_size} whitelist={list(self.whitelist)} "
            f"blacklist={list(self.blacklist)} ignoreSysFiles={self.ignore_sys_files} "
            f"ignoreDirEvents={self.ignore_dir_events}"
        )


def parse_params(
    m_type: object,
    e_types: Sequence[object] | None,
    p_mode: object,
    path: str,
    whitelist: Sequence[str] | None,
    blacklist: Sequence[str] | None,
    block_size: int,
    ignore_sys_files: bool,
    ignore_dir_events: bool,
) -> MonitorParams:
    """Check ``createMonitor`` arguments; ``OmeroFSError`` names what is wrong and the fix."""
    if _enum_name(m_type) != "Persistent":
        raise _fs_error(
            f"MonitorType {_enum_name(m_type)} is not supported by this MonitorServer; "
            "use Persistent (the type OMERO.dropbox uses)"
        )
    names = [_enum_name(e) for e in (e_types or [])]
    if not names:
        raise _fs_error(
            "eTypes is empty: pass at least one WatchEventType (Creation, Modification, Deletion or All)"
        )
    kinds: set[WatchEventType] = set()
    for name in names:
        chosen = _EVENT_TYPES.get(name)
        if chosen is None:
            raise _fs_error(f"eTypes: unknown WatchEventType {name!r}; allowed: {', '.join(_EVENT_TYPES)}")
        kinds.update(chosen)
    mode = _PATH_MODES.get(_enum_name(p_mode))
    if mode is None:
        raise _fs_error(f"pMode: unknown PathMode {_enum_name(p_mode)!r}; allowed: Flat, Recurse, Follow")
    if block_size < 0:
        raise _fs_error(f"blockSize={block_size}: must be 0 (no limit) or a positive number of events")
    if not path:
        raise _fs_error(
            "pathString is empty: pass the absolute path of the directory to watch "
            "(for DropBox: set omero.fs.watchDir, or omero.data.dir for user 'default')"
        )
    if not os.path.isabs(path):
        raise _fs_error(f"pathString {path!r} is not absolute: pass an absolute directory path")
    if not os.path.exists(path):
        raise _fs_error(
            f"pathString {path!r} does not exist: create the directory (and make it readable by "
            f"the MonitorServer's user, uid {os.getuid()}) or fix omero.fs.watchDir"
        )
    if not os.path.isdir(path):
        raise _fs_error(f"pathString {path!r} is not a directory: pass the directory to watch")
    if not os.access(path, os.R_OK | os.X_OK):
        raise _fs_error(
            f"pathString {path!r} is not readable by the MonitorServer's user (uid {os.getuid()}): "
            "grant it read and execute permission (e.g. chmod o+rx or a group the server is in)"
        )
    return MonitorParams(
        path=path,
        mode=mode,
        event_types=frozenset(kinds),
        whitelist=tuple(w for w in (whitelist or []) if w),
        blacklist=tuple(b for b in (blacklist or []) if b),
        block_size=int(block_size),
        ignore_sys_files=bool(ignore_sys_files),
        ignore_dir_events=bool(ignore_dir_events),
    )


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Monitor:
    """One monitor: its watcher, its bounded buffer and its delivery thread."""

    def __init__(
        self,
        monitor_id: str,
        params: MonitorParams,
        proxy: Any,
        buffer_limit: int,
        watcher_options: WatcherOptions | None = None,
    ) -> None:
        self.id = monitor_id
        self.watcher_options = (watcher_options or WatcherOptions()).copy()
        self.params = params
        self.proxy = proxy
        self.buffer_limit = buffer_limit
        self._buffer: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._watcher: Watcher | None = None
        self._thread: threading.Thread | None = None
        self._next_try = 0.0
        self._backoff = RETRY_INITIAL
        self._failing_since: float | None = None
        self._dropped = 0
        self._full_logged = False
        self._bad_names_logged: set[str] = set()
        self.delivered = 0

    # ---------------------------------------------------------- state

    @property
    def started(self) -> bool:
        return self._watcher is not None

    def start(self) -> None:
        from omero_dropbox.watcher import Watcher

        with self._lock:
            if self._watcher is not None:
                return
            p = self.params
            # Creation also brings "moved" events; deletion-only needs them too (moved out).
            self._watcher = Watcher(
                p.path,
                mode=p.mode,
                event_types=sorted(p.event_types),
                ignore_sys_files=p.ignore_sys_files,
                ignore_dir_events=p.ignore_dir_events,
                whitelist=p.whitelist,
                blacklist=p.blacklist,
                block_size=0,
                initial_scan=False,
                **self.watcher_options,
            )
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"monitor-{self.id[:8]}", daemon=True)
                self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        with self._lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()
        self._wake.set()

    def destroy(self) -> None:
        self.stop()
        self._closing = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def pending(self) -> int:
        return len(self._buffer)

    # ---------------------------------------------------------- events

    def _convert(self, batch: Iterable[Event]) -> list[tuple[str, Any]]:
        types = self.params.event_types
        ET = monitors.EventType
        out: list[tuple[str, Any]] = []
        for ev in batch:
            kind = ev.kind
            if kind == "created":
                out.append((ev.path, ET.Create))
            elif kind == "modified":
                out.append((ev.path, ET.Modify))
            elif kind == "deleted":
                out.append((ev.path, ET.Delete))
            elif kind == "moved":
                if "deletion" in types and ev.src_path is not None:
                    out.append((ev.src_path, ET.Delete))
                if "creation" in types:
                    out.append((ev.path, ET.Create))
        good = []
        for path, et in out:
            if _utf8(path):
                good.append((path, et))
            elif path not in self._bad_names_logged:
                self._bad_names_logged.add(path)
                log.warning(
                    "Monitor id = %s: %s is not valid UTF-8 and cannot be sent over Ice; "
                    "rename it to import it",
                    self.id,
                    os.fsencode(path).decode("utf-8", "backslashreplace"),
                )
        return good

    def _enqueue(self, events: list[tuple[str, Any]]) -> None:
        with self._lock:
            self._buffer.extend(events)
            over = len(self._buffer) - self.buffer_limit
            if over > 0:
                for _ in range(over):
                    self._buffer.popleft()
                self._dropped += over
                if not self._full_logged:
                    self._full_logged = True
                    log.warning(
                        "Event buffer of monitor id = %s is full (%d events; client unreachable): "
                        "dropping the oldest events. Bring the client back, or raise "
                        "omero.fs.ng.monitorBufferLimit",
                        self.id,
                        self.buffer_limit,
                    )

    # ---------------------------------------------------------- delivery

    def _run(self) -> None:
        while not self._closing:
            watcher = self._watcher
            wait = _POLL
            if self._buffer:
                wait = min(_POLL, max(0.0, self._next_try - time.monotonic()))
            batch = None
            if watcher is not None:
                try:
                    batch = watcher.next_batch(timeout=wait)
                except Exception as exc:  # a closed watcher between the read and the call
                    log.debug("Monitor id = %s: watcher read ended: %s", self.id, exc)
            else:
                self._wake.wait(wait)
                self._wake.clear()
            if batch:
                self._enqueue(self._convert(batch))
            if self._buffer and time.monotonic() >= self._next_try:
                self._deliver()

    def _take(self) -> list[tuple[str, Any]]:
        limit = self.params.block_size or MAX_EVENTS_PER_CALL
        chunk: list[tuple[str, Any]] = []
        size = 0
        with self._lock:
            for item in self._buffer:
                if len(chunk) >= limit or (chunk and size + len(item[0]) > MAX_BYTES_PER_CALL):
                    break
                chunk.append(item)
                size += len(item[0]) + 8
        return chunk

    def _discard(self, n: int) -> None:
        with self._lock:
            for _ in range(min(n, len(self._buffer))):
                self._buffer.popleft()

    def _deliver(self) -> None:
        while self._buffer and not self._closing:
            chunk = self._take()
            infos = [monitors.EventInfo(path, et) for path, et in chunk]
            try:
                self.proxy.fsEventHappened(self.id, infos)
            except (Ice.UnknownException, Ice.UnknownLocalException, Ice.UnknownUserException) as exc:
                self._discard(len(chunk))
                log.error(
                    "Callback to monitor id = %s failed inside the client (%s); %d event(s) dropped: %s",
                    self.id,
                    type(exc).__name__,
                    len(chunk),
                    getattr(exc, "unknown", exc),
                )
                continue
            except Ice.UserException as exc:
                self._discard(len(chunk))
                reason = getattr(exc, "message", "") or getattr(exc, "reason", "") or type(exc).__name__
                log.warning(
                    "Callback to monitor id = %s refused %d event(s) (%s: %s); dropped",
                    self.id,
                    len(chunk),
                    type(exc).__name__,
                    reason,
                )
                continue
            except Ice.CommunicatorDestroyedException:
                return
            except Ice.LocalException as exc:
                self._on_unreachable(exc)
                return
            self._discard(len(chunk))
            self.delivered += len(chunk)
            if self._failing_since is not None:
                log.info(
                    "Callback to monitor id = %s works again after %.1f s; delivering the %d buffered "
                    "event(s)%s",
                    self.id,
                    time.monotonic() - self._failing_since,
                    len(self._buffer) + len(chunk),
                    f" ({self._dropped} dropped at the buffer bound)" if self._dropped else "",
                )
                self._failing_since = None
                self._full_logged = False
                self._dropped = 0
            self._backoff = RETRY_INITIAL

    def _on_unreachable(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            log.warning(
                "Callback to monitor id = %s failed. Reason: %s. Keeping the events (%d now) and "
                "retrying until the client is back",
                self.id,
                type(exc).__name__,
                len(self._buffer),
            )
        self._next_try = now + self._backoff
        self._backoff = min(self._backoff * 2, RETRY_MAX)


class MonitorServerI(_MonitorServer):
    """The servant. Thread-safe: Ice dispatches calls from several threads."""

    def __init__(
        self, buffer_limit: int = DEFAULT_BUFFER_LIMIT, watcher_options: WatcherOptions | None = None
    ) -> None:
        if buffer_limit < 1:
            raise ValueError(f"omero.fs.ng.monitorBufferLimit must be >= 1, not {buffer_limit}")
        self.buffer_limit = buffer_limit
        # backend / poll_interval / settle of every monitor (omero.fs.ng.backend, pollInterval, settle)
        self.watcher_options = (watcher_options or WatcherOptions()).copy()
        self._monitors: dict[str, _Monitor] = {}
        self._lock = threading.Lock()

    def _get(self, monitor_id: str) -> _Monitor:
        with self._lock:
            mon = self._monitors.get(monitor_id)
        if mon is None:
            raise _fs_error(
                f"no monitor with id {monitor_id!r}: it was destroyed, or this MonitorServer was "
                "restarted since it was created; call createMonitor again"
            )
        return mon

    def createMonitor(
        self,
        mType: Any,
        eTypes: Any,
        pMode: Any,
        pathString: str,
        whitelist: Any,
        blacklist: Any,
        timeout: float,
        blockSize: int,
        ignoreSysFiles: bool,
        ignoreDirEvents: bool,
        platformCheck: bool,
        proxy: Any,
        current: Any = None,
    ) -> str:
        if proxy is None:
            raise _fs_error("proxy is null: pass the MonitorClient proxy that should receive the events")
        params = parse_params(
            mType, eTypes, pMode, pathString, whitelist, blacklist, blockSize, ignoreSysFiles, ignoreDirEvents
        )
        # Two-way, so that a failed delivery is seen and the events are kept.
        proxy = monitors.MonitorClientPrx.uncheckedCast(proxy.ice_twoway())
        monitor_id = str(uuid.uuid1())
        with self._lock:
            self._monitors[monitor_id] = _Monitor(
                monitor_id, params, proxy, self.buffer_limit, self.watcher_options
            )
        log.info("Monitor id = %s created. Proxy: %s (%s)", monitor_id, proxy, params.describe())
        return monitor_id

    def startMonitor(self, id: str, current: Any = None) -> None:
        mon = self._get(id)
        try:
            mon.start()
        except (OSError, ValueError) as exc:
            log.error("Monitor id = %s failed to start: %s", id, exc)
            raise _fs_error(f"Monitor id = {id} failed to start: {exc}") from None
        log.info("Monitor id = %s started", id)

    def stopMonitor(self, id: str, current: Any = None) -> None:
        self._get(id).stop()
        log.info("Monitor id = %s stopped", id)

    def destroyMonitor(self, id: str, current: Any = None) -> None:
        mon = self._get(id)
        with self._lock:
            self._monitors.pop(id, None)
        mon.destroy()
        left = mon.pending()
        log.info(
            "Monitor id = %s destroyed (%d event(s) delivered%s)",
            id,
            mon.delivered,
            f", {left} undelivered discarded" if left else "",
        )

    def getMonitorState(self, id: str, current: Any = None) -> Any:
        mon = self._get(id)
        return monitors.MonitorState.Started if mon.started else monitors.MonitorState.Stopped

    # ------------------------------------------------------------- local use

    def monitor_ids(self) -> list[str]:
        with self._lock:
            return list(self._monitors)

    def shutdown(self) -> None:
        """Stop every monitor (server shutdown)."""
        with self._lock:
            mons = list(self._monitors.values())
            self._monitors.clear()
        for mon in mons:
            mon.destroy()


# --------------------------------------------------------------------------- application


def configure_logging(props: Any, server_id: str) -> None:
    """``<omero.logging.directory>/<server id>.log`` under IceGrid (as upstream), else stderr."""
    if props.getProperty("Ice.Admin.ServerId"):
        from omero.util import configure_server_logging

        configure_server_logging(props)
        escape_log_handlers()  # omero.util's handlers, their format kept, every line escaped
        return
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(stderr_handler())
    escape_log_handlers()
    root.setLevel(int(props.getPropertyWithDefault("omero.logging.level", "20") or 20))


def take_command_line_properties(props: Any, args: Sequence[str], *prefixes: str) -> list[str]:
    """Read ``--omero.X=V`` / ``--omerofs.X=V`` (and ``prefixes``) from the command line, as
    IceGrid would from its config file; returns the arguments left over."""
    rest = list(args)
    for prefix in ("omero", "omerofs", *prefixes):
        rest = list(props.parseCommandLineOptions(prefix, rest))
    return rest


def _property(props: Any, name: str, default: str) -> str:
    # Upstream's code default is "" (it only works with the template); ours is the template value.
    return props.getPropertyWithDefault(name, default).strip() or default


def watcher_options(props: Any) -> WatcherOptions:
    """``backend``, ``poll_interval`` and ``settle`` from ``omero.fs.ng.*`` (validated as for DropBox).

    ``omero.fs.ng.backend=poll`` is how a MonitorServer watches an NFS/SMB share.
    """
    from omero_dropbox.config import load_config

    names = ("omero.fs.ng.backend", "omero.fs.ng.pollInterval", "omero.fs.ng.settle")
    config = load_config(overrides=[f"{n}={props.getProperty(n)}" for n in names if props.getProperty(n)])
    return {"backend": config.backend, "poll_interval": config.poll_interval, "settle": config.settle}


class MonitorServerApp(_Application):
    """``python -m omero_dropbox.ice.monitor_server``: serve ``MonitorServer`` until shut down."""

    def run(self, args: list[str]) -> int:
        communicator = self.communicator()
        props = communicator.getProperties()
        rest = take_command_line_properties(props, args[1:])
        configure_logging(props, "MonitorServer")
        self.shutdownOnInterrupt()
        identity = _property(props, "omero.fs.monitorServerIdString", "MonitorServer")
        adapter_name = _property(props, "omero.fs.monitorServerAdapterName", "omerofs.MonitorServer")
        take_command_line_properties(props, rest, adapter_name.split(".")[0])
        try:
            limit = int(
                props.getPropertyWithDefault("omero.fs.ng.monitorBufferLimit", str(DEFAULT_BUFFER_LIMIT))
            )
            servant = MonitorServerI(buffer_limit=limit, watcher_options=watcher_options(props))
        except ValueError as exc:  # ConfigError is a ValueError and names the property itself
            name = "" if "omero.fs." in str(exc) else "omero.fs.ng.monitorBufferLimit: "
            log.error("Failed create OMERO.fs MonitorServer: %s%s", name, exc)
            return 1
        if not props.getProperty(f"{adapter_name}.Endpoints") and not props.getProperty(
            f"{adapter_name}.AdapterId"
        ):
            log.error(
                "Failed create OMERO.fs MonitorServer: adapter %s has no endpoints; set "
                "%s.Endpoints (IceGrid does this from the server template), e.g. "
                "--%s.Endpoints='tcp -h 127.0.0.1'",
                adapter_name,
                adapter_name,
                adapter_name,
            )
            return 1
        try:
            adapter = communicator.createObjectAdapter(adapter_name)
            proxy = adapter.add(servant, communicator.stringToIdentity(identity))
            adapter.activate()
        except Ice.Exception as exc:
            log.error("Failed create OMERO.fs MonitorServer: %s", exc)
            return 1
        log.info(
            "Started OMERO.fs MonitorServer (%s, pid %d); watch backend %s",
            proxy,
            os.getpid(),
            servant.watcher_options["backend"],
        )
        communicator.waitForShutdown()
        log.info("Stopping OMERO.fs MonitorServer")
        servant.shutdown()
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv if argv is None else argv)
    return int(MonitorServerApp().main(args))


if __name__ == "__main__":
    sys.exit(main())
