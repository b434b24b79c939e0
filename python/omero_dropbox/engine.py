"""The DropBox engine: the wiring from READY events to the import queue.

One :class:`~omero_dropbox.watcher.Watcher` per configured monitor (or a MonitorServer,
through :meth:`DropBox.feed`) delivers events to a single engine thread, which

* serves each user's events in turn (one user's burst delays another by a few quanta);
* asks :mod:`~omero_dropbox.admission` whether each file joins its user's pool (who owns it
  is :mod:`~omero_dropbox.ownership`'s answer);
* regroups a pool that changed into filesets (:mod:`~omero_dropbox.grouping`), on a thread of
  its own when that takes long;
* asks :mod:`~omero_dropbox.aggregator` which filesets are due, and journals and queues those
  (:class:`~omero_dropbox.journal.Journal`, :class:`~omero_dropbox.import_queue.ImportQueue`),
  so that a restart (even ``kill -9``) resumes, and a fileset whose content was imported
  before (renamed, touched, chmod-ed, rescanned) is never imported again.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from omero_dropbox.admission import Admission
from omero_dropbox.after_imports import AfterImports
from omero_dropbox.aggregator import MISSING_MEMBER_GRACE, Aggregator, GiveUp, Pool, Waits
from omero_dropbox.annotations import Annotations, annotator_of
from omero_dropbox.at_use import FileRefused, check_beneath, open_beneath
from omero_dropbox.config import DropBoxConfig, UserMonitorConfig
from omero_dropbox.folder_settings import FolderSettings, ImportPlan, SettingsError, plan_for
from omero_dropbox.grouping import Fileset, FilesetGrouper, FolderNames, GroupingResult
from omero_dropbox.grouping.oracle import UsedFilesOracle
from omero_dropbox.identity import FileIdentity, fd_identity, fileset_id
from omero_dropbox.import_queue import ImportQueue
from omero_dropbox.importers import Importer, ImportRequest, ImportResult, as_importer
from omero_dropbox.journal import (
    FilesetRecord,
    Journal,
    JournalBusyError,
    JournalError,
    JournalFullError,
    display_path,
)
from omero_dropbox.metrics import EngineMetrics, InstrumentedImporter
from omero_dropbox.omero_objects import parse_omero_objects
from omero_dropbox.ownership import AnyUser, Owner, Ownership, UserDirectory, UserList
from omero_dropbox.queue_store import UNCAPPED, QueueStore, SharedQueue
from omero_dropbox.skip_log import SkipLog
from omero_dropbox.snapshot import LiveStatus, ServiceSnapshot
from omero_dropbox.states import TERMINAL_FILE_STATES, FilesetState
from omero_dropbox.user_reports import UserReports
from omero_dropbox.watcher import ReadyEvent, Watcher

if TYPE_CHECKING:
    from omero_dropbox.shared_queue import SharedLink

__all__ = ["MISSING_MEMBER_GRACE", "AnyUser", "DropBox", "UserDirectory", "UserList"]

log = logging.getLogger("omero_dropbox.dropbox")

_TICK = 0.25
# Events handled for one user before the next user's turn (see DropBox._serve_backlog).
_QUANTUM = 256
_PUBLISH_EVERY = 2.0  # seconds between service.json refreshes (for `omero-dropbox status`)
# While the state directory's disk is full, try to record new work again this often.
_FULL_RETRY = 2.0


def _plan_json(plan: ImportPlan) -> str:
    return "" if plan.empty and not plan.sources else plan.to_json()


def _sources(plan: ImportPlan) -> str:
    return ", ".join(display_path(s) for s in plan.sources[-3:])


def _listed(paths: Iterable[str], few: int = 16) -> Iterable[str]:
    """``paths``, less those surely absent: above ``few`` paths, each folder is listed once
    (:class:`~omero_dropbox.grouping.FolderNames`), so a key file naming 100,000 absent files
    costs a listing, not 100,000 ``lstat`` calls at every step."""
    paths = list(paths)
    if len(paths) <= few:
        return paths
    folders = FolderNames()
    return [p for p in paths if folders.may_exist(p)]


def _some(paths: Iterable[str], shown: int = 5) -> str:
    """The first few of ``paths`` by name, and how many more: for log lines and reasons."""
    paths = list(paths)
    names = ", ".join(display_path(os.path.basename(p)) for p in paths[:shown])
    return names + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


class _BackgroundGrouping:
    """One regroup of an expensive pool on a daemon thread (it ends with the process)."""

    def __init__(self, grouper: FilesetGrouper, files: frozenset[str], root: str) -> None:
        self.files = set(files)
        self.result: GroupingResult | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(grouper, files, root), name="regroup", daemon=True
        )
        self._thread.start()

    def _run(self, grouper: FilesetGrouper, files: frozenset[str], root: str) -> None:
        started = time.monotonic()
        try:
            self.result = grouper.group(files, root=root)
        except Exception as exc:  # reported on the engine thread, which retries later
            self.error = exc
        finally:
            self.seconds = time.monotonic() - started
            self._done.set()

    def finished(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


#: Missing members journaled per fileset (to report a member that arrives late against its
#: fileset); a key file naming more has the rest reported like any file.
MISSING_KEPT = 10_000

#: How long the engine thread waits for a regroup before leaving it to run in the background.
_INLINE_WAIT = 0.05


#: Due filesets of one user journaled in one transaction (one commit, one fsync).
_SUBMIT_BATCH = 256

#: A fileset held by a bad dropbox.toml is checked again this often (and whenever a settings
#: file of its user changes).
_SETTINGS_RECHECK = 60.0


@dataclass(frozen=True)
class _Prepared:
    """A due fileset with its members' journal identities and mtimes, read for its submission."""

    fs: Fileset
    fid: str
    identities: list[tuple[FileIdentity, int]]
    plan: ImportPlan


