"""When is a fileset due: the per-user pools of waiting files and the rules that release them.

Pure bookkeeping, with the clock and the disk passed in, so that every waiting rule has unit
tests on a fake clock (``tests/unit/test_engine.py``), in the manner of Syncthing's watch
aggregator. The engine feeds it admitted files and groupings, and asks :meth:`Aggregator.due`
what to submit.

The rules, per user:

* a fileset is due once every folder holding one of its files has been quiet for its wait:
  ``dirImportWait`` seconds, or only ``completeWait`` when every member its format needs is
  present and no other fileset could still claim its file (:func:`wait_for`);
* a fileset missing a member that is on disk but not reported complete (still being copied,
  or caught in an overflow rescan) waits while that member is written, while the watcher has
  delivered events the engine has not read yet, and at most :data:`MISSING_MEMBER_GRACE`
  seconds beyond its wait; then it goes without it;
* a companion file (an ``.ids`` without its ``.ics``) waits ``dirImportWait`` for its key, and
  as long as a missing member would if its key is on disk; then it is given up, with a reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from omero_dropbox.grouping import Fileset
from omero_dropbox.text import printable as display_path

__all__ = [
    "MISSING_MEMBER_GRACE",
    "Aggregator",
    "DiskView",
    "GiveUp",
    "Pool",
    "Waits",
    "wait_for",
]

log = logging.getLogger("omero_dropbox.dropbox")

#: How long a fileset waits, beyond its own wait, for a member that is on disk but that the
#: watcher has not reported complete (still being copied, or caught in an overflow rescan).
MISSING_MEMBER_GRACE = 60.0


@dataclass(frozen=True)
class Waits:
    """A user's waits, in seconds."""

    dir_import_wait: float
    complete_wait: float


def wait_for(fs: Fileset, waits: Waits) -> float:
    """How long the folders of ``fs`` must be quiet before it is due: the full
    ``dirImportWait`` unless it is complete and could not still grow (the grouping rules say
    whether a lone file may yet become a member of a fileset whose key has not arrived)."""
    if fs.complete and not fs.may_grow:
        return min(waits.complete_wait, waits.dir_import_wait)
    return waits.dir_import_wait


class DiskView(Protocol):
    """What the waiting rules need to know of the disk (and the journal)."""

    def unsettled(self, paths: Sequence[str], wait: float) -> tuple[list[str], bool]:
        """Which of ``paths`` (files not reported yet) are on disk and will still be reported,
        and whether one of them was written within ``wait`` seconds."""
        ...


@dataclass(frozen=True)
class GiveUp:
    """A waiting file that leaves its pool unimported, and why (journaled as a skip)."""

    path: str
    reason: str


@dataclass
class Pool:
    """READY files of one user that are not imported yet, and when each folder last changed."""

    files: set[str] = field(default_factory=set)
    activity: dict[str, float] = field(default_factory=dict)  # folder -> last change
    dirty: bool = False  # files came or went since the last grouping
    filesets: list[Fileset] = field(default_factory=list)  # from the last grouping
    waiting_since: dict[str, float] = field(default_factory=dict)  # companion -> since
    # fileset key -> when it was first held back for a member on disk but not READY
    held_since: dict[str, float] = field(default_factory=dict)
    # waiting companion -> the key files that would claim it (from the last grouping)
    awaited_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # fileset key -> (why it may not go yet, when to ask again): a bad dropbox.toml
    blocked: dict[str, tuple[str, float]] = field(default_factory=dict)

    def waiting_count(self) -> int:
        return len(self.filesets) + sum(1 for p in list(self.waiting_since) if p in self.files)


def _active_up_to(pool: Pool, path: str, root: str, now: float) -> None:
    """``path``'s folder and every folder above it up to ``root`` were active at ``now``."""
    d = os.path.dirname(path)
    while True:
        pool.activity[d] = now
        if d == root or len(d) <= len(root):
            break
        d = os.path.dirname(d)


