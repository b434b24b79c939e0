"""A one-line progress display on stderr, shown only when stderr is a terminal.

In logs, pipes and under systemd nothing is written, so log files stay clean.  Used
for the long parts operators otherwise stare at: the start-up scan of a large
DropBox tree (``run``) and ``filesets`` over many files.

Log records printed to the same terminal clear the line first (:meth:`Progress.attach`),
so a progress line never ends up glued to a log line.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

__all__ = ["Progress", "enabled_for", "progress_iter", "watch_progress"]

T = TypeVar("T")

_SPINNER = "|/-\\"


def enabled_for(stream: TextIO) -> bool:
    """Whether to draw on ``stream``: a terminal that is not ``TERM=dumb``."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


class Progress:
    """``label [####......]  40%  400/1000 files  3 s`` (or a counter when the total is unknown).

    Thread-safe; redraws at most every ``interval`` seconds; :meth:`close` erases the line.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "files",
        stream: TextIO | None = None,
        interval: float = 0.1,
        enabled: bool | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled_for(self.stream) if enabled is None else enabled
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.detail = ""
        self.interval = interval
        self._started = time.monotonic()
        self._drawn = 0.0
        self._shown = False
        self._spin = 0
        self._lock = threading.Lock()

    def update(self, advance: int = 1, *, done: int | None = None, detail: str | None = None) -> None:
        with self._lock:
            self.done = done if done is not None else self.done + advance
            if detail is not None:
                self.detail = detail
            if not self.enabled:
                return
            now = time.monotonic()
            if now - self._drawn >= self.interval:
                self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The text drawn (without the carriage return)."""
        elapsed = (now if now is not None else time.monotonic()) - self._started
        clock = f"{elapsed:.0f} s"
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 24)
            count = f"{self.done:,}/{self.total:,} {self.unit}"
            text = f"{self.label} [{bar:<24}] {frac * 100:3.0f}%  {count}  {clock}"
        else:
            spin = _SPINNER[self._spin % len(_SPINNER)]
            self._spin += 1
            text = f"{self.label} {spin} {self.done:,} {self.unit}  {clock}"
        if self.detail:
            text += f"  {self.detail}"
        return text

    def _draw(self, now: float) -> None:
        width = _width(self.stream)
        text = self.line(now)[: max(10, width - 1)]
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._drawn = now
        self._shown = True

    def clear(self) -> None:
        """Erase the line (before a log record is printed); the next update redraws it."""
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._shown = False
                self._drawn = 0.0

    def close(self) -> None:
        self.clear()
        self.enabled = False

    def attach(self, handler: logging.Handler) -> None:
        """Clear the progress line before ``handler`` prints a record."""

        def clear_first(record: logging.LogRecord) -> bool:
            self.clear()
            return True

        handler.addFilter(clear_first)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _width(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, AttributeError, ValueError):
        return 80
    return columns if columns > 0 else 80  # a pty nobody sized reports 0


def progress_iter(
    items: Iterable[T],
    label: str,
    *,
    total: int | None = None,
    unit: str = "files",
    stream: TextIO | None = None,
) -> Iterator[T]:
    """Yield ``items`` unchanged, counting them on a progress line (terminal only)."""
    with Progress(label, total, unit=unit, stream=stream) as bar:
        if not bar.enabled:
            yield from items
            return
        for item in items:
            bar.update()
            yield item


def watch_progress(
    label: str,
    poll: Callable[[], tuple[int, str, bool]],
    *,
    unit: str = "files",
    stream: TextIO | None = None,
    handlers: Iterable[logging.Handler] = (),
    interval: float = 0.2,
) -> threading.Thread | None:
    """Show ``poll()`` -> ``(count, detail, finished)`` on a progress line from a daemon thread
    until ``finished``; None (no thread) when the stream is not a terminal."""
    bar = Progress(label, unit=unit, stream=stream, interval=interval)
    if not bar.enabled:
        return None
    for h in handlers:
        bar.attach(h)

    def loop() -> None:
        try:
            while True:
                count, detail, finished = poll()
                if finished:
                    return
                bar.update(done=count, detail=detail)
                time.sleep(interval)
        except Exception:  # progress is cosmetic; never disturb the service
            return
        finally:
            bar.close()

    thread = threading.Thread(target=loop, name="progress", daemon=True)
    thread.start()
    return thread
