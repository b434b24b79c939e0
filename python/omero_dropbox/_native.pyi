"""Typed interface of the native watcher core (Rust, notify + PyO3).

Use :class:`omero_dropbox.Watcher` rather than these classes directly.
"""

import os
from collections.abc import Sequence
from pathlib import Path

__version__: str

class Event:
    """One READY event, delivered in batches."""

    @property
    def path(self) -> str:
        """Absolute path; non-UTF-8 bytes are surrogate-escaped like ``os.fsdecode``."""
    @property
    def kind(self) -> str:
        """``"created"``, ``"modified"``, ``"deleted"`` or ``"moved"``."""
    @property
    def is_dir(self) -> bool:
        """True for directory events (only when ``ignore_dir_events`` is off)."""
    @property
    def src_path(self) -> str | None:
        """For ``"moved"``: the previous path; otherwise None."""
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

class NativeWatcher:
    """The native watcher thread. The constructor returns once every watch is placed.

    Raises:
        FileNotFoundError / NotADirectoryError / PermissionError: a root is unusable
            (the message names it).
        ValueError: an option has a value that is not allowed (the message names it).
        OSError: no backend could watch a root (e.g. the inotify watch limit with
            ``backend="native"``; the message names the sysctl to raise).
    """

    def __init__(
        self,
        roots: Sequence[str | bytes],
        *,
        mode: str = "follow",
        event_types: Sequence[str] = ("all",),
        ignore_sys_files: bool = True,
        ignore_dir_events: bool = True,
        whitelist: Sequence[str] = (),
        blacklist: Sequence[str | bytes] = (),
        block_size: int = 0,
        settle: float = 2.0,
        close_grace: float = 0.1,
        write_timeout: float = 60.0,
        backend: str = "auto",
        poll_interval: float = 1.0,
        initial_scan: bool = False,
        debounce: float = 0.05,
        max_latency: float = 1.0,
    ) -> None: ...
    def next_batch(self, timeout: float | None = None) -> list[Event] | None:
        """Wait (GIL released, Ctrl-C honoured) for the next batch.

        A non-empty list; ``[]`` when ``timeout`` passed quietly; None once closed.
        """
    def close(self) -> None:
        """Stop the native thread and release every watch. Idempotent."""
    @property
    def closed(self) -> bool: ...
    @property
    def roots(self) -> list[str]: ...
    def reports(self, path: str) -> bool:
        """Whether a file at ``path`` would be reported once complete, by its path alone."""
    def backends(self) -> list[tuple[str, str]]:
        """(root, "native" | "poll") for each root."""
    def stats(self) -> dict[str, int]:
        """raw_events, overflows, rescans, watches, reported, pending, tracked, denied, poll_roots."""

class PathPolicy:
    """Which files below one root a watcher reports (the one path policy)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        mode: str = "recurse",
        ignore_sys_files: bool = True,
        whitelist: Sequence[str] = (),
        blacklist: Sequence[str | os.PathLike[str]] = (),
    ) -> None: ...
    @property
    def root(self) -> Path: ...
    def reports(self, path: str | os.PathLike[str]) -> bool: ...
    def why(self, path: str | os.PathLike[str]) -> str | None: ...
    def enters_dir(self, path: str | os.PathLike[str]) -> bool: ...
    def never_data(self, path: str | os.PathLike[str]) -> bool: ...

def never_data(path: str | os.PathLike[str]) -> bool: ...
def system_file_rules() -> list[tuple[str, str, str]]:
    """The system-file rules as (``"prefix"|"suffix"|"exact"``, pattern, reason)."""

def network_filesystem(path: str | bytes) -> str | None:
    """The network filesystem ``path`` lives on (``"nfs"``, ``"cifs"``, ...), or None."""

def regex_full_matches(pattern: str, names: Sequence[str], size_limit: int) -> list[int]:
    """Indices of ``names`` the whole regular expression matches (linear time, Rust ``regex``).

    Raises:
        ValueError: the expression is invalid, uses back-references or look-around, or
            compiles to more than ``size_limit`` bytes (the message says which).
    """
