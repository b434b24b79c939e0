"""``omero-dropbox filesets PATH...``: the grouping of a tree, as JSON lines."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omero_dropbox.grouping.grouper import FilesetGrouper

__all__ = ["filesets_command"]


def _walk(paths: Sequence[str], errors: list[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        p = os.path.abspath(p)
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p, onerror=lambda e: errors.append(str(e))):
                dirs.sort()
                out.extend(os.path.join(root, n) for n in names)
        elif os.path.lexists(p):
            out.append(p)
        else:
            errors.append(f"{p}: no such file or directory")
    return out


def filesets_command(paths: Sequence[str], readers: Path | None, bioformats_oracle: bool = False) -> int:
    """``omero-dropbox filesets PATH...``: print one JSON object per line.

    Directories are walked recursively. Each fileset prints as
    ``{"key": ..., "files": [...], "format": ...}`` (plus ``"missing": [...]`` when members
    the rules expect are absent); each file that is not imported prints as
    ``{"skipped": path, "reason": ...}``. Paths are ``str`` as Python decodes them
    (undecodable bytes come out as ``\\udcXX`` escapes). Returns 0, or 1 if a path could
    not be read (reported on stderr), or 2 for a bad readers file. ``bioformats_oracle``:
    ask Bio-Formats (one JVM) about the files the rule table cannot decide.
    """
    errors: list[str] = []
    oracle: Any = None
    if bioformats_oracle:
        from omero_dropbox.grouping.oracle import UsedFilesOracle

        oracle = UsedFilesOracle(readers)
    try:
        grouper = FilesetGrouper(readers, warn=False, oracle=oracle)  # warning said here, on stderr
    except ValueError as exc:
        print(f"omero-dropbox filesets: {exc}", file=sys.stderr)
        return 2
    if grouper.readers_file is not None and (warning := grouper.readers_file.warning()) is not None:
        print(f"omero-dropbox filesets: warning: {warning}", file=sys.stderr)
    from omero_dropbox.progress import progress_iter  # a line on stderr, on a terminal only

    try:
        result = grouper.group(progress_iter(_walk(paths, errors), "Reading"))
    finally:
        if oracle is not None:
            oracle.close()
    out = sys.stdout
    for fs in result.filesets:
        out.write(json.dumps(fs.to_json()) + "\n")
    for path, reason in result.unclaimed:
        out.write(json.dumps({"skipped": path, "reason": reason}) + "\n")
    out.flush()
    for err in errors:
        print(f"omero-dropbox filesets: {err}", file=sys.stderr)
    return 1 if errors else 0
