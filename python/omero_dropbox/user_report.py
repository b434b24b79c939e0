"""The report a scientist reads where she dropped her files: ``DROPBOX-STATUS.txt`` (+ ``.json``).

One pair of files in each user's top folder lists that user's recent filesets: imported
(with the OMERO.web link when known), waiting (for what, until when), failed (the reason and
what to do). The folder belongs to the lab user, and the service may run as root, so the
files are written the careful way: the folder is opened beneath the watch directory without
following links, the text goes to a new dot-file (which the watcher never reports) created
``O_EXCL|O_NOFOLLOW`` in that folder, and is renamed over the report, so a link planted under
the report's name is replaced, never written through. Only this user's files are named:
paths are shown relative to her folder, and any other path under the watch directory in a
reason is replaced by a placeholder. Both files are bounded in size.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from omero_dropbox.at_use import FileRefused, below, open_dir_beneath
from omero_dropbox.text import printable

__all__ = ["REPORT_JSON", "REPORT_NAMES", "REPORT_TEXT", "ReportEntry", "is_report", "render", "write_report"]

REPORT_TEXT = "DROPBOX-STATUS.txt"
REPORT_JSON = "DROPBOX-STATUS.json"
REPORT_NAMES = frozenset({REPORT_TEXT, REPORT_JSON})

ReportState = Literal["imported", "waiting", "queued", "importing", "failed"]

# What the scientist should do, per state; the reason says why.
_ADVICE: dict[str, str] = {
    "waiting": "nothing yet: it is imported when the rest arrives or the wait ends",
    "queued": "nothing: it is next in line",
    "importing": "nothing: it is being imported now",
    "failed": "fix what the reason says and copy the files in again, or ask the facility to retry",
    "imported": "",
}
_ORDER = {"failed": 0, "waiting": 1, "importing": 2, "queued": 3, "imported": 4}
_OTHER = "<another folder>"


@dataclass(frozen=True)
class ReportEntry:
    """One fileset as the scientist sees it."""

    state: ReportState
    path: str  # the key file, absolute
    files: int
    at: float  # when it reached this state
    reason: str = ""
    until: float | None = None  # waiting: when the wait ends
    link: str | None = None  # imported: OMERO.web URL


def is_report(root: str, path: str) -> bool:
    """Is ``path`` one of the report files of the user folder ``root``?"""
    return os.path.dirname(path) == root.rstrip(os.sep) and os.path.basename(path) in REPORT_NAMES


def _private(text: str, trusted: str, root: str) -> str:
    """``text`` with this user's paths relative and every other DropBox path hidden."""
    mine = root.rstrip(os.sep) + os.sep
    text = text.replace(mine, "")
    top = trusted.rstrip(os.sep) + os.sep
    while top in text:
        start = text.index(top)
        end = start + len(top)
        while end < len(text) and text[end] not in " \t\n'\",;:)":
            end += 1
        text = text[:start] + _OTHER + text[end:]
    return printable(text)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def render(
    user: str,
    entries: Sequence[ReportEntry],
    *,
    trusted: str,
    root: str,
    now: float,
    max_entries: int = 200,
    max_bytes: int = 256 << 10,
) -> tuple[str, str]:
    """``(text, json)`` of the report: most urgent first, newest first within a state;
    each at most ``max_bytes`` (fewer filesets are listed until both fit)."""
    while True:
        text, data = _render(user, entries, trusted, root, now, max_entries)
        if max_entries == 0 or max(len(text.encode()), len(data.encode())) <= max_bytes:
            return text, data
        max_entries //= 2


def _render(
    user: str, entries: Sequence[ReportEntry], trusted: str, root: str, now: float, max_entries: int
) -> tuple[str, str]:
    ordered = sorted(entries, key=lambda e: (_ORDER[e.state], -e.at))
    shown = ordered[:max_entries]
    rows = []
    for e in shown:
        row: dict[str, object] = {
            "state": e.state,
            "fileset": _private(e.path, trusted, root),
            "files": e.files,
            "at": round(e.at, 3),
        }
        if e.reason:
            row["reason"] = _private(e.reason, trusted, root)
        if e.until is not None:
            row["until"] = round(e.until, 3)
        if e.link:
            row["link"] = e.link
        if _ADVICE[e.state]:
            row["what_to_do"] = _ADVICE[e.state]
        rows.append(row)
    counts = {s: sum(1 for e in entries if e.state == s) for s in _ORDER}
    lines = [
        f"OMERO DropBox: status of {printable(user)}'s files, written {_when(now)}",
        "This file is rewritten by the import service; changes to it are lost.",
        "",
        "  ".join(f"{s}: {n}" for s, n in counts.items() if n) or "No filesets yet.",
        "",
    ]
    for row in rows:
        head = f"[{str(row['state']).upper()}] {row['fileset']} ({row['files']} file"
        head += "s)" if row["files"] != 1 else ")"
        lines.append(head)
        detail = [f"  since {_when(float(str(row['at'])))}"]
        if "until" in row:
            detail.append(f"  waits until {_when(float(str(row['until'])))}")
        if "reason" in row:
            detail.append(f"  why: {row['reason']}")
        if "link" in row:
            detail.append(f"  in OMERO: {row['link']}")
        if "what_to_do" in row:
            detail.append(f"  what to do: {row['what_to_do']}")
        lines.extend(detail)
    if len(ordered) > len(shown):
        lines.append(f"... and {len(ordered) - len(shown)} older filesets not listed")
    text = "\n".join(lines) + "\n"
    doc = {"user": user, "written": now, "counts": counts, "filesets": rows}
    return text, json.dumps(doc, indent=1)


def _open_root(trusted: str, root: str) -> int:
    """A descriptor of the user's folder, opened beneath ``trusted`` with no link followed."""
    try:
        return open_dir_beneath(trusted, below(trusted, root))
    except OSError as exc:
        raise FileRefused(f"{root} cannot be opened as a plain folder ({exc.strerror})") from exc


def _replace(dir_fd: int, name: str, data: bytes) -> None:
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd
    )
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        os.unlink(tmp, dir_fd=dir_fd)
        raise


def write_report(
    user: str,
    entries: Sequence[ReportEntry],
    *,
    trusted: str,
    root: str,
    now: float | None = None,
) -> None:
    """Write the report pair into ``root`` (raises ``OSError``/``FileRefused`` to log)."""
    text, data = render(user, entries, trusted=trusted, root=root, now=time.time() if now is None else now)
    dir_fd = _open_root(trusted, root)
    try:
        # The folder's owner, so that the scientist can delete the report like her own files.
        st = os.fstat(dir_fd)
        for name, body in ((REPORT_TEXT, text), (REPORT_JSON, data)):
            _replace(dir_fd, name, body.encode("utf-8", "surrogateescape"))
            if os.geteuid() == 0:
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dir_fd, follow_symlinks=False)
    finally:
        os.close(dir_fd)