@dataclass
class _RegroupSlot:
    """When a user's pool may be regrouped next, and the regroup running for it."""

    # not regrouped before this monotonic time: a pool that costs c seconds to regroup waits
    # c seconds before the next one, so it gets at most half of the engine thread
    next_regroup: float = 0.0
    cost: float = 0.0  # seconds the last regroup took
    background: _BackgroundGrouping | None = None


class _JournalDisk:
    """The aggregator's view of the disk: files not reported yet that still will be."""

    def __init__(self, journal: Journal, ownership: Ownership) -> None:
        self.journal = journal
        self.ownership = ownership

    def unsettled(self, paths: Sequence[str], wait: float) -> tuple[list[str], bool]:
        """Which of ``paths`` (files not reported yet) are on disk, and whether one was written
        within ``wait`` s.

        A recently written file is not READY yet (a large file still being copied): importing
        its fileset now would import it without that file.  Its writes count as activity, as
        upstream's "directory quiet for dirImportWait" intends.  One ``lstat`` per file (a
        ``stat`` more for a link, whose target's writes are what count).  A file the journal
        already settled (skipped, imported or failed), or one no watcher reports by its name
        (a system file, off the whitelist), is not waited for: it will not be reported.
        """
        on_disk: list[str] = []
        being_written = False
        for path in _listed(paths):
            if not self.ownership.reported(path):
                continue  # by its name alone: no system call
            try:
                st = os.lstat(path)
            except OSError:
                continue
            settled = self.journal.file_state(path)
            if settled is not None and settled.state in TERMINAL_FILE_STATES:
                continue
            on_disk.append(path)
            if stat.S_ISLNK(st.st_mode):
                try:
                    st = os.stat(path)
                except OSError:
                    continue
            # abs(): a share's clock may run a little ahead; an mtime far in the future
            # (a `touch -d`) must not keep the fileset waiting for ever.
            if abs(time.time() - st.st_mtime) < wait:
                being_written = True
        return on_disk, being_written


