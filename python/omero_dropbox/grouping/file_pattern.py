"""``.pattern`` key files: Bio-Formats file patterns (``<1-3>``, ``<A-C>``, ``<a,b>``)
expanded with their size checked first, or a regular expression over a folder's names run
on the Rust ``regex`` crate (linear time)."""

from __future__ import annotations

import itertools
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from omero_dropbox.grouping.limits import Budget, KeyFileRejected, default_budget
from omero_dropbox.grouping.paths import norm_path, shown
from omero_dropbox.grouping.refs import ContentRefs
from omero_dropbox.grouping.user_files import read_small

__all__ = ["expand_file_pattern", "parse_file_pattern"]


_BLOCK = re.compile(r"<([^<>]*)>")


@dataclass(frozen=True)
class _Block:
    """One file-pattern block: a list of values, or a numeric/letter range."""

    values: tuple[str, ...] = ()
    begin: int = 0
    step: int = 1
    count: int = 0
    numeric: bool = True
    width: int = 0  # zero-padding width (fixed-width ranges), else 0
    lower: bool = False

    def __len__(self) -> int:
        return len(self.values) if self.values else self.count

    def items(self, budget: Budget) -> Iterator[str]:
        if self.values:
            yield from self.values
            return
        for i in range(self.count):
            budget.tick()
            v = self.begin + i * self.step
            text = str(v) if self.numeric else _base36(v)
            if not self.numeric:
                text = text.lower() if self.lower else text.upper()
            yield text.rjust(self.width, "0") if self.width else text


def _parse_block(body: str) -> _Block:
    """A file-pattern block (Bio-Formats semantics, our implementation); sized, not built."""
    parts = body.split(",")
    if len(parts) > 1:
        return _Block(values=tuple(parts))
    bounds = body.split("-")
    if len(bounds) < 2:
        return _Block(values=(body,))
    begin = bounds[0]
    end, _, step_text = bounds[1].partition(":")
    step_text = step_text or "1"
    if max(len(begin), len(end), len(step_text)) > 30:  # int() of huge digit strings is slow
        raise ValueError(f"invalid file pattern block <{body[:40]}>")
    numeric = True
    try:
        b, e, s = int(begin), int(end), int(step_text)
    except ValueError:
        numeric = False
        try:
            b, e, s = int(begin, 36), int(end, 36), int(step_text, 36)
        except ValueError as exc:
            raise ValueError(f"invalid file pattern block <{body}>") from exc
    if s <= 0:
        raise ValueError(f"invalid step in file pattern block <{body}>")
    count = max((e - b) // s + 1, 0)
    width = len(end) if len(begin) == len(end) else 0
    return _Block(begin=b, step=s, count=count, numeric=numeric, width=width, lower=begin[:1].islower())


def _base36(v: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if v == 0:
        return "0"
    sign, v = ("-", -v) if v < 0 else ("", v)
    out = ""
    while v:
        v, r = divmod(v, 36)
        out = digits[r] + out
    return sign + out


def expand_file_pattern(pattern: str, budget: Budget | None = None) -> list[str]:
    """All names a Bio-Formats file pattern with ``<...>`` blocks denotes.

    The count is the product of the block sizes, checked against the members cap
    before any name is built (:class:`KeyFileRejected` names it).
    """
    budget = budget or default_budget()
    pieces = _BLOCK.split(pattern)
    literals, blocks = pieces[0::2], [_parse_block(b) for b in pieces[1::2]]
    total = 1
    for blk in blocks:
        total *= max(len(blk), 1)
        budget.count(total, "files (a file pattern's blocks multiplied out)")
    out: list[str] = []
    for combo in itertools.product(*(list(b.items(budget)) for b in blocks)):
        budget.tick()
        out.append("".join(lit + val for lit, val in zip(literals, (*combo, ""), strict=True)))
    return out


def parse_file_pattern(path: str, budget: Budget, confined: bool) -> ContentRefs:
    text = read_small(path, budget.limits).decode("utf-8", "surrogateescape").strip()
    pattern = text.splitlines()[0].strip() if text else ""
    if not pattern:
        return ContentRefs()
    where = os.path.dirname(path)
    refs = ContentRefs()
    if _BLOCK.search(pattern):
        refs.required = [(refs.ref(where, p),) for p in expand_file_pattern(pattern, budget)]
        return refs
    refs.cacheable = False  # depends on what is on disk
    full = refs.ref(where, pattern)
    if os.path.lexists(full):
        refs.required = [(full,)]
        return refs
    refs.required = [(p,) for p in _regex_pattern_files(where, pattern, budget, confined)]
    return refs


def _regex_pattern_files(where: str, pattern: str, budget: Budget, confined: bool) -> list[str]:
    """Files a block-less, absent pattern names: Bio-Formats 7.3.1 (FilePattern.buildFiles)
    takes the text after the last ``/`` as a Java regular expression and matches it
    against the base name of every file under the folder before it, recursively.

    Lab users write this text, and both ``re`` and Java backtrack (``(a|aa)*c`` never
    ends); we run it with the Rust ``regex`` crate (linear time, compiled size capped),
    which refuses back-references and look-around: such a pattern is not imported
    (rejecting regex patterns outright would break real ``.pattern`` files that work).
    """
    head, _, regex = pattern.rpartition("/")  # on POSIX a backslash is a regex escape
    directory = norm_path(os.path.join(where, head)) if head else where
    try:
        st = os.lstat(directory)
    except (OSError, ValueError):
        st = None
    if st is None or not stat.S_ISDIR(st.st_mode):
        if confined:  # Bio-Formats would then list its own working directory
            raise KeyFileRejected(
                f"file pattern names the folder {shown(head or '.')}, which is not a folder "
                "of the user's tree; not importing it"
            )
        return []
    found = _list_tree(directory, budget, confined)
    from omero_dropbox._native import regex_full_matches  # built with the package

    try:
        hits = regex_full_matches(regex, [os.path.basename(f) for f in found], budget.limits.max_regex_bytes)
    except ValueError as exc:
        raise KeyFileRejected(f"file pattern {shown(regex)}: {exc}; not importing it") from exc
    budget.count(len(hits), "files (matched by a regular-expression file pattern)")
    return [found[i] for i in hits]


def _list_tree(top: str, budget: Budget, confined: bool) -> list[str]:
    """Every non-directory under ``top`` (recursively, sorted), listed without following
    symlinks; bounded by ``max_listing``. In a user's tree a symlink (which Bio-Formats
    would follow) is an escape."""
    out: list[str] = []
    seen = 0
    stack = [top]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                budget.tick()
                seen += 1
                if seen > budget.limits.max_listing:
                    raise KeyFileRejected(
                        f"file pattern lists more than {budget.limits.max_listing:,} entries under "
                        f"{shown(os.path.basename(top))} (GroupingLimits.max_listing); not importing it"
                    )
                if entry.is_symlink():
                    if confined:
                        raise KeyFileRejected(
                            f"file pattern searches {shown(entry.path)}, a symbolic link; not importing it"
                        )
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    out.append(norm_path(entry.path))
    out.sort()
    return out
