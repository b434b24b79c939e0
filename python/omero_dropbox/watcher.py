"""The lossless file watcher: a thin, documented front for the native core.

Example::

    from omero_dropbox import Watcher

    with Watcher(["/OMERO/DropBox"], initial_scan=True) as watcher:
        for batch in watcher:
            for event in batch:
                print(event.kind, event.path)

Every iteration yields a non-empty list of :class:`Event`. A file is reported
once it is complete: after close-after-write (inotify), or when its size and
mtime have been stable for ``settle`` seconds (polling, FSEvents, Windows, and
files found by a scan).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Literal, Protocol

from omero_dropbox._native import Event, NativeWatcher, PathPolicy, network_filesystem, system_file_rules
from omero_dropbox.choices import Backend, PathMode, WatchEventType

__all__ = [
    "Backend",
    "Event",
    "EventType",
    "PathMode",
    "ReadyEvent",
    "Watcher",
    "WatcherError",
    "network_filesystem",
    "scan_tree",
    "system_file_rules",
]

EventType = WatchEventType | Literal["all"]


class ReadyEvent(Protocol):
    """What a READY event tells its consumer: :class:`Event` is one, and so is an event the Ice
    DropBox service receives from a MonitorServer or finds by scanning."""

    @property
    def path(self) -> str: ...
    @property
    def kind(self) -> str: ...  # "created" | "modified" | "deleted" | "moved"
    @property
    def is_dir(self) -> bool: ...
    @property
    def src_path(self) -> str | None: ...


StrPath = str | os.PathLike[str]


class WatcherError(OSError):
    """The watcher could not start (a root is missing, unreadable, or no backend can serve it)."""


class Watcher:
    """Watch directory trees and yield batches of READY file events.

    Args:
        roots: directories to watch (a single path or several).
        mode: ``"flat"`` (the root only), ``"recurse"`` (subdirectories that exist at
            start), ``"follow"`` (existing and new subdirectories) — upstream ``PathMode``.
        event_types: any of ``"creation"``, ``"modification"``, ``"deletion"``, ``"all"``
            (upstream ``WatchEventType``). ``"moved"`` events come with creation or deletion.
        ignore_sys_files: skip dotfiles, backups, partial downloads, OS droppings
            (see :func:`system_file_rules`).
        ignore_dir_events: report files only.
        whitelist: report only files with these suffixes (case-insensitive; ``.ome.tiff`` works).
        blacklist: subtrees never watched nor reported (absolute, or relative to each root).
        block_size: at most this many events per batch (0: no limit).
        settle: seconds a file must be quiet before it is READY where no close event exists.
        close_grace: seconds after close-after-write before READY (absorbs reopen-and-append writers).
        write_timeout: seconds after the last event before a file held open is READY anyway,
            provided its size and mtime did not change meanwhile.
        backend: ``"auto"`` (fanotify where the process holds CAP_SYS_ADMIN and the filesystem
            reports file handles, else native; polling for network filesystems or when the native
            watch cannot serve), ``"fanotify"`` (one fanotify filesystem mark, Linux),
            ``"native"`` (our own inotify on Linux, notify's watcher
            elsewhere), ``"notify"`` (notify's watcher on every OS: the path macOS and
            Windows take, which Linux then runs too; on Linux prefer ``"native"``) or
            ``"poll"``.
        poll_interval: seconds between polls of the polling backend. A poll costs one
            ``lstat`` per directory; a directory whose mtime changed is listed again, and
            new or changed files are looked at every poll until they settle.
        full_sweep: seconds between full sweeps of the polling backend (every directory
            listed, every file looked at), which catch a rewrite in place of a file that
            had settled. None: 10 polls, at least 30 seconds.
        initial_scan: report files that already exist when watching starts.
        debounce: a batch is handed over after this many quiet seconds ...
        max_latency: ... or once its oldest event waited this long.
    """

    def __init__(
        self,
        roots: StrPath | Sequence[StrPath],
        *,
        mode: PathMode = "follow",
        event_types: Iterable[EventType] = ("all",),
        ignore_sys_files: bool = True,
        ignore_dir_events: bool = True,
        whitelist: Iterable[str] = (),
        blacklist: Iterable[StrPath] = (),
        block_size: int = 0,
        settle: float = 2.0,
        close_grace: float = 0.1,
        write_timeout: float = 60.0,
        backend: Backend = "auto",
        poll_interval: float = 1.0,
        full_sweep: float | None = None,
        initial_scan: bool = False,
        debounce: float = 0.05,
        max_latency: float = 1.0,
    ) -> None:
        root_list = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
        if block_size < 0:
            raise ValueError(f"block_size: must be 0 (no limit) or positive, got {block_size}")
        try:
            self._native = NativeWatcher(
                [os.fspath(r) for r in root_list],
                mode=mode,
                event_types=list(event_types),
                ignore_sys_files=ignore_sys_files,
                ignore_dir_events=ignore_dir_events,
                whitelist=list(whitelist),
                blacklist=[os.fspath(b) for b in blacklist],
                block_size=block_size,
                settle=settle,
                close_grace=close_grace,
                write_timeout=write_timeout,
                backend=backend,
                poll_interval=poll_interval,
                full_sweep=full_sweep,
                initial_scan=initial_scan,
                debounce=debounce,
                max_latency=max_latency,
            )
        except (FileNotFoundError, NotADirectoryError, PermissionError, ValueError):
            raise
        except OSError as exc:
            raise WatcherError(str(exc)) from exc

    def next_batch(self, timeout: float | None = None) -> list[Event] | None:
        """The next batch; ``[]`` if ``timeout`` seconds passed quietly; None once closed."""
        return self._native.next_batch(timeout)

    def __iter__(self) -> Iterator[list[Event]]:
        return self

    def __next__(self) -> list[Event]:
        batch = self._native.next_batch(None)
        if batch is None:
            raise StopIteration
        return batch

    def close(self) -> None:
        """Stop the native thread and drop every watch (idempotent)."""
        self._native.close()

    @property
    def closed(self) -> bool:
        return self._native.closed

    @property
    def roots(self) -> list[str]:
        return self._native.roots

    def stats(self) -> dict[str, int]:
        """Counters from the native core (watches, overflows, rescans, pending, ...)."""
        return self._native.stats()

    def reports(self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> bool:
        """Whether a file at ``path`` would be reported once complete, judged by its path alone:
        it lies under a root (directly, in ``flat`` mode) and neither it nor a directory above
        it is dropped by the system-file rules, the whitelist or the blacklist.
        """
        return self._native.reports(os.fsdecode(path))

    def backends(self) -> list[tuple[str, Literal["native", "notify", "poll", "fanotify"]]]:
        """(root, "native" | "notify" | "poll" | "fanotify") for each root, in the order given, then
        (mount point, backend) for each mount inside a root that is followed as a subtree of its own:
        a network filesystem mounted in the tree is "poll", a filesystem fanotify cannot mark is
        "native" (inotify). Mounts come and go with the mount table while the watcher runs.
        """
        return self._native.backends()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Watcher {state} roots={self.roots!r}>"


def scan_tree(policy: PathPolicy) -> Iterator[str]:
    """Every file below the policy's root that a watcher reports (a start-up walk where no
    native watcher runs, as in the Ice DropBox): the same policy decides, folder by folder."""
    for dirpath, dirnames, filenames in os.walk(str(policy.root)):
        dirnames[:] = [d for d in dirnames if policy.enters_dir(os.path.join(dirpath, d))]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if policy.reports(path):
                yield path
