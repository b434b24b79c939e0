"""Prometheus metrics of a running service, in the text exposition format (written by hand:
no client library needed; the tests read it back with prometheus-client's own parser), served
at ``/metrics`` by ``omero-dropbox run --http``.

The engine feeds :class:`EngineMetrics` (a dict increment per event, one histogram
observation per import); everything else (filesets by state, queue depth, watcher
counters) is read when scraped, so a service nobody scrapes pays nothing for it.

Exposed families (all prefixed ``omero_dropbox_``)::

    events_total{kind}                  counter   READY events received from the watcher
    files_skipped_total                 counter   files not imported (unknown user, link, ...)
    filesets{state}                     gauge     filesets in the journal, by state
    import_duration_seconds{outcome}    histogram one import attempt; outcome imported|retry|failed
    queue_depth{state}                  gauge     ready, delayed (retry back-off), running
    waiting_files                       gauge     READY files waiting for their fileset to settle
    watches                             gauge     directories watched
    watcher_pending_files               gauge     files seen but not READY yet (being written)
    watcher_raw_events_total            counter   kernel/poll events before filtering
    rescans_total                       counter   trees rescanned (overflow, backend rescan flag)
    overflows_total                     counter   kernel event-queue overflows
    poll_roots                          gauge     roots served by polling (network filesystems)
    start_time_seconds                  gauge     when the service started (epoch seconds)
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from omero_dropbox.importers import BaseImporter, Importer, ImportRequest, ImportResult

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "EngineMetrics",
    "Family",
    "Histogram",
    "InstrumentedImporter",
    "exposition",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "omero_dropbox_"
#: Import durations span a second (a small TIFF) to an hour (a plate over a slow link).
DURATION_BUCKETS: tuple[float, ...] = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics); not thread-safe on its own."""

    def __init__(self, buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        if list(buckets) != sorted(set(buckets)):
            raise ValueError(f"histogram buckets must be strictly increasing, got {list(buckets)!r}")
        self.buckets = tuple(float(b) for b in buckets)
        self.counts = [0] * len(self.buckets)  # per bucket, not cumulative
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count <= le), ..., ("+Inf", count)]``."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            running += n
            out.append((_number(bound), running))
        out.append(("+Inf", self.count))
        return out


@dataclass
class EngineMetrics:
    """What only the engine can count; cheap to feed (called per event and per import)."""

    started: float = field(default_factory=time.time)
    events: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    durations: dict[str, Histogram] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def event(self, kind: str) -> None:
        # Only the engine thread calls this; a dict increment needs no lock.
        self.events[kind] = self.events.get(kind, 0) + 1

    def skip(self) -> None:
        self.skipped += 1

    def observe_import(self, seconds: float, outcome: str) -> None:
        with self._lock:  # import workers run in parallel
            hist = self.durations.get(outcome)
            if hist is None:
                hist = self.durations[outcome] = Histogram()
            hist.observe(seconds)

    def histograms(self) -> dict[str, Histogram]:
        with self._lock:
            copies = {}
            for outcome, h in self.durations.items():
                c = Histogram(h.buckets)
                c.counts, c.count, c.sum = list(h.counts), h.count, h.sum
                copies[outcome] = c
            return copies


class InstrumentedImporter(BaseImporter):
    """Times each call of ``inner`` into ``metrics``; adds nothing else (the inner
    importer already logs, so :meth:`__call__` is overridden, not :meth:`run`)."""

    def __init__(self, inner: Importer, metrics: EngineMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def __call__(self, request: ImportRequest) -> ImportResult:
        t0 = time.monotonic()
        outcome = "failed"
        try:
            result = self.inner(request)
            if isinstance(result, ImportResult):
                outcome = "imported" if result.ok else ("retry" if result.transient else "failed")
            return result
        except Exception:
            outcome = "retry"  # the queue treats an exception as transient
            raise
        finally:
            self.metrics.observe_import(time.monotonic() - t0, outcome)

    def __repr__(self) -> str:
        return repr(self.inner)


# --------------------------------------------------------------------- exposition


@dataclass
class Family:
    """One metric family: ``name`` without the prefix; ``samples`` are (labels, value)."""

    name: str
    type: str  # counter | gauge | histogram
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)
    histograms: list[tuple[dict[str, str], Histogram]] = field(default_factory=list)


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str], extra: Iterable[tuple[str, str]] = ()) -> str:
    items = [*labels.items(), *extra]
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in items) + "}"


