"""Skipped files: journaled one by one, logged within a bound.

A lab user can drop 200,000 files the service will not import.  Each one is journaled
(``omero-dropbox status`` and ``forget`` need the record), but the log gets at most
:data:`LOG_PER_USER` lines per user per :data:`WINDOW` seconds, then one summary line per
user and window with the count by reason; and the set of paths already reported, which keeps
a skip from being logged again at every regroup, holds at most :data:`REMEMBERED` paths.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator

from omero_dropbox.journal import Journal, display_path

__all__ = ["LOG_PER_USER", "REMEMBERED", "WINDOW", "SkipLog"]

log = logging.getLogger("omero_dropbox.dropbox")

#: Skip lines logged per user and window before the rest are summarised.
LOG_PER_USER = 20
#: Length of a window, in seconds.
WINDOW = 60.0
#: Paths remembered as reported (the oldest are forgotten first; a forgotten one that is
#: skipped again is journaled and counted again, which costs a row, never a file).
REMEMBERED = 100_000


class SkipLog:
    """Journals and logs skips; see the module docstring."""

    def __init__(
        self,
        journal: Journal,
        *,
        on_skip: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._journal = journal
        self._on_skip = on_skip
        self._clock = clock
        self._reported: OrderedDict[str, None] = OrderedDict()
        self._window_start = clock()
        self._logged: Counter[str] = Counter()
        self._held: dict[str, Counter[str]] = {}
        self._deferred: list[tuple[str, str]] | None = None  # (path, reason) inside hold()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Log the lines of the skips made inside only at the end: wrap a journal batch in it,
        so that whoever reads a log line (an operator, `status`) finds the journal entry."""
        if self._deferred is not None:
            yield
            return
        self._deferred = []
        try:
            yield
        finally:
            lines, self._deferred = self._deferred, None
            for path, reason in lines:
                log.warning("Not importing %s: %s", display_path(path), reason)

    def __contains__(self, path: str) -> bool:
        return path in self._reported

    def __len__(self) -> int:
        return len(self._reported)

    def forget(self, path: str) -> None:
        """``path`` is gone: a new file of that name is reported afresh."""
        self._reported.pop(path, None)

    def skip(self, path: str, user: str | None, reason: str, *, summary: str | None = None) -> None:
        """Journal and log that ``path`` is not imported, unless it was reported already.

        ``summary`` is the reason's kind for the summary line (default: the reason itself).
        """
        if path in self._reported:
            return
        self._reported[path] = None
        if len(self._reported) > REMEMBERED:
            self._reported.popitem(last=False)
        if self._on_skip is not None:
            self._on_skip()
        # Journal first: whoever reads the log line (an operator, `status`) finds the entry.
        try:
            self._journal.skip_file(path, user, reason)
        except Exception as exc:  # the journal reports its own problems; never lose the log line
            log.error("Could not record the skip of %s: %s", display_path(path), exc)
        self._roll()
        who = user or ""
        if self._logged[who] < LOG_PER_USER:
            self._logged[who] += 1
            if self._deferred is not None:
                self._deferred.append((path, reason))
            else:
                log.warning("Not importing %s: %s", display_path(path), reason)
        else:
            self._held.setdefault(who, Counter())[summary or reason] += 1

    def flush(self) -> None:
        """Log the summary lines of a window that has ended (called on every engine step)."""
        self._roll()

    def _roll(self) -> None:
        now = self._clock()
        if now - self._window_start < WINDOW:
            return
        for who, reasons in sorted(self._held.items()):
            total = sum(reasons.values())
            kinds = "; ".join(f"{n:,} {reason}" for reason, n in reasons.most_common(5))
            more = f"; {len(reasons) - 5} other reason(s)" if len(reasons) > 5 else ""
            log.warning(
                "Not importing %s more file(s) of %s in the last %g s (%s%s); "
                "`omero-dropbox status` and the journal list every one",
                f"{total:,}",
                f"user {who}" if who else "no user",
                now - self._window_start,
                kinds,
                more,
            )
        self._held.clear()
        self._logged.clear()
        self._window_start = now
