"""``omero-dropbox status``: what the journal and the running service say, per user.

Two sources, both safe to read while the service runs:

* the journal (SQLite WAL, opened read-only): filesets by state, imports today, the
  last failures with their reasons, recent history;
* ``<state-dir>/service.json`` (:mod:`omero_dropbox.snapshot`), a small snapshot the running
  service rewrites every few seconds: whether it runs (pid), files waiting for their
  fileset to settle (these are not in the journal yet), the import queue and the watcher
  counters.

``status --json`` prints :func:`collect` as JSON; the schema is documented in
``docs/reference.md`` (section "status --json") and versioned by ``"schema"``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omero_dropbox.journal import (
    DB_NAME,
    FAILED,
    IMPORTED,
    IMPORTING,
    QUEUED,
    SKIPPED,
    WAITING,
    Journal,
    JournalError,
    display_path,
)
from omero_dropbox.snapshot import read_service
from omero_dropbox.text import printable, printable_tree

__all__ = ["STATUS_SCHEMA", "collect", "format_table", "one_line", "print_status", "start_of_today"]

STATUS_SCHEMA = 1
#: The per-user columns, in table order.
COLUMNS = ("waiting", "queued", "importing", "imported_today", "failed")

# A line break as the journal stores it (escaped; \r\n, \n or \r).
_ESCAPED_LINE_BREAK = re.compile(r"\\x0d\\x0a|\\x0a|\\x0d")


# --------------------------------------------------------------------------- report


def start_of_today(now: float | None = None) -> float:
    """Local midnight (epoch seconds) of the day ``now`` falls in."""
    t = time.localtime(now)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


def collect(
    journal: Journal, state_dir: Path, *, limit: int = 20, service: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``status --json`` document (schema 1), every string in it escaped by
    :func:`~omero_dropbox.text.printable` (names come from lab users).

    ``users``: ``{user: {waiting, queued, importing, imported_today, failed, imported,
    skipped_files}}``; ``failures``: the newest ``failed`` filesets with their reasons;
    ``service``: the snapshot of the running service (``running`` false if none);
    ``filesets``/``files``: ``{user: {state: n}}`` from the journal; ``recent``: the newest
    history entries.  The running service passes its own ``service`` snapshot (status page).
    """
    service = dict(service) if service is not None else read_service(state_dir)
    with journal.snapshot():  # one state: an import finishing mid-report is not counted twice
        filesets = journal.counts("filesets")
        files = journal.counts("files")
        today = journal.imported_since(start_of_today())
        failed_rows = journal.filesets(FAILED, limit=limit)
        history = journal.recent(limit=limit)
    live_waiting: Mapping[str, int] = service.get("waiting", {}) if service["running"] else {}
    users: dict[str, dict[str, int]] = {}
    names = set(filesets) | set(today) | set(live_waiting) | {u for u, c in files.items() if c.get(SKIPPED)}
    for user in sorted(names):
        fs = filesets.get(user, {})
        users[user] = {
            "waiting": fs.get(WAITING, 0) + int(live_waiting.get(user, 0)),
            "queued": fs.get(QUEUED, 0),
            "importing": fs.get(IMPORTING, 0),
            "imported_today": today.get(user, 0),
            "failed": fs.get(FAILED, 0),
            "imported": fs.get(IMPORTED, 0),
            "skipped_files": files.get(user, {}).get(SKIPPED, 0),
        }
    totals = {k: sum(row[k] for row in users.values()) for k in (*COLUMNS, "imported", "skipped_files")}
    failures = [
        {
            "fileset": r.id,
            "user": r.user,
            "key": display_path(r.key),
            "files": len(r.members),
            "format": r.format,
            "attempts": r.attempts,
            "at": r.finished or r.updated,
            "reason": r.last_error,
        }
        for r in failed_rows
    ]
    recent = [
        {
            "at": e.at,
            "kind": e.kind,
            "subject": e.subject,
            "path": display_path(e.path) if e.path else None,
            "user": e.user,
            "from": e.old_state,
            "to": e.new_state,
            "reason": e.reason,
        }
        for e in history
    ]
    doc: dict[str, Any] = printable_tree(
        {
            "schema": STATUS_SCHEMA,
            "generated_at": time.time(),
            "state_dir": str(state_dir),
            "service": service,
            "users": users,
            "totals": totals,
            "failures": failures,
            "filesets": filesets,
            "files": files,
            "recent": recent,
        }
    )
    return doc