def exposition(families: Iterable[Family]) -> str:
    """The Prometheus text format (version 0.0.4) of ``families``."""
    lines: list[str] = []
    for fam in families:
        name = PREFIX + fam.name
        help_text = fam.help.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {fam.type}")
        for labels, value in fam.samples:
            lines.append(f"{name}{_labels(labels)} {_number(value)}")
        for labels, hist in fam.histograms:
            for le, n in hist.cumulative():
                lines.append(f"{name}_bucket{_labels(labels, [('le', le)])} {n}")
            lines.append(f"{name}_sum{_labels(labels)} {_number(hist.sum)}")
            lines.append(f"{name}_count{_labels(labels)} {hist.count}")
    return "\n".join(lines) + "\n"


def collect(
    metrics: EngineMetrics,
    *,
    fileset_states: Mapping[str, int],
    all_states: Sequence[str],
    queue: Mapping[str, int],
    waiting_files: int,
    watcher: Mapping[str, int],
) -> list[Family]:
    """Every family of the module docstring, from the engine's counters and a snapshot."""
    events = Family("events_total", "counter", "READY file events received from the watcher, by kind")
    for kind in ("created", "modified", "moved", "deleted", *sorted(set(metrics.events) - _KINDS)):
        events.samples.append(({"kind": kind}, metrics.events.get(kind, 0)))
    durations = Family("import_duration_seconds", "histogram", "Duration of one import attempt, by outcome")
    hists = metrics.histograms()
    for outcome in ("imported", "retry", "failed"):
        durations.histograms.append(({"outcome": outcome}, hists.get(outcome) or Histogram()))

    watched = [
        ("watches", "gauge", "Directories watched", "watches"),
        ("watcher_pending_files", "gauge", "Files seen but not READY yet (being written)", "pending"),
        ("watcher_raw_events_total", "counter", "Kernel or poll events before filtering", "raw_events"),
        ("rescans_total", "counter", "Directory trees rescanned (queue overflow, backend rescan)", "rescans"),
        (
            "overflows_total",
            "counter",
            "Kernel event-queue overflows (each one triggers a rescan)",
            "overflows",
        ),
        ("poll_roots", "gauge", "Watched roots served by polling (network filesystems)", "poll_roots"),
    ]
    return [
        events,
        Family(
            "files_skipped_total",
            "counter",
            "Files not imported (unknown user, link, unreadable, ...)",
            [({}, metrics.skipped)],
        ),
        Family(
            "filesets",
            "gauge",
            "Filesets in the journal, by state",
            [({"state": s}, fileset_states.get(s, 0)) for s in all_states],
        ),
        durations,
        Family(
            "queue_depth",
            "gauge",
            "Filesets in the import queue: ready to start, delayed (retry back-off), running",
            [({"state": s}, queue.get(s, 0)) for s in ("ready", "delayed", "running")],
        ),
        Family(
            "waiting_files",
            "gauge",
            "READY files waiting for their fileset to be complete and quiet",
            [({}, waiting_files)],
        ),
        *(Family(name, kind, text, [({}, watcher.get(key, 0))]) for name, kind, text, key in watched),
        Family(
            "start_time_seconds",
            "gauge",
            "Start time of the service (seconds since the epoch)",
            [({}, round(metrics.started, 3))],
        ),
    ]


_KINDS = frozenset({"created", "modified", "moved", "deleted"})
