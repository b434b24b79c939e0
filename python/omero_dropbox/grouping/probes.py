"""Header probes: a rule with a ``probe`` matches a key file only if its probe passes."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from omero_dropbox.grouping.user_files import read_head


def _probe_nifti_header(path: str) -> bool:
    head = read_head(path, 348)
    return len(head) >= 348 and head[344:348] in (b"ni1\0", b"n+1\0")


def _probe_ics_v2(path: str) -> bool:
    return re.search(rb"ics_version\s+2\.0", read_head(path, 4096)) is not None


def _probe_unisoku_header(path: str) -> bool:
    return b":STM data" in read_head(path, 9)


def _probe_fuji_inf(path: str) -> bool:
    """Bio-Formats reads an .img as Fuji when <base>.inf exists beside it (never followed)."""
    return os.path.lexists(path[: path.rfind(".")] + ".inf")


PROBES: dict[str, Callable[[str], bool]] = {
    "nifti_header": _probe_nifti_header,
    "ics_v2": _probe_ics_v2,
    "unisoku_header": _probe_unisoku_header,
    "fuji_inf": _probe_fuji_inf,
}