def one_line(text: str, limit: int = 160) -> str:
    """A multi-line reason (importer stderr) as one line: its first and last lines.

    The journal stores reasons escaped, their line breaks as ``\\x0a``; those separate lines too.
    """
    lines = [ln.strip() for ln in _ESCAPED_LINE_BREAK.split(printable(text)) if ln.strip()]
    if not lines:
        return ""
    line = lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def format_table(doc: Mapping[str, Any], *, recent: bool = True) -> str:
    """The human-readable ``status`` output for :func:`collect`'s document."""
    out: list[str] = []
    service = doc["service"]
    if service.get("running"):
        since = _when(service.get("started_at", 0))
        where = f"; status page {service['http']}" if service.get("http") else ""
        out.append(f"Service: running (pid {service.get('pid')}, since {since}{where})")
    else:
        out.append("Service: not running (no live service uses this state directory)")
    out.append(f"Journal: {Path(doc['state_dir']) / DB_NAME}")
    users: Mapping[str, Mapping[str, int]] = doc["users"]
    headers = ("waiting", "queued", "importing", "imported today", "failed")
    width = max([len("user"), *(len(display_path(u or "(none)")) for u in users)]) + 2
    out.append("")
    out.append(f"{'user':<{width}}" + "".join(f"{h:>16}" for h in headers))
    for user, row in users.items():
        out.append(f"{display_path(user or '(none)'):<{width}}" + "".join(f"{row[c]:>16}" for c in COLUMNS))
    if not users:
        out.append("(nothing recorded yet)")
    else:
        totals = doc["totals"]
        out.append(f"{'total':<{width}}" + "".join(f"{totals[c]:>16}" for c in COLUMNS))
    skipped = {u: row["skipped_files"] for u, row in users.items() if row["skipped_files"]}
    if skipped:
        out.append(
            "\nSkipped files: "
            + ", ".join(f"{display_path(u or '(none)')}={n}" for u, n in skipped.items())
            + " (see `Not importing` lines in the log for why)"
        )
    if doc["failures"]:
        out.append("\nLast failures (retry with `omero-dropbox retry FILESET` or `--all-failed`)")
        for f in doc["failures"]:
            out.append(f"  {_when(f['at'])}  {f['fileset'][:12]}  {f['user']}  {f['key']}")
            out.append(f"      {one_line(f['reason']) or '(no reason recorded)'}")
    if recent and doc["recent"]:
        out.append("\nRecent entries")
        for e in doc["recent"]:
            reason = f"  ({one_line(e['reason'], 100)})" if e["reason"] else ""
            out.append(
                f"  {_when(e['at'])}  {e['kind']:<7} {e['user'] or '-':<12} {e['from'] or '':>9} -> "
                f"{e['to']:<9} {e['path'] or e['subject']}{reason}"
            )
    return "\n".join(out)


def print_status(
    state_dir: Path, *, as_json: bool = False, limit: int = 20, watch: float | None = None
) -> int:
    """``omero-dropbox status``; with ``watch``, refresh every ``watch`` seconds until Ctrl-C."""
    if not (state_dir / DB_NAME).exists():
        print(
            f"omero-dropbox: no journal in {state_dir} (has `omero-dropbox run` used this --state-dir?)",
            file=sys.stderr,
        )
        return 1
    if watch is not None and watch <= 0:
        print(f"omero-dropbox: --watch needs a positive number of seconds, not {watch:g}", file=sys.stderr)
        return 2
    try:
        # check=False: quick_check reads the whole file, too much for every refresh.
        with Journal(state_dir, readonly=True, check=False) as journal:
            while True:
                doc = collect(journal, state_dir, limit=limit)
                if as_json:
                    text = json.dumps(doc, indent=None if watch else 2)  # --watch: JSON lines
                else:
                    text = format_table(doc, recent=watch is None)
                if watch is not None and sys.stdout.isatty():
                    sys.stdout.write("\x1b[H\x1b[2J")  # home + clear: redraw in place
                    text += f"\n\nRefreshing every {watch:g} s; Ctrl-C to stop."
                print(text, flush=True)
                if watch is None:
                    return 0
                time.sleep(watch)
    except KeyboardInterrupt:
        return 0
    except JournalError as exc:
        print(f"omero-dropbox: error: {exc}", file=sys.stderr)
        return 1


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