class Aggregator:
    """Every user's pool, and the rules that say which filesets are due."""

    def __init__(self) -> None:
        self.pools: dict[str, Pool] = {}

    def pool(self, user: str) -> Pool:
        found = self.pools.get(user)
        if found is None:
            found = self.pools[user] = Pool()
        return found

    def add(self, user: str, path: str, root: str, now: float) -> None:
        """A READY file of ``user`` (whose folder is ``root``): its folder and every folder up
        to ``root`` count as active now, since any of them may hold its key file."""
        pool = self.pool(user)
        pool.files.add(path)
        _active_up_to(pool, path, root, now)
        pool.dirty = True

    def drop(self, path: str, now: float) -> None:
        """A file that went away (deleted, moved, replaced by something not importable)."""
        for pool in self.pools.values():
            if path in pool.files:
                pool.files.discard(path)
                pool.activity[os.path.dirname(path)] = now
                pool.dirty = True

    def put_back(self, user: str, files: Iterable[str]) -> None:
        """Files of a fileset that could not be submitted: they wait, and are grouped again."""
        pool = self.pool(user)
        pool.files.update(files)
        pool.dirty = True

    def touch(self, user: str, path: str, root: str, now: float) -> None:
        """A file that is not data but concerns its folder (a settings file) changed: that
        folder and those above it count as active, so filesets there wait for the quiet."""
        pool = self.pool(user)
        _active_up_to(pool, path, root, now)
        for key, (reason, _until) in list(pool.blocked.items()):
            pool.blocked[key] = (reason, 0.0)  # ask again at the next due

    def block(self, user: str, fs: Fileset, reason: str, until: float) -> bool:
        """A due fileset that may not go yet (``reason``): back to the pool until ``until``, or
        until :meth:`touch` says its folder's settings changed. True when the reason is new
        (not the one it was held for last time), so that it is said once, not at every check."""
        pool = self.pool(user)
        pool.files.update(fs.files)
        if fs not in pool.filesets:
            pool.filesets.append(fs)
        before = pool.blocked.get(fs.key)
        pool.blocked[fs.key] = (reason, until)
        return before is None or before[0] != reason

    def unblock(self, user: str, key: str) -> None:
        """The fileset of ``key`` may go now (its settings were fixed): forget why it was held."""
        pool = self.pools.get(user)
        if pool is not None:
            pool.blocked.pop(key, None)

    def take_grouping(
        self,
        user: str,
        filesets: Sequence[Fileset],
        waiting: Mapping[str, tuple[str, ...]],
        now: float,
        only: set[str] | None = None,
    ) -> None:
        """Take a grouping of the pool's files: its filesets, and the companions ``waiting``
        for a key (with the keys that would claim each). With ``only``, keep just what
        concerns those files (a grouping made on an earlier copy of the pool). Files the
        grouping refused are the caller's to :meth:`drop` (with a skip)."""
        pool = self.pool(user)
        if only is not None:
            filesets = [fs for fs in filesets if all(f in only for f in fs.files)]
        pool.filesets = list(filesets)
        keys = {fs.key for fs in pool.filesets}
        pool.held_since = {k: t for k, t in pool.held_since.items() if k in keys}
        pool.blocked = {k: b for k, b in pool.blocked.items() if k in keys}
        pool.awaited_keys = dict(waiting)
        for path in waiting:
            if only is None or path in only:
                pool.waiting_since.setdefault(path, now)

    def due(
        self,
        user: str,
        now: float,
        waits: Waits,
        disk: DiskView,
        *,
        unread: bool = False,
    ) -> tuple[list[Fileset], list[GiveUp]]:
        """Take the filesets of ``user`` whose wait is over out of her pool, and the
        companions given up on. ``unread``: the watcher delivered events for this user that
        the engine has not handled yet (a burst), among which a missing member may be."""
        pool = self.pool(user)
        due: list[Fileset] = []
        for fs in list(pool.filesets):
            wait = wait_for(fs, waits)
            last = max(pool.activity.get(os.path.dirname(f), 0.0) for f in fs.files)
            if now - last < wait or self._held(pool, fs, wait, now, disk, unread):
                continue
            blocked = pool.blocked.get(fs.key)
            if blocked is not None and now < blocked[1]:
                continue
            # Its block (if any) stays until the taker says: `block` again (the reason it
            # compares with, so that it is said once) or `unblock`. A fileset whose files vanish
            # leaves the grouping, and take_grouping drops its block with it.
            pool.held_since.pop(fs.key, None)
            pool.filesets.remove(fs)
            for f in fs.files:
                pool.files.discard(f)
                pool.waiting_since.pop(f, None)
            due.append(fs)
        return due, self._give_up_on_companions(pool, waits.dir_import_wait, now, disk, unread)

    def waiting(self, user: str, now: float, waits: Waits) -> list[tuple[str, int, str, float]]:
        """What ``user`` is waiting for, as ``(key path, files, why, due at)`` (``now``'s clock):
        each fileset not due yet, and each companion file waiting for a key file."""
        pool = self.pools.get(user)
        if pool is None:
            return []
        out = []
        grouped: set[str] = set()
        for fs in list(pool.filesets):
            grouped.update(fs.files)
            last = max((pool.activity.get(os.path.dirname(f), 0.0) for f in fs.files), default=now)
            blocked = pool.blocked.get(fs.key)
            if blocked is not None:
                out.append((fs.key, len(fs.files), blocked[0], blocked[1]))
                continue
            if fs.missing:
                names = ", ".join(os.path.basename(p) for p in list(fs.missing)[:5])
                why = f"waiting for {names}" + (" and more" if len(fs.missing) > 5 else "")
            else:
                why = "waiting until its folder has been quiet for a while (more files may come)"
            out.append((fs.key, len(fs.files), why, last + wait_for(fs, waits)))
        for path, since in list(pool.waiting_since.items()):
            if path in pool.files and path not in grouped:
                keys = pool.awaited_keys.get(path, ())
                hint = f" (such as {os.path.basename(keys[0])})" if keys else ""
                out.append(
                    (path, 1, f"waiting for the file that names it{hint}", since + waits.dir_import_wait)
                )
        return out

    @staticmethod
    def _held(pool: Pool, fs: Fileset, wait: float, now: float, disk: DiskView, unread: bool) -> bool:
        """Whether ``fs`` keeps waiting for a member it lacks that is on disk but not READY."""
        if not fs.missing:
            return False
        on_disk, being_written = disk.unsettled(fs.missing, wait)
        if not on_disk:
            return False
        if being_written or unread:
            return True
        since = pool.held_since.setdefault(fs.key, now)
        if now - since < wait + MISSING_MEMBER_GRACE:
            return True
        log.warning(
            "Importing %s without %s: it is on disk but was not reported complete within %g s",
            display_path(fs.key),
            ", ".join(display_path(p) for p in on_disk),
            wait + MISSING_MEMBER_GRACE,
        )
        return False

    @staticmethod
    def _give_up_on_companions(
        pool: Pool, wait: float, now: float, disk: DiskView, unread: bool
    ) -> list[GiveUp]:
        """Companions whose key file did not come within ``wait`` s.

        A key that is on disk but not reported yet (an overflow rescan on a big tree reports
        it late, or it is still being written) is waited for as a fileset waits for a missing
        member: giving up would skip the companion for good and import the key alone.
        """
        given_up: list[GiveUp] = []
        grouped: set[str] | None = None
        for path, since in list(pool.waiting_since.items()):
            if path not in pool.files or now - since < wait:
                continue
            if grouped is None:
                grouped = {f for fs in pool.filesets for f in fs.files}
            if path in grouped:
                continue
            on_disk, being_written = disk.unsettled(pool.awaited_keys.get(path, ()), wait)
            if on_disk and (being_written or unread or now - since < wait + MISSING_MEMBER_GRACE):
                continue
            pool.files.discard(path)
            del pool.waiting_since[path]
            if not on_disk:
                given_up.append(GiveUp(path, "companion file whose key file never arrived"))
            else:
                given_up.append(
                    GiveUp(
                        path,
                        f"companion file whose key file {os.path.basename(on_disk[0])} is on disk but was "
                        f"not reported complete within {wait + MISSING_MEMBER_GRACE:g} s",
                    )
                )
        return given_up
