"""Typed interface of the native watcher core (Rust, notify + PyO3), built from ``rust/lib.rs``.

Use :class:`omero_dropbox.Watcher` rather than these classes directly. CI checks this stub
against the built module (``python -m mypy.stubtest omero_dropbox._native``).
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, final

from typing_extensions import Self

__all__ = [
    "Event",
    "NativeWatcher",
    "PathPolicy",
    "__version__",
    "network_filesystem",
    "never_data",
    "regex_full_matches",
    "system_file_rules",
]

__version__: str

# The spellings documented here; the core also accepts them in any case (and "polling").
_PathMode = Literal["flat", "recurse", "follow"]
_EventType = Literal["creation", "modification", "deletion", "all"]
_Backend = Literal["auto", "native", "notify", "poll", "fanotify"]
_EventKind = Literal["created", "modified", "deleted", "moved"]
# A path argument: PyO3 reads it as a PathBuf, as os.fspath would.
_Path = str | bytes | os.PathLike[str] | os.PathLike[bytes]

@final
class Event:
    """One READY event, delivered in batches. Made by the core only (no constructor)."""

    @property
    def path(self) -> str:
        """Absolute path; non-UTF-8 bytes are surrogate-escaped like ``os.fsdecode``."""
    @property
    def kind(self) -> _EventKind:
        """``"created"``, ``"modified"``, ``"deleted"`` or ``"moved"``."""
    @property
    def is_dir(self) -> bool:
        """True for directory events (only when ``ignore_dir_events`` is off)."""
    @property
    def src_path(self) -> str | None:
        """For ``"moved"``: the previous path; otherwise None."""
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class NativeWatcher:
    """The native watcher thread. The constructor returns once every watch is placed.

    Raises:
        FileNotFoundError / NotADirectoryError / PermissionError: a root is unusable
            (the message names it).
        ValueError: an option has a value that is not allowed (the message names it).
        OSError: no backend could watch a root (e.g. the inotify watch limit with
            ``backend="native"``; the message names the sysctl to raise).
    """

    def __new__(
        cls,
        roots: Sequence[_Path],
        *,
        mode: _PathMode = "follow",
        event_types: Sequence[_EventType] = ...,  # ["all"]
        ignore_sys_files: bool = True,
        ignore_dir_events: bool = True,
        whitelist: Sequence[str] = ...,  # []
        blacklist: Sequence[_Path] = ...,  # []
        block_size: int = 0,
        settle: float = 2.0,
        close_grace: float = 0.1,
        write_timeout: float = 60.0,
        backend: _Backend = "auto",
        poll_interval: float = 1.0,
        full_sweep: float | None = None,
        initial_scan: bool = False,
        debounce: float = 0.05,
        max_latency: float = 1.0,
    ) -> Self: ...
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
    def reports(self, path: _Path) -> bool:
        """Whether a file at ``path`` would be reported once complete, by its path alone."""
    def backends(self) -> list[tuple[str, Literal["native", "notify", "poll", "fanotify"]]]:
        """(root, "native" | "notify" | "poll" | "fanotify") for each root, in the order given, then
        (mount point, backend) for each mount inside a root that is followed as a subtree of its own:
        a network filesystem mounted in the tree is "poll", a filesystem fanotify cannot mark is
        "native" (inotify). Mounts come and go with the mount table while the watcher runs.
        """
    def stats(self) -> dict[str, int]:
        """raw_events, overflows, rescans, watches, reported, pending, tracked, denied, poll_roots."""

@final
class PathPolicy:
    """Which files below one root a watcher reports (the one path policy)."""

    def __new__(
        cls,
        root: str | os.PathLike[str],
        *,
        mode: Literal["flat", "recurse", "follow"] = "recurse",
        ignore_sys_files: bool = True,
        whitelist: Sequence[str] = ...,
        blacklist: Sequence[str | os.PathLike[str]] = ...,
    ) -> Self: ...
    @property
    def root(self) -> Path: ...
    def reports(self, path: str | os.PathLike[str]) -> bool: ...
    def why(self, path: str | os.PathLike[str]) -> str | None: ...
    def enters_dir(self, path: str | os.PathLike[str]) -> bool: ...
    def never_data(self, path: str | os.PathLike[str]) -> bool: ...

def never_data(path: str | os.PathLike[str]) -> bool: ...
def system_file_rules() -> list[tuple[Literal["prefix", "suffix", "exact"], str, str]]:
    """The system-file rules as (``"prefix"|"suffix"|"exact"``, pattern, reason)."""

def network_filesystem(path: _Path) -> str | None:
    """The network filesystem ``path`` lives on (``"nfs"``, ``"cifs"``, ...), or None."""

def regex_full_matches(pattern: str, names: Sequence[str], size_limit: int) -> list[int]:
    """Indices of ``names`` the whole regular expression matches (linear time, Rust ``regex``).

    Raises:
        ValueError: the expression is invalid, uses back-references or look-around, or
            compiles to more than ``size_limit`` bytes (the message says which).
    """
