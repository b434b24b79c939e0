"""The import scheduler: fairness, bounded concurrency, throttling and retries.

* **Fair**: one FIFO per user, served round-robin, so one user's 10,000 filesets do
  not starve another user's one.
* **Bounded**: ``max_concurrent`` worker threads, hence at most that many imports
  at once (upstream had no cap).
* **Throttled**: ``throttle`` seconds between import *starts*, globally, as
  upstream ``omero.fs.throttleImport``; unlike upstream, waiting for the throttle
  blocks no one else (``submit`` stays instant).
* **Retried**: a transient failure is re-queued with exponential back-off
  (``backoff_initial`` doubling by ``backoff_factor`` up to ``backoff_max``) until
  ``max_attempts`` attempts, then ``failed`` with the reason; a permanent failure
  fails at once.
* **Durable**: every state change goes through the :class:`~omero_dropbox.journal.Journal`
  first (``queued -> importing -> imported | queued (retry) | failed``); ``start()``
  re-queues filesets a crash left ``importing`` and resumes every ``queued`` one,
  keeping its back-off time.  ``waiting`` filesets (still being debounced when the
  service stopped) belong to the engine, which re-debounces them and submits them.
* **Once**: a fileset id is never queued or running twice at the same time, and
  submitting an imported fileset is a no-op.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from omero_dropbox.importers import (
    RUNNING_IMPORTERS,
    ImportRequest,
    ImportResult,
    PermanentImportError,
    as_importer,
    display,
)
from omero_dropbox.journal import (
    FAILED,
    IMPORTED,
    IMPORTING,
    INTERRUPTED_REASON,
    QUEUED,
    WAITING,
    FilesetRecord,
    InvalidTransitionError,
    Journal,
    JournalBusyError,
    JournalError,
    JournalFullError,
)

__all__ = ["ImportQueue"]

log = logging.getLogger("omero_dropbox.queue")

OnDone = Callable[[str, ImportResult], None]

# While the journal's disk is full (or another process locks it), try to record a finished
# import again this often.
_FULL_RETRY = 2.0
#: After the drain deadline, seconds between SIGTERM and SIGKILL to the importers still running.
END_GRACE = 10.0

# At most one "Cannot start import" error per this many seconds (the rest go to debug).
JOURNAL_ERROR_LOG_EVERY = 60.0


class ImportQueue:
    """Runs imports of journal filesets; see the module docstring.

    Typical use::

        queue = ImportQueue(journal, importer, max_concurrent=2, throttle=10)
        queue.start()              # resumes what a previous run left
        queue.submit(record)       # from the engine, when a fileset is complete
        ...
        queue.drain(timeout=60)    # on SIGTERM: finish running imports, start no more
    """

    def __init__(
        self,
        journal: Journal,
        importer: Callable[[ImportRequest], Any],
        *,
        max_concurrent: int = 1,
        throttle: float = 0.0,
        max_attempts: int = 5,
        backoff_initial: float = 30.0,
        backoff_factor: float = 2.0,
        backoff_max: float = 3600.0,
        on_done: OnDone | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, not {max_concurrent!r}")
        if throttle < 0:
            raise ValueError(f"throttle must be >= 0 seconds, not {throttle!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, not {max_attempts!r}")
        if backoff_initial < 0 or backoff_max < 0 or backoff_factor < 1:
            raise ValueError(
                "backoff_initial and backoff_max must be >= 0 and backoff_factor >= 1, not "
                f"{backoff_initial!r}, {backoff_max!r}, {backoff_factor!r}"
            )
        self.journal = journal
        self.importer = as_importer(importer)
        self.max_concurrent = max_concurrent
        self.throttle = throttle
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_factor = backoff_factor
        self.backoff_max = backoff_max
        self.on_done = on_done

        self._cond = threading.Condition()
        self._submit_lock = threading.Lock()
        self._per_user: dict[str, deque[str]] = {}
        self._rr: deque[str] = deque()  # users that have ready work, in serving order
        self._delayed: list[tuple[float, int, str, str]] = []  # (due monotonic, seq, id, user)
        self._delayed_ids: set[str] = set()
        self._known: set[str] = set()  # ready, delayed or running
        self._running: set[str] = set()
        self._seq = itertools.count()
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

    # -- public API ---------------------------------------------------------------------

    def start(self, resume: bool = True) -> list[str]:
        """Start the workers; with ``resume``, re-queue what a previous run left.

        Returns the ids resumed.
        """
        resumed: list[str] = []
        if resume:
            for rec in self.journal.claim_interrupted():
                log.warning(
                    "Import of %s (fileset=%s) was interrupted by a crash or restart; it will run again",
                    display(rec.key),
                    rec.id,
                )
            for rec in self.journal.pending():
                if rec.state == QUEUED and self._enqueue(rec.id, rec.user, rec.next_attempt_at):
                    resumed.append(rec.id)
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

    def submit(self, record: FilesetRecord | str) -> bool:
        """Queue a fileset for import; returns whether it was queued now.

        A ``waiting`` fileset is moved to ``queued``.  Already queued or running
        here, already imported, failed or skipped: nothing happens (logged at DEBUG).
        """
        fid = record.id if isinstance(record, FilesetRecord) else record
        with self._submit_lock:
            with self._cond:
                if not self._accepting:
                    log.warning("Not queueing fileset %s: the import queue is shutting down", fid)
                    return False
                if fid in self._known:
                    log.debug("Fileset %s is already queued or importing", fid)
                    return False
            rec = self.journal.fileset_by_id(fid)
            if rec is None:
                raise KeyError(f"unknown fileset {fid}: record it with upsert_fileset() first")
            if rec.state == IMPORTED:
                log.debug("Fileset %s (%s) was already imported", fid, display(rec.key))
                return False
            if rec.state == WAITING:
                self.journal.transition(fid, QUEUED, reason="complete; queued for import")
            elif rec.state != QUEUED:
                log.debug("Not queueing fileset %s: it is %s", fid, rec.state)
                return False
            return self._enqueue(fid, rec.user, rec.next_attempt_at)

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
            done = self._cond.wait_for(lambda: not self._running, timeout)
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
        ended = RUNNING_IMPORTERS.end([t.ident for t in threads], END_GRACE)
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
        """Wait until nothing is queued, waiting for a retry, or running."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._known, timeout)

    @property
    def running(self) -> frozenset[str]:
        with self._cond:
            return frozenset(self._running)

    def snapshot(self) -> dict[str, int]:
        """Counts for status pages: ready, delayed (retry back-off) and running."""
        with self._cond:
            ready = sum(len(q) for q in self._per_user.values())
            return {
                "ready": ready,
                "delayed": len(self._delayed),
                "running": len(self._running),
            }

    def __enter__(self) -> ImportQueue:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.drain()

    # -- scheduling ---------------------------------------------------------------------

    def _enqueue(self, fid: str, user: str, not_before: float | None) -> bool:
        with self._cond:
            if fid in self._known:
                return False
            self._known.add(fid)
            delay = (not_before - time.time()) if not_before is not None else 0.0
            if delay > 0:
                self._push_delayed(fid, user, delay)
            else:
                self._push_ready(fid, user)
            self._cond.notify()
            return True

    def _push_ready(self, fid: str, user: str) -> None:
        q = self._per_user.get(user)
        if q is None:
            q = self._per_user[user] = deque()
        if not q:
            self._rr.append(user)
        q.append(fid)

    def _push_delayed(self, fid: str, user: str, delay: float) -> None:
        heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), fid, user))
        self._delayed_ids.add(fid)

    def _promote_due(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, fid, user = heapq.heappop(self._delayed)
            self._delayed_ids.discard(fid)
            self._push_ready(fid, user)

    def _pop_ready(self) -> str:
        user = self._rr.popleft()
        q = self._per_user[user]
        fid = q.popleft()
        if q:
            self._rr.append(user)  # back of the line: round-robin
        else:
            del self._per_user[user]
        return fid

    def _next(self) -> str | None:
        """Block until an import may start; ``None`` when the worker should exit."""
        with self._cond:
            while True:
                if self._stopping or self._draining:
                    return None
                now = time.monotonic()
                self._promote_due(now)
                wait: float | None = None
                if self._rr:
                    if (
                        self.throttle
                        and self._last_start is not None
                        and now < self._last_start + self.throttle
                    ):
                        wait = self._last_start + self.throttle - now
                    else:
                        fid = self._pop_ready()
                        self._running.add(fid)
                        self._last_start = now
                        return fid
                if self._delayed:
                    due = self._delayed[0][0] - now
                    wait = due if wait is None else min(wait, due)
                self._cond.wait(wait)

    def _worker(self) -> None:
        while True:
            fid = self._next()
            if fid is None:
                return
            try:
                self._process(fid)
            except Exception:
                log.exception("Unexpected error while importing fileset %s", fid)
            finally:
                with self._cond:
                    self._running.discard(fid)
                    if fid not in self._delayed_ids:
                        self._known.discard(fid)
                    self._cond.notify_all()

    def _backoff(self, attempt: int) -> float:
        return float(min(self.backoff_max, self.backoff_initial * self.backoff_factor ** (attempt - 1)))

    def _log_journal_error(self, fid: str, error: JournalError, delay: float) -> None:
        now = time.monotonic()
        with self._cond:
            last = self._journal_error_logged_at
            if last is not None and now - last < JOURNAL_ERROR_LOG_EVERY:
                self._journal_errors_not_logged += 1
                log.debug("Cannot start import of fileset %s: %s", fid, error)
                return
            not_logged, self._journal_errors_not_logged = self._journal_errors_not_logged, 0
            self._journal_error_logged_at = now
        log.error(
            "Cannot start import of fileset %s: %s; trying again in %.3g s (%d more starts failed "
            "the same way since the last such message)",
            fid,
            error,
            delay,
            not_logged,
        )

    def _retry_later(self, fid: str, user: str, delay: float) -> None:
        with self._cond:
            self._push_delayed(fid, user, delay)
            self._cond.notify()

    # -- one import ---------------------------------------------------------------------

    def _process(self, fid: str) -> None:
        rec = self.journal.fileset_by_id(fid)
        if rec is None:
            log.error("Fileset %s vanished from the journal; not importing it", fid)
            return
        if rec.state != QUEUED:
            level = logging.DEBUG if rec.state == IMPORTED else logging.INFO
            log.log(level, "Not importing fileset %s: it is %s", fid, rec.state)
            return
        if rec.attempts >= self.max_attempts:
            # Only reachable after crashes during imports (claim_interrupted keeps the
            # count): an import that kills the service every time must not loop forever.
            reason = f"gave up after {rec.attempts} attempt(s); last: {rec.last_error or '?'}"
            self._finish(fid, FAILED, reason)
            _log_gave_up(fid, rec.key, rec.user, rec.attempts, rec.last_error or "?", permanent=False)
            self._done(fid, ImportResult.failure(reason, transient=False))
            return
        try:
            self.journal.transition(fid, IMPORTING)
        except InvalidTransitionError as e:
            log.info("Not importing fileset %s: %s", fid, e)
            return
        except JournalError as e:
            delay = max(self.backoff_initial, 1.0)
            self._log_journal_error(fid, e, delay)
            self._retry_later(fid, rec.user, delay)
            return
        attempt = rec.attempts + 1
        request = ImportRequest(
            user=rec.user,
            key=rec.key,
            files=rec.members,
            fileset_id=fid,
            format=rec.format,
            attempt=attempt,
            interrupted=rec.last_error == INTERRUPTED_REASON,
        )
        try:
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
        if result.ok:
            self._finish(fid, IMPORTED, f"attempt {attempt}")
        elif result.transient and attempt < self.max_attempts:
            delay = self._backoff(attempt)
            if self._finish(fid, QUEUED, result.reason, next_attempt_at=time.time() + delay):
                log.warning(
                    "Import of %s will be retried in %.3g s (attempt %d of %d failed)",
                    display(rec.key),
                    delay,
                    attempt,
                    self.max_attempts,
                )
                self._retry_later(fid, rec.user, delay)
        else:
            reason = result.reason or "import failed"
            if result.transient:
                reason = f"gave up after {attempt} attempt(s): {reason}"
            self._finish(fid, FAILED, reason)
            _log_gave_up(fid, rec.key, rec.user, attempt, result.reason, permanent=not result.transient)
        self._done(fid, result)

    def _finish(self, fid: str, state: str, reason: str, *, next_attempt_at: float | None = None) -> bool:
        full = False
        while True:
            try:
                self.journal.transition(fid, state, reason=reason, next_attempt_at=next_attempt_at)
                if full:
                    log.warning(
                        "Fileset %s recorded as %s now that the journal can be written again "
                        "(it has space again, or no other process locks it)",
                        fid,
                        state,
                    )
                return True
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
