"""The import workers: bounded concurrency, throttling and retries over the journal's queue.

The queue itself is the journal (:mod:`omero_dropbox.queue_store`): ``queued`` filesets are
the work, and :meth:`~omero_dropbox.queue_store.QueueStore.claim_next` picks the next one.
This module only runs it:

* **Fair**: the store serves users in turn (round robin, in SQL), so one user's 10,000
  filesets do not starve another user's one.
* **Bounded**: ``max_concurrent`` worker threads, and the store starts no import while
  ``max_running`` (default: ``max_concurrent``) are ``importing`` in the whole journal, so
  that the limit holds across processes sharing it.
* **Throttled**: ``throttle`` seconds between import *starts*, globally, as upstream
  ``omero.fs.throttleImport``; unlike upstream, waiting for the throttle blocks no one
  else (``submit`` stays instant).
* **Retried**: :mod:`omero_dropbox.retry_policy` says what a failure becomes: queued again
  with a back-off time (the store claims it no earlier), or ``failed`` with the reason.
* **Durable**: every state change is a journal transaction
  (``queued -> importing -> imported | queued (retry) | failed``); ``start()`` puts back
  what a crash left ``importing``.  ``waiting`` filesets (still being debounced when the
  service stopped) belong to the engine, which re-debounces them and submits them.
* **Once**: a claim moves the fileset to ``importing`` in the same transaction that picks
  it, so no two workers (threads or processes) ever run it at the same time, and a result
  is recorded only under the claim's fencing token.

Workers sleep until the earliest back-off time or until :meth:`ImportQueue.submit` or
:meth:`ImportQueue.wake` (this process queued something), and look at the store at least
every :data:`POLL` seconds, which is how another process's change (``omero-dropbox retry``)
is found.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from omero_dropbox.folder_settings import ImportPlan
from omero_dropbox.importers import (
    RUNNING_IMPORTERS,
    ImportRequest,
    ImportResult,
    PermanentImportError,
    as_importer,
    display,
)
from omero_dropbox.journal import (
    INTERRUPTED_REASON,
    RECLAIMED_REASON,
    FilesetRecord,
    JournalBusyError,
    JournalError,
    JournalFullError,
    StaleClaimError,
    StoreUnreachableError,
)
from omero_dropbox.queue_store import Claim, QueueStore
from omero_dropbox.retry_policy import RetryPolicy
from omero_dropbox.states import FilesetState

__all__ = ["ImportQueue"]

log = logging.getLogger("omero_dropbox.queue")

OnDone = Callable[[str, ImportResult], None]

# While the journal's disk is full (or another process locks it), try to record a finished
# import again this often.
_FULL_RETRY = 2.0
#: After the drain deadline, seconds between SIGTERM and SIGKILL to the importers still running.
END_GRACE = 10.0
#: Longest sleep of an idle worker before it looks at the store again (another process may
#: have queued something: ``omero-dropbox retry``).
POLL = 1.0

# At most one "Cannot start import" error per this many seconds (the rest go to debug).
JOURNAL_ERROR_LOG_EVERY = 60.0
#: Longest pause between two claims that failed because the shared store cannot be reached:
#: the pause doubles from 1 s up to this.
MAX_CLAIM_PAUSE = 30.0


class ImportQueue:
    """Runs imports of the store's queued filesets; see the module docstring.

    Typical use::

        queue = ImportQueue(journal, importer, max_concurrent=2, throttle=10)
        queue.start()              # puts back what a crash left importing
        queue.submit(record)       # from the engine, when a fileset is complete
        ...
        queue.drain(timeout=60)    # on SIGTERM: finish running imports, start no more
    """

    def __init__(
        self,
        store: QueueStore,
        importer: Callable[[ImportRequest], Any],
        *,
        max_concurrent: int = 1,
        max_running: int | None = None,
        throttle: float = 0.0,
        max_attempts: int = 5,
        backoff_initial: float = 30.0,
        backoff_factor: float = 2.0,
        backoff_max: float = 3600.0,
        on_done: OnDone | None = None,
        name: str | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, not {max_concurrent!r}")
        if throttle < 0:
            raise ValueError(f"throttle must be >= 0 seconds, not {throttle!r}")
        self.policy = RetryPolicy(max_attempts, backoff_initial, backoff_factor, backoff_max)
        self.store = store
        self.importer = as_importer(importer)
        self.max_concurrent = max_concurrent
        if max_running is not None and max_running < 1:
            raise ValueError(f"max_running must be >= 1, not {max_running!r}")
        self.max_running = max_running or max_concurrent
        self.throttle = throttle
        self.on_done = on_done
        # Names this process's claims in the journal (claimed_by).
        self._name = name or f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"

        self._cond = threading.Condition()
        self._running: dict[str, Claim] = {}
        # Claims a shared store said are no longer ours (heartbeat refused): nothing more is
        # started for them, and their result is refused by the store anyway.
        self._lost: set[tuple[str, int]] = set()
        self._claiming = False  # one claim at a time here, so that the throttle holds
        self._wakes = 0  # counts submits and finished imports: an idle worker looks again
        self._idle_until = 0.0  # monotonic: nothing to claim before then, unless woken
        self._idle_wakes = 0
        self._last_start: float | None = None
        self._threads: list[threading.Thread] = []
        self._accepting = True
        self._draining = False
        self._stopping = False
        # Set at the drain deadline: the imports still running are ended and their outcome is
        # not recorded, so that they stay `importing` (found interrupted at the next start).
        self._abandoned = False
        #: When set (``omero-dropbox run`` reads $OMERO_DROPBOX_DRAIN_TIMEOUT), :meth:`drain`
        #: waits this long, whatever timeout its caller gives.
        self.drain_timeout: float | None = None
        # A journal that cannot be written (full disk) fails every start the same way:
        # one message per JOURNAL_ERROR_LOG_EVERY, with a count of the ones not shown.
        self._journal_error_logged_at: float | None = None
        self._journal_errors_not_logged = 0
        # Claims failed in a row (the store unreachable): the pause between tries doubles.
        self._claim_failures = 0

    @property
    def max_attempts(self) -> int:
        return self.policy.max_attempts

    # -- public API ---------------------------------------------------------------------

    def start(self, resume: bool = True) -> list[str]:
        """Start the workers.  With ``resume`` (only the service holding the state directory
        may), first put back what a crash left ``importing`` and fail what crashed too often.

        Returns the ids queued at the start.  Queued filesets are imported either way: the
        store is the queue.
        """
        resumed: list[str] = []
        if resume:
            for rec in self.store.recover_interrupted():
                log.warning(
                    "Import of %s (fileset=%s) was interrupted by a crash or restart; it will run again",
                    display(rec.key),
                    rec.id,
                )
            for rec in self.store.exhausted(self.policy.max_attempts):
                self._give_up_exhausted(rec)
            resumed = self.store.queued_ids()
            if resumed:
                log.info("Resuming %d queued import(s) from the journal", len(resumed))
        with self._cond:
            if self._threads:
                raise RuntimeError("ImportQueue.start() called twice")
            for i in range(self.max_concurrent):
                t = threading.Thread(target=self._worker, name=f"import-{i + 1}", daemon=True)
                self._threads.append(t)
                t.start()
        return resumed

    def _give_up_exhausted(self, rec: FilesetRecord) -> None:
        # Only reachable after crashes during imports (recover_interrupted keeps the count):
        # an import that kills the service every time must not loop forever.
        reason = self.policy.exhausted_reason(rec.attempts, rec.last_error)
        if self.store.give_up(rec.id, reason):
            _log_gave_up(rec.id, rec.key, rec.user, rec.attempts, rec.last_error or "?", permanent=False)
            self._done(rec.id, ImportResult.failure(reason, transient=False))

    def submit(self, record: FilesetRecord | str, reason: str = "complete; queued for import") -> bool:
        """Queue a fileset for import; returns whether it was queued now.

        A ``waiting`` fileset is moved to ``queued``.  Already queued or running, already
        imported, failed or skipped: nothing happens (logged at DEBUG).  An unknown id
        raises ``KeyError``.
        """
        fid = record.id if isinstance(record, FilesetRecord) else record
        with self._cond:
            if not self._accepting:
                log.warning("Not queueing fileset %s: the import queue is shutting down", fid)
                return False
        try:
            was = self.store.enqueue(fid, reason)
        except JournalError as e:
            if "unknown fileset" in str(e):
                raise KeyError(f"unknown fileset {fid}: record it with upsert_fileset() first") from e
            raise
        if was == FilesetState.WAITING:
            self.wake()
            return True
        if was == FilesetState.IMPORTED:
            log.debug("Fileset %s was already imported", fid)
        elif was in (FilesetState.QUEUED, FilesetState.IMPORTING):
            log.debug("Fileset %s is already queued or importing", fid)
        else:
            log.debug("Not queueing fileset %s: it is %s", fid, was)
        return False

    def wake(self) -> None:
        """Something was queued in this process (committed): let an idle worker look now."""
        with self._cond:
            self._wakes += 1
            self._cond.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Graceful shutdown: start nothing new, wait for running imports.

        Queued filesets stay ``queued`` in the journal for the next start.
        Returns ``True`` if every running import finished within ``timeout``
        (:attr:`drain_timeout` instead, when set).  Importer processes still running
        then are ended (their process groups: SIGTERM, then SIGKILL after
        :data:`END_GRACE` s); their filesets stay ``importing`` and run again at the next
        start, which the journal records as an interrupted import.
        """
        if self.drain_timeout is not None:
            timeout = self.drain_timeout
        with self._cond:
            self._accepting = False
            self._draining = True
            self._cond.notify_all()
            # A claim under way is waited for too: it may be about to start an import.
            done = self._cond.wait_for(lambda: not self._running and not self._claiming, timeout)
            self._abandoned = not done
            self._stopping = True
            self._cond.notify_all()
            threads = list(self._threads)
        if not done:
            self._end_running(threads)
        else:
            for t in threads:
                t.join(1.0)
        return done

    def _end_running(self, threads: list[threading.Thread]) -> None:
        """End the importer processes of ``threads`` and wait (briefly) for their workers."""
        ended = RUNNING_IMPORTERS.end([t.ident for t in threads if t.ident is not None], END_GRACE)
        if ended:
            log.warning(
                "Ended %d importer(s) still running at the drain deadline (process group(s) %s); "
                "their filesets run again at the next start",
                len(ended),
                " ".join(map(str, ended)),
            )
        with self._cond:
            # The workers return without recording the ended imports; one that succeeded just now
            # is still recorded, before the journal closes.
            self._cond.wait_for(lambda: not self._running, END_GRACE)

    def stop(self) -> None:
        """Stop at once: start nothing new and do not wait for running imports.

        An import still running when the process exits is found ``importing`` at the
        next start and runs again (the journal says so).
        """
        with self._cond:
            self._accepting = False
            self._draining = True
            self._stopping = True
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued (due or in back-off) and nothing runs here."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if not self._running and not self._claiming:
                    ready, delayed = self.store.queue_counts(time.time())
                    if ready + delayed == 0:
                        return True
                left = POLL if deadline is None else min(POLL, deadline - time.monotonic())
                if left <= 0:
                    return False
                self._cond.wait(left)

    @property
    def running(self) -> frozenset[str]:
        with self._cond:
            return frozenset(self._running)

    def running_claims(self) -> list[Claim]:
        """The claims this process's workers hold now (for heartbeats)."""
        with self._cond:
            return list(self._running.values())

    def lose(self, claim: Claim) -> None:
        """The store no longer knows ``claim`` as current (its lease ran out and it was taken
        back): if its import has not started yet, it is not started."""
        with self._cond:
            if self._running.get(claim.id) is claim:
                self._lost.add((claim.id, claim.token))

    def snapshot(self) -> dict[str, int]:
        """Counts for status pages: ready, delayed (retry back-off) and running (here)."""
        ready, delayed = self.store.queue_counts(time.time())
        with self._cond:
            return {"ready": ready, "delayed": delayed, "running": len(self._running)}

    def __enter__(self) -> ImportQueue:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.drain()

    # -- taking work --------------------------------------------------------------------

    def _next(self) -> Claim | None:
        """Block until this worker claimed a fileset; ``None`` when it should exit."""
        with self._cond:
            while True:
                if self._draining:
                    return None
                now = time.monotonic()
                wait: float | None = None
                if self._claiming:
                    wait = None  # another worker is claiming: its outcome decides
                elif (
                    self.throttle and self._last_start is not None and now < self._last_start + self.throttle
                ):
                    wait = self._last_start + self.throttle - now
                elif now < self._idle_until and self._wakes == self._idle_wakes:
                    wait = self._idle_until - now
                else:
                    self._claiming = True
                    wakes = self._wakes
                    self._cond.release()
                    try:
                        claim, pause = self._claim()
                    finally:
                        self._cond.acquire()
                        self._claiming = False
                        self._cond.notify_all()
                    if claim is not None:
                        self._running[claim.id] = claim
                        self._last_start = time.monotonic()
                        self._idle_until = 0.0  # there may be more: the next idle worker looks
                        return claim
                    self._idle_until = time.monotonic() + pause
                    self._idle_wakes = wakes
                    continue
                self._cond.wait(wait)

    def _claim(self) -> tuple[Claim | None, float]:
        """The next fileset from the store, or None and how long nothing is due."""
        try:
            claim = self.store.claim_next(time.time(), worker=self._name, max_running=self.max_running)
            if claim is None:
                due = self.store.next_due_at()
        except JournalError as e:
            with self._cond:
                self._claim_failures += 1
                failures = self._claim_failures
            delay = max(self.policy.backoff_initial, 1.0)
            if isinstance(e, StoreUnreachableError):
                # Each try may cost a connect timeout: back off, from 1 s so that a restarted
                # server is used again soon.  A local journal (a full disk, another process's
                # lock) is cheap to look at again every time.
                delay = min(2.0 ** min(failures - 1, 16), MAX_CLAIM_PAUSE)
            self._log_journal_error(e, delay)
            return None, delay
        with self._cond:
            failures, self._claim_failures = self._claim_failures, 0
            if failures:
                self._journal_error_logged_at = None  # the next outage is said at once
        if failures:
            log.warning("The queue can be read again after %d failed tries; claiming again", failures)
        if claim is not None:
            return claim, 0.0
        now = time.time()
        if due is None or due <= now:
            # Nothing queued, or due but every slot taken: a finish here wakes us, another
            # process's change is found at the next poll.
            return None, POLL
        return None, min(POLL, due - now)

    def _worker(self) -> None:
        while True:
            claim = self._next()
            if claim is None:
                return
            try:
                self._process(claim)
            except Exception:
                log.exception("Unexpected error while importing fileset %s", claim.id)
            finally:
                with self._cond:
                    self._running.pop(claim.id, None)
                    self._lost.discard((claim.id, claim.token))
                    self._wakes += 1  # a slot is free
                    self._cond.notify_all()

    def _log_journal_error(self, error: JournalError, delay: float) -> None:
        now = time.monotonic()
        with self._cond:
            last = self._journal_error_logged_at
            if last is not None and now - last < JOURNAL_ERROR_LOG_EVERY:
                self._journal_errors_not_logged += 1
                log.debug("Cannot start import of the next queued fileset: %s", error)
                return
            not_logged, self._journal_errors_not_logged = self._journal_errors_not_logged, 0
            self._journal_error_logged_at = now
        log.error(
            "Cannot start import of the next queued fileset: %s; trying again in %.3g s (%d more "
            "starts failed the same way since the last such message)",
            error,
            delay,
            not_logged,
        )

    # -- one import ---------------------------------------------------------------------

    def _process(self, claim: Claim) -> None:
        rec, fid = claim.record, claim.id
        attempt = rec.attempts  # the claim counted this attempt
        request = ImportRequest(
            user=rec.user,
            key=rec.key,
            files=rec.members,
            fileset_id=fid,
            format=rec.format,
            attempt=attempt,
            # (the OMERO importer then re-runs with --exclude=clientpath: nothing twice)
            interrupted=rec.last_error in (INTERRUPTED_REASON, RECLAIMED_REASON),
            plan=_journaled_plan(rec.plan),
        )
        with self._cond:
            lost = (fid, claim.token) in self._lost
        if lost:
            log.warning(
                "Not importing %s (fileset=%s): claim %d was taken back before its import started "
                "(its lease ran out); another worker imports it",
                display(rec.key),
                fid,
                claim.token,
            )
            return
        try:
            if request.plan is None:
                raise PermanentImportError(
                    "the folder settings journaled with this fileset cannot be read; "
                    "`omero-dropbox forget` its key file and copy it in again"
                )
            result = self.importer(request)
            if not isinstance(result, ImportResult):
                result = ImportResult.failure(
                    f"importer returned {type(result).__name__}, not ImportResult",
                    transient=False,
                )
        except PermanentImportError as e:
            result = ImportResult.failure(str(e) or type(e).__name__, transient=False)
        except Exception as e:
            log.exception("Importer raised while importing fileset %s", fid)
            result = ImportResult.failure(f"{type(e).__name__}: {e}", transient=True)

        if self._abandoned and not result.ok:
            log.warning(
                "Import of %s (fileset=%s) was ended at shutdown; it stays importing and runs again "
                "at the next start",
                display(rec.key),
                fid,
            )
            return
        decision = self.policy.decide(attempt, result.ok, result.transient, result.reason)
        if decision.retry_in is not None:
            delay = decision.retry_in
            if self._finish(claim, decision.state, decision.reason, next_attempt_at=time.time() + delay):
                log.warning(
                    "Import of %s will be retried in %.3g s (attempt %d of %d failed)",
                    display(rec.key),
                    delay,
                    attempt,
                    self.policy.max_attempts,
                )
        else:
            self._finish(claim, decision.state, decision.reason)
            if decision.gave_up:
                _log_gave_up(fid, rec.key, rec.user, attempt, result.reason, permanent=not result.transient)
        self._done(fid, result)

    def _finish(
        self, claim: Claim, state: FilesetState, reason: str, *, next_attempt_at: float | None = None
    ) -> bool:
        fid = claim.id
        full = False
        while True:
            try:
                self.store.finish(fid, claim.token, state, reason, next_attempt_at)
                if full:
                    log.warning(
                        "Fileset %s recorded as %s now that the journal can be written again "
                        "(it has space again, or no other process locks it)",
                        fid,
                        state,
                    )
                return True
            except StaleClaimError as e:
                log.warning(
                    "Not recording the result of fileset %s: %s. Its claim was taken back (a lease "
                    "that ran out, or a restart), so the fileset's current claim decides its outcome",
                    fid,
                    e,
                )
                return False
            except (JournalFullError, JournalBusyError) as e:
                # The outcome is known but cannot be written: hold it (and this worker) until
                # space returns or the other process lets go, so that a finished import is not
                # run again after a restart.
                error: JournalError = e
                if not full:
                    log.error(
                        "Fileset %s is %s but the journal cannot record it: %s; holding the result "
                        "and trying again every %g s",
                        fid,
                        state,
                        e,
                        _FULL_RETRY,
                    )
                full = True
                with self._cond:
                    if not self._cond.wait_for(lambda: self._stopping, _FULL_RETRY):
                        continue
            except JournalError as e:
                error = e
            log.error(
                "Fileset %s should now be %s but the journal could not record it: %s; "
                "after a restart it is found interrupted and runs again",
                fid,
                state,
                error,
            )
            return False

    def _done(self, fid: str, result: ImportResult) -> None:
        if self.on_done is None:
            return
        try:
            self.on_done(fid, result)
        except Exception:
            log.exception("on_done callback failed for fileset %s", fid)


def _journaled_plan(text: str) -> ImportPlan | None:
    """The folder settings journaled with a fileset; None if they cannot be read back."""
    try:
        return ImportPlan.from_json(text)
    except (ValueError, TypeError, AttributeError):
        return None


def _log_gave_up(fid: str, key: str, user: str, attempts: int, reason: str, *, permanent: bool) -> None:
    """The one line saying a fileset will not be tried again by itself, and what to do."""
    lines = [line.strip() for line in (reason or "import failed").splitlines() if line.strip()] or ["?"]
    last = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    why = (
        "the failure is permanent, so it was not retried"
        if permanent
        else "the last allowed by omero.fs.ng.maxAttempts"
    )
    log.error(
        "Gave up on fileset %s (%s as %s) after %d attempt(s), %s; last reason: %s. Fix the cause, "
        "then `omero-dropbox retry %s` (or --all-failed, or the status page) imports it again",
        fid,
        display(key),
        user,
        attempts,
        why,
        last[:500],
        fid[:12],
    )
