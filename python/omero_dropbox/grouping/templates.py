"""The rule table's name templates (see :mod:`omero_dropbox.grouping.rules`)."""

from __future__ import annotations

import re
from collections.abc import Mapping

_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^{}]*))?\}")
_TR = re.compile(r"tr\((\w),(\w)\)")


def render(template: str, values: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        value = values.get(m.group(1), "")
        spec = m.group(2)
        if not spec:
            return value
        if spec == "inner":
            return value[1:-1]
        tr = _TR.fullmatch(spec)
        if tr is None:
            raise ValueError(f"unknown template transform {spec!r} in {template!r}")
        src, dst = tr.group(1).lower(), tr.group(2).lower()
        return "".join((dst.upper() if ch.isupper() else dst) if ch.lower() == src else ch for ch in value)

    return _PLACEHOLDER.sub(sub, template)