class DropBox:
    """Watch the configured DropBox directories and import every fileset once.

    Args:
        config: the resolved configuration (:func:`omero_dropbox.config.load_config`).
        importer: any callable taking an :class:`~omero_dropbox.importers.ImportRequest`
            (a :class:`~omero_dropbox.importers.CommandImporter`, an OMERO importer, or your
            own function returning True/False or an ``ImportResult``).
        state_dir: where the journal lives.
        users: which user names exist (default: any well-formed name).
        dry_run: log what would be imported, as whom and when, and import nothing.
        watch: place our own watches (with a start-up scan). False when the events come
            from elsewhere through :meth:`feed` (the Ice DropBox service, fed by a MonitorServer).
        shared: the import queue is in PostgreSQL, shared with other hosts (``run --queue``):
            due filesets are journaled here and sent there (:mod:`~omero_dropbox.queue_sync`);
            this node's workers (role ``all``) claim from it.
    """

    def __init__(
        self,
        config: DropBoxConfig,
        importer: Callable[[ImportRequest], ImportResult | bool | None] | None,  # None: dry_run only
        *,
        state_dir: Path,
        users: UserDirectory | None = None,
        dry_run: bool = False,
        watch: bool = True,
        shared: SharedQueue | None = None,
    ) -> None:
        self.config = config
        self._watch = watch
        self.users = users or AnyUser()
        self.ownership = Ownership(config, self.users)
        self.dry_run = dry_run
        self.journal = Journal(state_dir, lock_state_dir=True)
        self._importer = self._dry_run_importer if dry_run else as_importer(importer)
        self._stop = threading.Event()
        self._events: queue.Queue[list[ReadyEvent]] = queue.Queue()
        self._watchers: list[Watcher] = []
        self._threads: list[threading.Thread] = []
        self.aggregator = Aggregator()
        self._disk = _JournalDisk(self.journal, self.ownership)
        self._regroups: dict[str, _RegroupSlot] = {}
        self._groupers: dict[Path | None, FilesetGrouper] = {}
        self._oracles: list[UsedFilesOracle] = []  # one JVM per readers file, when enabled
        self._user_groupers: dict[str, FilesetGrouper] = {}
        self._regroup_turn = 0
        # Delivered events not handled yet, per user folder, served in turn.
        self._backlog: dict[str, collections.deque[ReadyEvent]] = {}
        self._backlog_turn: collections.deque[str] = collections.deque()
        self._journal_full_until = 0.0  # monotonic time before which no new work is taken
        self._journal_full = False
        # Operator view (status, metrics, status page): counters fed cheaply here.
        self.metrics = EngineMetrics()
        self._skips = SkipLog(self.journal, on_skip=self.metrics.skip)
        self.admission = Admission(
            self.journal,
            self.ownership,
            self._skips,
            require_owner=config.require_owner,
            retry_rewritten=self._retry_rewritten,
        )
        self.http_url: str | None = None  # set by `run --http`, shown by `status`
        self._snapshot = ServiceSnapshot(state_dir)
        self._published = 0.0
        self.shared = shared
        self._shared_link: SharedLink | None = None
        if shared is not None:
            from omero_dropbox.shared_queue import SharedLink  # psycopg only with --queue

            try:
                self._shared_link = SharedLink(shared, self.journal, self._shared_imported)
            except BaseException:
                self.journal.close()  # and its state-directory lock: a retry may start at once
                raise
        store: QueueStore = self._shared_link.store if self._shared_link else self.journal
        importer_run: Importer = InstrumentedImporter(self._checked_import, self.metrics)
        if self._shared_link is not None:
            importer_run = self._shared_link.noting(importer_run)
        self.queue = ImportQueue(
            store,
            importer_run,
            max_concurrent=config.max_concurrent_imports,
            max_running=(shared.max_running or UNCAPPED) if shared else None,
            throttle=min((u.throttle_import for u in config.users), default=0.0),
            max_attempts=config.max_attempts,
            backoff_initial=config.retry_backoff,
            # Shared: the outcome is recorded here when the sync learns it from the queue.
            on_done=self._shared_done if shared else self._import_done,
            name=(shared.worker_name or None) if shared else None,
        )

        self.user_reports = UserReports(
            self.journal, self.ownership, self._waiting_of, enabled=config.user_report and not dry_run
        )
        self.after_imports = AfterImports(
            self.journal, self.ownership, "keep" if dry_run else config.after_import, config.imported_area
        )
        self.annotations = Annotations(
            self.journal,
            None if dry_run else annotator_of(importer),
            retry_every=config.retry_backoff,
            # Attaching outlasts an OMERO outage of hours (30 s doubling to 1 h: ~5.6 h) before
            # it needs an operator; the import it follows is done and safe meanwhile.
            max_attempts=max(12, config.max_attempts),
        )
        # Settings files read for the batch being submitted (emptied before each batch).
        self._settings_cache: dict[str, FolderSettings | None] = {}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Place the watches (with a start-up scan) and start importing."""
        for user_cfg in self.config.users:
            self._grouper(user_cfg)  # now: a bad readers file is said at start-up, not at the first file
        for user_cfg in self.config.users if self._watch else ():
            watch_dir = user_cfg.watch_dir
            if user_cfg.import_user == "default" and not watch_dir.exists():
                # As upstream: the default DropBox directory is created when missing.
                watch_dir.mkdir(parents=True, exist_ok=True)
                log.info("Created DropBox directory %s", watch_dir)
            watcher = Watcher(
                watch_dir,
                mode=user_cfg.path_mode,
                event_types=("all",),
                ignore_sys_files=user_cfg.ignore_sys_files,
                ignore_dir_events=True,
                whitelist=user_cfg.whitelist,
                blacklist=user_cfg.blacklist,
                block_size=user_cfg.block_size,
                settle=self.config.settle,
                backend=self.config.backend,
                poll_interval=self.config.poll_interval,
                initial_scan=True,
            )
            self._watchers.append(watcher)
            # The root's backend, then each mount inside it that has one of its own.
            backends = ", ".join(
                b if i == 0 else f"{b} for mount {p}" for i, (p, b) in enumerate(watcher.backends())
            )
            log.info(
                "Monitor for user %s watching %s (mode=%s, backend=%s)",
                user_cfg.import_user,
                watch_dir,
                user_cfg.path_mode,
                backends,
            )
            t = threading.Thread(
                target=self._pump, args=(watcher,), name=f"watch-{user_cfg.import_user}", daemon=True
            )
            self._threads.append(t)
        if self._shared_link is None:
            resumed = self.queue.start(resume=True)
        else:
            resumed = self._shared_link.start(self.queue)
        self.after_imports.start()
        self.annotations.start()
        for t in self._threads:
            t.start()
        log.info(
            "Started OMERO.fs DropBox client%s", " (dry run: nothing is imported)" if self.dry_run else ""
        )
        if resumed:
            log.info("Resumed %d queued fileset(s) from the journal", len(resumed))

    def run(self) -> None:
        """Start, then process events until :meth:`stop` is called; then drain and close."""
        self.start()
        try:
            while not self._stop.is_set():
                try:
                    self.step(timeout=_TICK)
                except JournalError as exc:
                    # Locked by another process, full, unreadable for a moment: files stay in the
                    # pools and the watcher's queue; the journal itself said what to do.
                    log.error("The journal failed: %s; trying again in %g s", exc, _FULL_RETRY)
                    self._stop.wait(_FULL_RETRY)
        finally:
            self.shutdown()

    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from signal handlers and other threads)."""
        self._stop.set()

    def feed(self, events: Sequence[ReadyEvent]) -> None:
        """Hand over READY events from another source (thread-safe; handled by :meth:`step`).

        Anything with ``path``, ``kind``, ``is_dir`` and ``src_path`` attributes will do
        (:class:`~omero_dropbox.admission.ReadyEvent`); who owns each path is decided here,
        from the configuration, whatever the source.
        """
        if events:
            self._events.put(list(events))

    def shutdown(self, drain_timeout: float | None = 300.0) -> None:
        for w in self._watchers:
            w.close()
        for t in self._threads:
            t.join(timeout=5)
        finished = self.queue.drain(timeout=drain_timeout)
        if not finished:
            log.warning("Imports still running at shutdown; they will run again after restart")
        self.queue.stop()
        if self._shared_link is not None:
            self._shared_link.stop()
        self.after_imports.stop()
        self.annotations.stop()
        for oracle in self._oracles:
            oracle.close()
        self._snapshot.close()
        self.journal.close()
        log.info("Stopped OMERO.fs DropBox client")

    def _pump(self, watcher: Watcher) -> None:
        while not self._stop.is_set():
            batch = watcher.next_batch(timeout=0.5)
            if batch is None:
                return
            if batch:
                self._events.put(list(batch))

    # --------------------------------------------------------------- events

    def step(self, timeout: float = _TICK) -> None:
        """Handle what arrived within ``timeout`` seconds, each user in turn, then start due imports."""
        deadline = time.monotonic() + timeout
        while True:
            self._take_events(None if self._backlog_turn else deadline)
            if not self._backlog_turn:
                break
            self._serve_backlog(deadline)
            if time.monotonic() >= deadline:
                break
        self._regroup_and_submit()
        self._publish_status()
        self.user_reports.tick(time.monotonic(), set(self.aggregator.pools))

    def _waiting_of(self, user: str) -> list[tuple[str, int, str, float]]:
        return self.aggregator.waiting(user, time.monotonic(), self._waits(user))

    def _take_events(self, until: float | None) -> None:
        """Move what the watchers delivered into per-user backlogs; wait until ``until`` for
        the first batch (no wait with None)."""
        try:
            if until is None:
                batch = self._events.get_nowait()
            else:
                batch = self._events.get(timeout=max(0.0, until - time.monotonic()))
        except queue.Empty:
            return
        while True:
            for event in batch:
                owner = self.ownership.backlog_key(event.path)
                backlog = self._backlog.get(owner)
                if backlog is None:
                    backlog = self._backlog[owner] = collections.deque()
                    self._backlog_turn.append(owner)
                backlog.append(event)
            try:
                batch = self._events.get_nowait()
            except queue.Empty:
                return

    def _serve_backlog(self, deadline: float) -> None:
        """Handle backlogged events, :data:`_QUANTUM` per user in turn, until ``deadline``.

        One user's 200,000 junk files then delay another user's file by a few quanta, not by
        the whole burst: the watchers deliver events in time order, all users mixed.
        """
        while self._backlog_turn:
            owner = self._backlog_turn.popleft()
            backlog = self._backlog[owner]
            try:
                with self._journal_batch():  # a burst of skipped files is one commit, not one each
                    for _ in range(min(_QUANTUM, len(backlog))):
                        self._on_event(backlog[0])  # a JournalError leaves it for the next try
                        backlog.popleft()
            finally:
                if backlog:
                    self._backlog_turn.append(owner)
                else:
                    del self._backlog[owner]
            if time.monotonic() >= deadline:
                return

    def _on_event(self, event: ReadyEvent) -> None:
        self.metrics.event(event.kind)
        verdict = self.admission.admit(event)
        now = time.monotonic()
        for path in verdict.gone:
            self.aggregator.drop(path, now)
        if verdict.settings_of is not None:
            owner = verdict.settings_of
            self.aggregator.touch(owner.user, verdict.settings_path, owner.root, now)
            log.info("Folder settings changed: %s", display_path(verdict.settings_path))
        admitted = verdict.admitted
        if admitted is not None:
            self.aggregator.add(admitted.owner.user, admitted.path, admitted.owner.root, now)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "Waiting: %s (%s, user %s)", display_path(admitted.path), event.kind, admitted.owner.user
                )

    def _retry_rewritten(self, path: str, fid: str) -> None:
        """A file of a failed fileset was written again: the user's way of asking for a retry."""
        try:
            self.journal.retry(fid, f"a new copy of {display_path(path)}")
        except JournalError as exc:
            log.info("Not retrying fileset %s for the new copy of %s: %s", fid, display_path(path), exc)
            return
        log.info(
            "%s was written again after its import failed; trying fileset %s again", display_path(path), fid
        )
        self.queue.wake()

    # ------------------------------------------------------------- grouping

    def _grouper(self, user_cfg: UserMonitorConfig | None) -> FilesetGrouper:
        readers = user_cfg.readers if user_cfg is not None else None
        grouper = self._groupers.get(readers)
        if grouper is None:
            oracle = None
            if self.config.bioformats_oracle:
                oracle = UsedFilesOracle(readers, timeout=self.config.bioformats_oracle_timeout)
                self._oracles.append(oracle)
            grouper = self._groupers[readers] = FilesetGrouper(readers, oracle=oracle)
        return grouper

    def _regroup_and_submit(self) -> None:
        """Submit what is due, then regroup what changed: a user whose pool is expensive to
        regroup (thousands of files, a huge key file) delays no other user's due fileset by
        more than one of its regroups."""
        now = time.monotonic()
        if now < self._journal_full_until:
            return  # the journal cannot record new work yet; the pools keep every file
        pools = self.aggregator.pools
        for user, pool in list(pools.items()):
            slot = self._slot(user)
            if slot.background is not None and slot.background.finished():
                self._apply_background(user, pool, slot)
        for user, pool in list(pools.items()):
            idle = self._slot(user).background is None and not pool.dirty
            if pool.files and idle and not self._submit_due(user, now):
                return
        for user in self._regroup_order():
            pool, slot = pools[user], self._slot(user)
            if not (pool.files and pool.dirty and slot.background is None):
                continue
            if time.monotonic() < slot.next_regroup:
                continue
            job = self._start_regroup(user, pool, slot)
            if job.wait(_INLINE_WAIT):  # the common case: done at once, use it in this step
                self._apply_background(user, pool, slot)
                if not self._submit_due(user, time.monotonic()):
                    return
        self._skips.flush()

    def _slot(self, user: str) -> _RegroupSlot:
        slot = self._regroups.get(user)
        if slot is None:
            slot = self._regroups[user] = _RegroupSlot()
        return slot

    def _start_regroup(self, user: str, pool: Pool, slot: _RegroupSlot) -> _BackgroundGrouping:
        """Group the pool on a thread of its own, on a copy of its files.

        Most regroups end within :data:`_INLINE_WAIT` and are used in the same step. One that
        does not (a user's thousands of files, her huge key files) goes on in the background:
        the engine thread serves every other user meanwhile, sharing the interpreter with it
        (so at about half speed) instead of waiting seconds or minutes for this one user.
        """
        owner = self.ownership.of_user(user)
        pool.dirty = False
        with self._journal_batch():  # one commit for the skips; none held while grouping
            pool.files = {p for p in pool.files if self.admission.still_acceptable(user, p)}
        # With the root, a key file that refers to anything outside the user's folder (a
        # `.pattern` naming ../zak/, a link in a folder rule) is refused with its reference.
        job = _BackgroundGrouping(self._user_grouper(owner), frozenset(pool.files), owner.root)
        slot.background = job
        return job

    def _apply_background(self, user: str, pool: Pool, slot: _RegroupSlot) -> None:
        job, slot.background = slot.background, None
        assert job is not None
        # A pool that costs c seconds to regroup waits c seconds before the next one.
        slot.cost = job.seconds
        slot.next_regroup = time.monotonic() + job.seconds
        if job.error is not None:
            log.error("Grouping the files of %s failed: %s; trying again later", user, job.error)
            pool.dirty = True
            return
        assert job.result is not None
        if pool.files != job.files:
            pool.dirty = True  # files came or went meanwhile: this result is for what was there
        self._apply_grouping(user, pool, job.result, time.monotonic(), only=pool.files)

    def _user_grouper(self, owner: Owner) -> FilesetGrouper:
        """The user's own grouper: its caches serve one grouping thread at a time (a user has
        at most one regroup running); the Bio-Formats oracle is shared (it locks)."""
        grouper = self._user_groupers.get(owner.user)
        if grouper is None:
            shared = self._grouper(owner.monitor)
            grouper = FilesetGrouper(owner.monitor.readers, warn=False, oracle=shared.oracle)
            self._user_groupers[owner.user] = grouper
        return grouper

    def _regroup_order(self) -> list[str]:
        """Users in turn, starting one further each step, so that no user always goes last;
        then the cheapest pools first (by their last regroup's cost), so that a user whose
        pool costs seconds to regroup delays no other user's regroup within a step."""
        users = list(self.aggregator.pools)
        if not users:
            return users
        self._regroup_turn = (self._regroup_turn + 1) % len(users)
        users = users[self._regroup_turn :] + users[: self._regroup_turn]
        return sorted(users, key=lambda u: self._slot(u).cost)  # stable: turns kept

    def _apply_grouping(
        self, user: str, pool: Pool, result: GroupingResult, now: float, only: set[str] | None = None
    ) -> None:
        """Take a grouping of the pool's files; with ``only``, keep just what concerns those
        files (a grouping made on an earlier copy of the pool)."""
        waiting = {w.path: w.awaited_keys for w in result.waiting}
        self.aggregator.take_grouping(user, result.filesets, waiting, now, only=only)
        with self._journal_batch():
            for r in result.refused:
                if only is None or r.path in only:
                    pool.files.discard(r.path)
                    self.admission.skip(r.path, user, r.reason)

    @contextlib.contextmanager
    def _journal_batch(self) -> Iterator[None]:
        """Skips journaled in one transaction, their log lines written after its commit.

        A journal that cannot begin or commit the batch loses no file: the skipped files stay
        on disk and are found again after a restart; the log lines are written either way. An
        error of the work inside is not swallowed (the caller keeps what it did not finish).
        """
        with self._skips.hold():
            batch = contextlib.ExitStack()
            try:
                batch.enter_context(self.journal.batch())
            except JournalError as exc:
                log.error("Could not begin a journal batch (skips are recorded one by one): %s", exc)
            body_done = False
            try:
                with batch:
                    yield
                    body_done = True
            except JournalError as exc:
                if not body_done:
                    raise
                log.error("Could not record skipped files in the journal: %s", exc)

    # ------------------------------------------------------------- submission

    def _waits(self, user: str) -> Waits:
        monitor = self.ownership.of_user(user).monitor
        return Waits(monitor.dir_import_wait, self.config.complete_wait)

    def _submit_due(self, user: str, now: float) -> bool:
        """Submit the filesets of ``user`` whose wait is over; False while the journal is full."""
        due, given_up = self.aggregator.due(
            user, now, self._waits(user), self._disk, unread=bool(self._backlog.get(user))
        )
        for start in range(0, len(due), _SUBMIT_BATCH):
            if not self._submit_unless_full(user, due[start : start + _SUBMIT_BATCH]):
                for rest in due[start + _SUBMIT_BATCH :]:
                    self.aggregator.put_back(user, (f for f in rest.files if os.path.lexists(f)))
                return False
        self._skip_given_up(user, given_up)
        return True

    def _skip_given_up(self, user: str, given_up: list[GiveUp]) -> None:
        for g in given_up:
            self.admission.skip(g.path, user, g.reason)

    def _submit_unless_full(self, user: str, filesets: Sequence[Fileset]) -> bool:
        """Submit ``filesets``; if the state disk is full, keep their files waiting and pause
        new work.

        Returns False while the journal is full.  Nothing is lost: the files stay in the
        pool (and would be found again by the start-up scan after a restart).
        """
        self._settings_cache.clear()
        ready = [p for p in (self._prepare(user, fs) for fs in filesets) if p is not None]
        try:
            self._submit(user, ready)
            # The journal now has what the snapshot still counts as waiting: refresh it in
            # this step, or `status` counts the files twice until the next refresh.
            self._published = float("-inf")
        except (JournalFullError, JournalBusyError) as exc:
            if not self._journal_full:
                busy = isinstance(exc, JournalBusyError)
                log.error(
                    "Not taking new work: %s. Imports resume by themselves once %s; checking again "
                    "every %g s",
                    exc,
                    "the other process releases the journal"
                    if busy
                    else "space is free (or move --state-dir to a disk with room)",
                    _FULL_RETRY,
                )
            self._journal_full = True
            self._journal_full_until = time.monotonic() + _FULL_RETRY
            self.aggregator.put_back(user, (f for p in ready for f in p.fs.files if os.path.lexists(f)))
            return False
        if self._journal_full:
            self._journal_full = False
            log.warning(
                "The journal can be written again (space available again, or its lock released); "
                "taking new work"
            )
        return True

    def _record(
        self,
        user: str,
        fs: Fileset,
        fid: str,
        identities: list[tuple[FileIdentity, int]],
        plan: ImportPlan,
    ) -> FilesetRecord | None:
        """Journal the files and the fileset; None if the fileset was imported (or started) before."""
        for f, (ident, mtime_ns) in zip(fs.files, identities, strict=True):
            self.journal.record_file(f, user, ident, mtime_ns)
        # The first MISSING_KEPT suffice to tell a late member; a key file may name 100,000.
        missing = fs.missing[:MISSING_KEPT]
        # A fileset already started or finished comes back unchanged (nothing written): no
        # look-up of its own is needed first.
        record = self.journal.upsert_fileset(fid, user, fs.key, list(fs.files), fs.format, missing)
        if record.state not in (FilesetState.WAITING, FilesetState.QUEUED):
            if record.state == FilesetState.IMPORTED:
                log.info(
                    "Already imported: %s (fileset=%s, same content as before); not importing again",
                    display_path(fs.key),
                    fid,
                )
            elif record.state != FilesetState.IMPORTING:
                log.info("Fileset %s is %s in the journal; not importing again", fid, record.state)
            return None
        if record.state == FilesetState.WAITING:
            # Queued in the same transaction; the workers are woken after the commit.
            why = f"incomplete, without {_some(fs.missing)}" if fs.missing else "complete"
            where = f" with the settings of {_sources(plan)}" if plan.sources else ""
            self.journal.enqueue(fid, reason=f"{why}; queued for import{where}", plan=_plan_json(plan))
            record = replace(record, state=FilesetState.QUEUED)
        return record

    def _identity(self, user: str, path: str) -> tuple[FileIdentity, int]:
        """The journal identity and mtime of a member, read through the walk from the watch
        directory."""
        owner = self.ownership.of_user(user)
        with open_beneath(str(owner.monitor.watch_dir), owner.root, path) as (fd, st):
            return fd_identity(fd, st), st.st_mtime_ns

    def _plan(self, user: str, fs: Fileset) -> ImportPlan | None:
        """The folder settings in force for ``fs`` (its key file's folder); None when a
        settings file is bad: the fileset then waits, with the file's error as its reason."""
        if not self.config.folder_settings:
            return ImportPlan()
        owner = self.ownership.of_user(user)
        try:
            plan = plan_for(
                str(owner.monitor.watch_dir),
                owner.root,
                user,
                os.path.dirname(fs.key),
                self.config.folder_import_args,
                cache=self._settings_cache,
            )
        except SettingsError as exc:
            reason = (
                f"the folder settings cannot be used: {exc}; it waits until that file is fixed or removed"
            )
            if self.aggregator.block(user, fs, reason, time.monotonic() + _SETTINGS_RECHECK):
                log.warning("Not importing %s yet: %s", display_path(fs.key), exc)
            return None
        self.aggregator.unblock(user, fs.key)
        return plan

    def _prepare(self, user: str, fs: Fileset) -> _Prepared | None:
        """The journal identities of the members of ``fs``, each read through the walk from the
        watch directory, and its folder settings; None (the fileset's files skipped or back in
        the pool) if a member changed since it was grouped or a settings file is bad."""
        plan = self._plan(user, fs)
        if plan is None:
            return None
        identities = []
        try:
            for member in fs.files:
                identities.append(self._identity(user, member))
        except FileRefused as exc:
            # A link renamed over a member (or over a directory above it) since it was reported.
            self.admission.skip(member, user, f"not imported: {exc}")
            self._return_to_pool(user, [f for f in fs.files if f != member])
            return None
        except (OSError, ValueError) as exc:
            log.warning("Fileset %s changed before import (%s); regrouping", display_path(fs.key), exc)
            self._return_to_pool(user, fs.files)
            return None
        return _Prepared(fs, fileset_id(ident for ident, _mtime in identities), identities, plan)

    def _submit(self, user: str, ready: Sequence[_Prepared]) -> None:
        """Journal and queue ``ready`` filesets.

        One transaction for the files, the filesets and their `queued` state, for up to
        :data:`_SUBMIT_BATCH` filesets: a mass copy is bound by commits (one fsync each). A
        power cut before the commit loses the recording of these filesets only: nothing of
        them was queued or imported, and their files, still on disk, are found again by the
        start-up scan. The import queue learns of them only after the commit, so that no
        worker can see a fileset that may yet be rolled back.
        """
        if not ready:
            return
        with self.journal.batch():
            records = [(p.fs, p.fid, self._record(user, p.fs, p.fid, p.identities, p.plan)) for p in ready]
        for fs, fid, record in records:
            if record is not None:
                self._queue_recorded(user, fs, fid, record)

    def _queue_recorded(self, user: str, fs: Fileset, fid: str, record: FilesetRecord) -> None:
        if record.state in (FilesetState.WAITING, FilesetState.QUEUED):
            if fs.missing:
                log.warning(
                    "Fileset %s (%d file(s), %s) for user %s is incomplete: %d file(s) its key file "
                    "names never arrived (%s); queued without them (fileset=%s)",
                    display_path(fs.key),
                    len(fs.files),
                    fs.format,
                    user,
                    len(fs.missing),
                    _some(fs.missing),
                    fid,
                )
            else:
                log.info(
                    "Fileset %s (%d file(s), %s) for user %s is complete; queued (fileset=%s)",
                    display_path(fs.key),
                    len(fs.files),
                    fs.format,
                    user,
                    fid,
                )
            self.queue.wake()
            if self._shared_link is not None:
                self._shared_link.sync.wake()
        elif record.state == FilesetState.SKIPPED:
            log.info("Fileset %s was skipped before: %s", fid, record.last_error)

    def _return_to_pool(self, user: str, files: Iterable[str]) -> None:
        self.aggregator.put_back(user, (f for f in files if os.path.lexists(f)))

    # ------------------------------------------------------------- at use

    def _checked_import(self, request: ImportRequest) -> ImportResult:
        """Run the importer only on the very files that were grouped, and look again after.

        Right before the import every member is opened again from the watch directory
        without following links and must be the same file (device and inode) that was
        journaled; right after, the same check tells whether a member was swapped while
        the importer read it. What remains is the window between two checks in which a
        member is swapped and swapped back (RELIABILITY.md, "Threat model").

        A fileset of another watcher node (claimed from the shared queue) is not in this
        journal: it is imported unchecked, as by ``omero-dropbox worker``.
        """
        if self.shared is not None and self.journal.fileset_by_id(request.fileset_id) is None:
            return self._importer(request)
        before = self._members_changed(request)
        if before:
            reason = f"not imported: {before}; copy the files in again to import them"
            log.error("Not importing %s: %s", display_path(request.key), before)
            return ImportResult.failure(reason, transient=False)
        result = self._importer(request)
        after = self._members_changed(request)
        if after:
            log.error(
                "A member of %s (fileset=%s) changed while it was imported: %s",
                display_path(request.key),
                request.fileset_id,
                after,
            )
            reason = (
                f"a member changed while it was imported: {after}; the import may hold other data, "
                "check it in OMERO before retrying"
            )
            return ImportResult.failure(reason, transient=False, output=result.output, stderr=result.stderr)
        return result

    def _members_changed(self, request: ImportRequest) -> str:
        """Why a member is not the file that was journaled, or "" if every member is."""
        owner = self.ownership.of_user(request.user)
        trusted, root = str(owner.monitor.watch_dir), owner.root
        for path in request.files:
            try:
                found = check_beneath(trusted, root, path)
            except FileRefused as exc:
                return str(exc)
            except OSError as exc:
                return f"{display_path(path)} cannot be opened ({exc.strerror or exc})"
            record = self.journal.file_state(path)
            known = record.identity if record is not None else None
            if known is None or (found.ino, found.size) != (known.ino, known.size):
                return f"{display_path(path)} is not the file that was grouped (replaced or rewritten)"
        return ""

    # ------------------------------------------------------- operator view

    def retry(self, fileset_id: str, actor: str) -> None:
        """Re-queue a failed fileset now (the status page's retry button)."""
        self.journal.retry(fileset_id, actor)
        log.info("Retry of fileset %s requested by %s", fileset_id, actor)
        self.queue.wake()
        if self._shared_link is not None:
            self._shared_link.sync.wake()

    def _shared_done(self, fid: str, result: ImportResult) -> None:
        """A local worker's import from the shared queue ended: let the sync learn it now."""
        if self._shared_link is not None:
            self._shared_link.sync.wake()

    def _shared_imported(self, fid: str, objects: Sequence[str]) -> None:
        """The sync recorded ``fid`` imported here (by any worker): the single-host follow-ups,
        with the OMERO objects its worker noted in the shared queue."""
        self._import_done(fid, replace(ImportResult.success(returncode=None), objects=tuple(objects)))

    def _import_done(self, fid: str, result: ImportResult) -> None:
        if not result.ok:
            return
        objects = result.objects or parse_omero_objects(result.output)
        if objects:
            self.journal.record_objects(fid, objects)
        if self.annotations.annotator is not None:
            rec = self.journal.fileset_by_id(fid)
            if rec is not None and rec.plan:
                self.annotations.imported(fid, ImportPlan.from_json(rec.plan))
        self.after_imports.imported(fid)

    def runtime_status(self) -> LiveStatus:
        """What only the running service knows: waiting files, queue, watcher counters."""
        waiting: dict[str, int] = {}
        for user, pool in list(self.aggregator.pools.items()):
            n = pool.waiting_count()
            if n:
                waiting[user] = n
        watcher: dict[str, int] = {}
        for w in list(self._watchers):
            try:
                stats = w.stats()
            except Exception:  # closed during shutdown
                continue
            for k, v in stats.items():
                watcher[k] = watcher.get(k, 0) + int(v)
        return {
            "waiting": waiting,
            "queue": self.queue.snapshot(),
            "watcher": watcher,
            "http": self.http_url,
            "watching": len(self._watchers),
        }

    def _publish_status(self) -> None:
        now = time.monotonic()
        if self.dry_run or now - self._published < _PUBLISH_EVERY:
            return
        self._published = now
        self._snapshot.update(self.runtime_status())

    # ---------------------------------------------------------------- dry run

    def _dry_run_importer(self, request: ImportRequest) -> ImportResult:
        # Not wrapped as an importer: it must not log "Importing ..." / "Import of ... completed".
        log.info(
            "Dry run: would import %s as %s now (fileset=%s, %d file(s), format %s)",
            display_path(request.key),
            request.user,
            request.fileset_id,
            len(request.files),
            request.format,
        )
        return ImportResult.success(returncode=None)
