"""Uniform adapters over the four watchers compared by ``bench_watchers.py``.

Each adapter uses the library's natural recursive API and records, for every
path with the benchmark's suffix, the monotonic time it was FIRST reported.

What counts as "reported":

* ``ours``       - an ``Event`` with kind created/modified/moved (not a directory).
                   Ours reports a file only once it is complete.
* ``watchfiles`` - any ``added``/``modified`` change for the path (``RustNotify`` is
                   driven exactly like ``watchfiles.watch()`` does it, with its default
                   debounce=1600 ms / step=50 ms, but without ``DefaultFilter``).
* ``watchdog``   - any created/modified/closed/moved(dest) ``FileSystemEvent`` from an
                   inotify ``Observer`` with a recursive schedule.
* ``pyinotify``  - any IN_CREATE / IN_CLOSE_WRITE / IN_MOVED_TO from
                   ``WatchManager.add_watch(root, mask, rec=True, auto_add=True)`` served
                   by a ``ThreadedNotifier`` (the pattern of upstream's MonitorServer).

Peers are thus counted leniently (any mention of the file), ours strictly.

"Ready" for every library is the moment the synchronous call that places the
watches returns (our constructor; ``RustNotify(...)``; ``Observer.schedule`` +
``start``; ``add_watch(rec=True)``). All four place every inotify watch before
returning; the benchmark then also checks that a sentinel file written into the
LAST directory of the tree is reported (timed separately, not part of "ready").
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

LIBS = ("ours", "watchfiles", "watchdog", "pyinotify")
#: Also available (not run by default): our fanotify backend, ``ours-fanotify`` (root only).
EXTRA_LIBS = ("ours-fanotify",)


class _Base:
    name = "?"

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.seen: dict[str, float] = {}
        self.last_new = 0.0
        self._stop = threading.Event()

    def _note(self, path: str) -> None:
        if path.endswith(self.suffix) and path not in self.seen:
            now = time.monotonic()
            self.seen[path] = now
            self.last_new = now

    # -- to implement ---------------------------------------------------------
    def start(self, root: str) -> None:  # places the watches; returns when ready
        raise NotImplementedError

    def pump(self, seconds: float) -> None:
        """Consume events for about ``seconds`` (thread-driven libraries just sleep)."""
        time.sleep(seconds)

    def close(self) -> None:
        pass

    def extra(self) -> dict[str, Any]:
        return {}


class Ours(_Base):
    name = "ours"
    SETTLE = 0.2
    # Our own inotify reader: what `auto` chose before the fanotify backend (which `auto` now
    # takes when run as root); pinned so that the figures stay comparable.
    BACKEND = "native"

    def start(self, root: str) -> None:
        from omero_dropbox import Watcher

        self.w = Watcher(root, mode="follow", settle=self.SETTLE, initial_scan=False, backend=self.BACKEND)

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            batch = self.w.next_batch(timeout=min(left, 0.05))
            if not batch:
                if batch is None:
                    time.sleep(left)
                continue
            for ev in batch:
                if ev.is_dir or ev.kind == "deleted":
                    continue
                self._note(ev.path)

    def close(self) -> None:
        self.w.close()

    def extra(self) -> dict[str, Any]:
        return dict(self.w.stats())


class OursFanotify(Ours):
    name = "ours-fanotify"
    BACKEND = "fanotify"


class WatchFiles(_Base):
    name = "watchfiles"
    DEBOUNCE_MS = 1600  # watchfiles.watch() defaults
    STEP_MS = 50

    def start(self, root: str) -> None:
        from watchfiles._rust_notify import RustNotify

        self.rn = RustNotify([root], False, False, 300, True, False)

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            left_ms = max(1, int((end - time.monotonic()) * 1000))
            raw = self.rn.watch(self.DEBOUNCE_MS, self.STEP_MS, min(left_ms, 200), None)
            if isinstance(raw, str):
                continue
            for change, path in raw:
                if change != 3:  # 1 added, 2 modified, 3 deleted
                    self._note(path)

    def close(self) -> None:
        self.rn.close()


class WatchDog(_Base):
    name = "watchdog"

    def start(self, root: str) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers.inotify import InotifyObserver

        note = self._note

        class H(FileSystemEventHandler):
            def on_any_event(self, event):  # type: ignore[no-untyped-def]
                if event.is_directory:
                    return
                kind = event.event_type
                if kind in ("created", "modified", "closed"):
                    note(event.src_path)
                elif kind == "moved":
                    note(event.dest_path)

        self.obs = InotifyObserver()
        self.obs.schedule(H(), root, recursive=True)
        self.obs.start()

    def close(self) -> None:
        self.obs.stop()
        self.obs.join(10)


class PyInotify(_Base):
    name = "pyinotify"

    def start(self, root: str) -> None:
        import pyinotify

        note = self._note
        self.overflows = 0
        outer = self

        class H(pyinotify.ProcessEvent):
            def process_default(self, event):  # type: ignore[no-untyped-def]
                if not event.dir:
                    note(event.pathname)

            def process_IN_Q_OVERFLOW(self, event):  # type: ignore[no-untyped-def]
                outer.overflows += 1

        mask = pyinotify.IN_CLOSE_WRITE | pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO
        self.wm = pyinotify.WatchManager()
        self.notifier = pyinotify.ThreadedNotifier(self.wm, H())
        self.notifier.daemon = True
        self.notifier.start()
        self.wm.add_watch(root, mask, rec=True, auto_add=True, quiet=True)

    def close(self) -> None:
        self.notifier.stop()

    def extra(self) -> dict[str, Any]:
        return {"overflows": self.overflows, "watches": len(self.wm.watches)}


IMPORTS = {
    "ours": ("omero_dropbox.watcher",),
    "ours-fanotify": ("omero_dropbox.watcher",),
    "watchfiles": ("watchfiles._rust_notify",),
    "watchdog": ("watchdog.observers.inotify", "watchdog.events"),
    "pyinotify": ("pyinotify",),
}


def import_lib(lib: str) -> str:
    """Import the library's modules (before the RSS baseline); returns its version."""
    import importlib
    from importlib.metadata import version

    for mod in IMPORTS[lib]:
        importlib.import_module(mod)
    dist = {"ours": "omero-dropbox-ng", "ours-fanotify": "omero-dropbox-ng"}.get(lib, lib)
    try:
        return version(dist)
    except Exception:
        return "?"


ADAPTERS = {
    "ours": Ours,
    "ours-fanotify": OursFanotify,
    "watchfiles": WatchFiles,
    "watchdog": WatchDog,
    "pyinotify": PyInotify,
}


def make(lib: str, suffix: str) -> _Base:
    return ADAPTERS[lib](suffix)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system
