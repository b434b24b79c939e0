"""OMERO object names (``"Image:12"``): read from what ``omero import`` prints, linked to OMERO.web.

The engine records the objects an import created (:func:`parse_omero_objects` on the
importer's output, unless the importer returned them itself); the status page links them
(:func:`omero_web_link`).
"""

from __future__ import annotations

import re

__all__ = ["omero_web_link", "parse_omero_objects"]

# What `omero import` prints on stdout for what it created ("Image:12,13", "Plate:4").
_OBJECT_LINE = re.compile(r"^\s*(Image|Plate|Fileset|Screen|Dataset|Project|Well):(\d+(?:\s*,\s*\d+)*)\s*$")
# The kinds OMERO.web's ``webclient/?show=`` can show.
_SHOWN_KINDS = ("Image", "Plate", "Screen", "Dataset", "Project", "Well")


def parse_omero_objects(text: str) -> tuple[str, ...]:
    """``("Image:12", "Image:13")`` from ``omero import`` output lines such as ``Image:12,13``."""
    out: list[str] = []
    for line in text.splitlines():
        m = _OBJECT_LINE.match(line)
        if m:
            out.extend(f"{m.group(1)}:{n.strip()}" for n in m.group(2).split(","))
    return tuple(dict.fromkeys(out))


def omero_web_link(base_url: str, obj: str) -> str | None:
    """The OMERO.web URL that shows ``obj`` (``"Image:12"``), or None for a kind it cannot show."""
    kind, _, ident = obj.partition(":")
    if not ident.isdigit() or kind not in _SHOWN_KINDS:
        return None
    return f"{base_url.rstrip('/')}/webclient/?show={kind.lower()}-{ident}"
