"""``omero-dropbox status``: what the journal says, per user and state."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from omero_dropbox.journal import DB_NAME, FILESET_STATES, Journal, display_path


def print_status(state_dir: Path, *, as_json: bool = False, limit: int = 20) -> int:
    if not (state_dir / DB_NAME).exists():
        print(
            f"omero-dropbox: no journal in {state_dir} (has `omero-dropbox run` used this --state-dir?)",
            file=sys.stderr,
        )
        return 1
    with Journal(state_dir, readonly=True) as journal:
        filesets = journal.counts("filesets")
        files = journal.counts("files")
        recent = journal.recent(limit=limit)
        failed = journal.recent(limit=limit, state="failed")
    if as_json:
        doc = {
            "state_dir": str(state_dir),
            "filesets": filesets,
            "files": files,
            "recent": [
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
                for e in recent
            ],
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"Journal: {state_dir / DB_NAME}")
    states = list(FILESET_STATES)
    header = f"{'user':<20}" + "".join(f"{s:>11}" for s in states)
    print("\nFilesets per user\n" + header)
    for user in sorted(filesets):
        row = filesets[user]
        print(f"{user or '(none)':<20}" + "".join(f"{row.get(s, 0):>11}" for s in states))
    skipped_files = {u: c.get("skipped", 0) for u, c in files.items() if c.get("skipped")}
    if skipped_files:
        print(
            "\nSkipped files per user: " + ", ".join(f"{u or '(none)'}={n}" for u, n in skipped_files.items())
        )
    if failed:
        print("\nRecent failures")
        for e in failed:
            print(f"  {_when(e.at)}  {e.user or '-'}  {display_path(e.path or e.subject)}: {e.reason}")
    print("\nRecent entries")
    for e in recent:
        print(
            f"  {_when(e.at)}  {e.kind:<7} {e.user or '-':<12} {e.old_state or '':>9} -> {e.new_state:<9} "
            f"{display_path(e.path or e.subject)}{'  (' + e.reason + ')' if e.reason else ''}"
        )
    return 0


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
