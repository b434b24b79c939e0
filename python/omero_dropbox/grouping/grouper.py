"""The grouper: which files import together, and which one is the key.

:class:`FilesetGrouper` interprets the rule table of :mod:`omero_dropbox.grouping.rules`.
It mirrors how the OMERO importer (``ImportCandidates``) turns a list of files into import
containers, with the rules standing in for ``ImageReader.setId`` + ``getUsedFiles``:

1. dot files and system files (``Thumbs.db``...) are never key files nor imported alone
   (OMERO's importer skips dot files); they join a fileset only if a rule names them;
2. *candidates* are the files a rule recognises as key files (``.nd``, ``.ics``,
   ``.pattern``...); visited in sorted order, each candidate that no earlier candidate
   already uses becomes a container holding itself and its members (found by sibling
   names, file content or a sibling folder; only given files become members, absent
   ones are listed in ``Fileset.missing``);
3. as in OMERO, a container is dropped when a later container uses its key file and it
   itself uses at most one other file (a later, larger candidate subsumes it);
4. containers claim their files in visiting order, so no file is ever in two filesets;
5. every file left over is waiting (a companion such as ``.ids`` without its ``.ics``:
   :class:`~omero_dropbox.grouping.result.Waiting`), a single-file import (its suffix is
   read by some Bio-Formats reader), or refused (with a reason).

A one-file fileset whose file another rule could still claim as a member (a lone ``.tif``
that a ``.nd`` not given yet may name) is marked ``may_grow``
(:func:`~omero_dropbox.grouping.rules.member_tokens`).

Only names and a few small files are read: no JVM, no pixel data. See
:mod:`omero_dropbox.grouping.oracle` for the Bio-Formats oracle the tests compare against.

Key files are written by lab users, and the importer opens whatever a key file names,
whatever we group; so (see :class:`~omero_dropbox.grouping.limits.GroupingLimits` and
``group(..., root=)``):

* with ``root`` (the user's folder), every reference a key file makes (content, sibling
  and folder rules; required or optional; present or not) must be inside ``root`` after
  normalisation and reach it through no symbolic link; otherwise the key file is
  refused with a reason naming the reference, and claims none of its members;
* member counts are computed before any name is built, and key files are read through
  one helper (no symlink followed, never blocking on a FIFO, regular files only,
  bounded size); each key file has a time budget; a key file over a cap is refused
  with a reason naming the cap;
* a ``.pattern`` that is a regular expression runs on the Rust ``regex`` crate (linear
  time), never on Python's backtracking ``re``;
* parse results are cached per key file (path, device, inode, size, mtime), so a
  regroup does not read and expand an unchanged 100,000-member key file again.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from omero_dropbox.grouping.confinement import Confinement, outside_reason, through_link_reason
from omero_dropbox.grouping.folders import FolderNames
from omero_dropbox.grouping.limits import DEFAULT_LIMITS, Budget, GroupingLimits, KeyFileRejected, too_many
from omero_dropbox.grouping.parsers import CONTENT_PARSERS
from omero_dropbox.grouping.paths import last_token, norm_path, parent_dir, shown
from omero_dropbox.grouping.probes import PROBES
from omero_dropbox.grouping.readers import ORACLE_SUFFIXES, OTHER_READERS, READER_SUFFIXES
from omero_dropbox.grouping.readers_file import read_readers_file
from omero_dropbox.grouping.refs import ContentRefs
from omero_dropbox.grouping.result import (
    REASON_SYSTEM,
    REASON_UNKNOWN,
    SINGLE,
    Fileset,
    GroupingResult,
    Refused,
    UsedFiles,
    UsedFilesSource,
    Waiting,
    WaitKind,
)
from omero_dropbox.grouping.rules import (
    COMPANION_SUFFIXES,
    RULES,
    Companion,
    Content,
    Folder,
    Rule,
    Sibling,
    member_tokens,
)
from omero_dropbox.grouping.system_files import is_system_file
from omero_dropbox.grouping.templates import render
from omero_dropbox.grouping.user_files import NotRegularFileError, file_kind

__all__ = ["FilesetGrouper", "group_paths"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _KeySuffix:
    rule: Rule
    suffix: str
    folded: str


@dataclass(frozen=True)
class _CompanionSuffix:
    rule: Rule
    companion: Companion
    folded: str
    match: re.Pattern[str] | None


@dataclass
class _Container:
    file: str  # the candidate visited (the file OMERO would give to setId)
    key: str
    used: list[str]  # key first, then members (given files only)
    missing: list[str]
    format: str
    rejected: str | None = None  # why this key file is not imported


@dataclass
class _Parsed:
    """A cached parse of one key file: its references or why it is refused, and what the
    confinement check needs (the distinct parent folders of the references)."""

    refs: ContentRefs | None
    rejected: str | None
    dirs: frozenset[str] = frozenset()

    def weight(self) -> int:
        """Paths held (what the cache bound counts)."""
        if self.refs is None:
            return 1
        return sum(map(len, self.refs.required)) + len(self.refs.optional) + 1

    def all_refs(self) -> Iterator[str]:
        if self.refs is None:
            return
        for alts in self.refs.required:
            yield from alts
        yield from self.refs.optional
        if self.refs.redirect is not None:
            yield self.refs.redirect


def _parsed(refs: ContentRefs | None, rejected: str | None) -> _Parsed:
    p = _Parsed(refs, rejected)
    p.dirs = frozenset(map(parent_dir, p.all_refs()))
    return p


class _Pass:
    """State of one ``group()`` call: the given files, the confinement, folder listings."""

    def __init__(self, given: Mapping[str, str], root: str | None) -> None:
        self.given = given
        self.conf = Confinement(root) if root is not None else None
        self.folders = FolderNames()


class FilesetGrouper:
    """Groups files into filesets with the rule table (see the module docstring).

    ``readers``: an ``omero.fs.readers`` file; when given, only rules and single-file
    suffixes of the listed Bio-Formats readers are used (rules for formats Bio-Formats
    does not read, such as MIRAX, are then off too). ``limits``: what one key file may
    cost (:class:`GroupingLimits`). Parse results are cached per key file (its path,
    device, inode, size and mtime), so a regroup does not re-read unchanged key files.
    """

    def __init__(
        self,
        readers: Path | None = None,
        rules: Sequence[Rule] = RULES,
        *,
        limits: GroupingLimits = DEFAULT_LIMITS,
        warn: bool = True,
        oracle: UsedFilesSource | None = None,
    ) -> None:
        self.readers_file = read_readers_file(readers) if readers is not None else None
        self.readers = self.readers_file.classes if self.readers_file is not None else None
        if warn and self.readers_file is not None and (warning := self.readers_file.warning()):
            log.warning("%s", warning)
        self.limits = limits
        # (path, st_dev, st_ino, st_size, st_mtime_ns) -> parse; LRU, limits.cache_entries
        self._cache: OrderedDict[tuple[str, int, int, int, int], _Parsed] = OrderedDict()
        self._cached_paths = 0  # paths held by the cache, bounded by limits.cache_paths
        enabled = [r for r in rules if self._reader_enabled(r.reader)]
        for r in enabled:
            for spec in r.members:
                if isinstance(spec, Content) and spec.parser not in CONTENT_PARSERS:
                    raise ValueError(f"rule {r.format!r}: unknown content parser {spec.parser!r}")
            if r.probe is not None and r.probe not in PROBES:
                raise ValueError(f"rule {r.format!r}: unknown probe {r.probe!r}")
        self._rules = tuple(enabled)
        # suffix indexes: last extension token -> entries in rule order
        self._keys: dict[str, list[_KeySuffix]] = {}
        self._companions: dict[str, list[_CompanionSuffix]] = {}
        for r in enabled:
            for suffix in r.key:
                entry = _KeySuffix(r, suffix, suffix if r.case_sensitive else suffix.lower())
                self._keys.setdefault(last_token(suffix), []).append(entry)
            for c in r.companions:
                rx = re.compile(c.match) if c.match else None
                self._companions.setdefault(last_token(c.suffix), []).append(
                    _CompanionSuffix(r, c, c.suffix.lower(), rx)
                )
        suffixes: set[str] = set()
        for cls, _fmt, sufs in (*READER_SUFFIXES, *((c, "", s) for c, s in OTHER_READERS.items())):
            if self._reader_enabled(cls):
                suffixes.update(s.strip().lower() for s in sufs if s.strip())
        self._single_suffixes = frozenset(suffixes)
        # last name tokens of the files an enabled rule could still claim as members
        self._member_tokens = member_tokens(enabled)
        self.oracle = oracle
        self._oracle_suffixes = frozenset(
            suffix
            for suffix, readers_ in ORACLE_SUFFIXES.items()
            if any(self._reader_enabled(r) for r in readers_)
        )
        # (path, dev, ino, size, mtime_ns, folder mtime_ns) -> answer; LRU, limits.cache_entries
        self._oracle_cache: OrderedDict[tuple[str, int, int, int, int, int], UsedFiles | None] = OrderedDict()
        self._max_suffix_parts = max((s.count(".") + 1 for s in suffixes), default=1)

    def _reader_enabled(self, reader: str | None) -> bool:
        if self.readers is None:
            return True
        return reader is not None and reader in self.readers

    # -- classification

    def _match_rule(self, path: str, name: str) -> tuple[Rule, dict[str, str]] | None:
        entries = self._keys.get(last_token(name))
        if not entries:
            return None
        lowered = name.lower()
        for entry in entries:
            subject = name if entry.rule.case_sensitive else lowered
            n = len(entry.suffix)
            if len(name) <= n or not subject.endswith(entry.folded):
                continue
            if entry.rule.probe is not None:
                try:
                    if not PROBES[entry.rule.probe](path):
                        continue
                except (OSError, ValueError):
                    continue
            dot = name.rfind(".")
            values = {
                "name": name,
                "base": name[:dot] if dot >= 0 else name,
                "stem": name[:-n],
                "ext": name[-n + 1 :],
            }
            return entry.rule, values
        return None

    def is_single(self, path: str) -> bool:
        """True if some enabled Bio-Formats reader declares the file's suffix."""
        return self._is_single_name(os.path.basename(path))

    def _is_single_name(self, name: str) -> bool:
        parts = name.lower().split(".")
        for k in range(1, min(len(parts) - 1, self._max_suffix_parts) + 1):
            if ".".join(parts[-k:]) in self._single_suffixes:
                return True
        return False

    def _may_grow(self, files: tuple[str, ...]) -> bool:
        """Whether a fileset of ``files`` could still grow: one file that an enabled rule's
        key file, not given yet, could claim as a member."""
        return len(files) == 1 and last_token(os.path.basename(files[0])) in self._member_tokens

    def _companion(self, path: str, name: str, given: Mapping[str, str]) -> Waiting | Refused | None:
        """A companion by name: waiting for its key files, or refused when one is given (and
        did not use it); None if ``name`` is no companion."""
        entries = self._companions.get(last_token(name))
        if not entries:
            return None
        lowered = name.lower()
        for entry in entries:
            n = len(entry.folded)
            if len(name) <= n or not lowered.endswith(entry.folded):
                continue
            if entry.match is not None and entry.match.fullmatch(name) is None:
                continue
            where = os.path.dirname(path)
            values = {
                "name": name,
                "stem": name[:-n],
                "ext": name[-n + 1 :],
                "dir1": os.path.basename(where),
                "dir2": os.path.basename(os.path.dirname(where)),
            }
            keys = [norm_path(os.path.join(where, render(t, values))) for t in entry.companion.keys]
            present = [k for k in keys if k in given]
            original = given[path]
            if present:
                return Refused(
                    original, f"companion not used by its key file ({os.path.basename(present[0])})"
                )
            wanted = os.path.basename(keys[0]) if keys else "its key file"
            return Waiting(
                original,
                WaitKind.COMPANION_WITHOUT_KEY,
                tuple(keys),
                f"companion waiting for its key file ({name} needs {wanted})",
            )
        return None

    # -- members of one candidate

    def _content(self, spec: Content, source: str, p: _Pass) -> _Parsed | None:
        """The parse of ``source`` (cached by its identity and mtime), or None if unreadable."""
        try:
            st = os.lstat(source)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return _parsed(
                None, f"key file is not a regular file ({file_kind(st.st_mode)}); not importing it"
            )
        ck = (source, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._cache.get(ck)
        if hit is not None:
            self._cache.move_to_end(ck)
            return hit
        try:
            result = _parsed(
                CONTENT_PARSERS[spec.parser](source, Budget(self.limits), p.conf is not None), None
            )
        except KeyFileRejected as exc:
            result = _parsed(None, exc.reason)
        except NotRegularFileError as exc:  # swapped in after the lstat above
            result = _parsed(None, f"key file is not a regular file ({exc.kind}); not importing it")
        except OSError:
            return None  # unreadable now (permissions, vanished): not cached, read again next time
        except (ValueError, ET.ParseError, struct.error, UnicodeError):
            result = _parsed(ContentRefs(), None)  # malformed: Bio-Formats will say so at import
        weight = result.weight()
        if (result.refs is None or result.refs.cacheable) and weight <= self.limits.cache_paths:
            self._cache[ck] = result
            self._cached_paths += weight
            while (
                len(self._cache) > self.limits.cache_entries or self._cached_paths > self.limits.cache_paths
            ):
                self._cached_paths -= self._cache.popitem(last=False)[1].weight()
        return result

    def _confine(self, parsed: _Parsed, where: str, conf: Confinement) -> None:
        """Refuse a parse with a reference outside ``conf``'s tree (lexically or by a symlink).

        References are normalised, so each is inside exactly when its folder is: only the
        distinct folders (one or a few per key file) are checked, then ``..`` names."""
        for d in sorted(parsed.dirs):
            problem: str | None = None
            d = d if os.path.isabs(d) else os.path.abspath(d)  # given paths are absolute in the engine
            if not conf.inside(d):
                problem = "outside"
            elif (link := conf.link_on_way(d)) is not None:
                problem = link
            if problem is not None:
                ref = next(r for r in parsed.all_refs() if os.path.abspath(parent_dir(r)) == d)
                raise KeyFileRejected(
                    outside_reason(where, ref)
                    if problem == "outside"
                    else through_link_reason(where, ref, problem)
                )
        walked: set[tuple[str, str]] = set()
        for base, value in parsed.refs.dotdot if parsed.refs is not None else ():
            head, _, tail = value.rpartition(os.sep)
            probe = value if tail in ("", ".", "..") else head  # a leaf is checked by take()
            if (base, probe) not in walked:
                walked.add((base, probe))
                problem = conf.stepwise(base, probe, value)
                if problem is not None:
                    raise KeyFileRejected(problem)

    def _folder_files(
        self, folder: str, spec: Folder, budget: Budget, confined: bool, where: str
    ) -> Iterator[str]:
        """Regular files under ``folder`` matching ``spec.glob`` level by level, listed with
        lstat semantics (a symlink is never followed; in a user's tree it is an escape)."""
        segments = spec.glob.split("/")
        wanted = tuple(x.lower() for x in spec.suffixes)
        level = [folder]
        listed = 0
        for depth, segment in enumerate(segments):
            last = depth == len(segments) - 1
            deeper: list[str] = []
            for d in level:
                try:
                    entries = sorted(os.scandir(d), key=lambda e: e.name)
                except OSError:
                    continue
                listed += len(entries)
                if listed > self.limits.max_listing:
                    raise KeyFileRejected(
                        f"folder {shown(os.path.relpath(folder, where))} holds more than "
                        f"{self.limits.max_listing:,} entries (GroupingLimits.max_listing); not importing it"
                    )
                for entry in entries:
                    budget.tick()
                    if entry.name.startswith(".") or not fnmatchcase(entry.name, segment):
                        continue
                    if last and wanted and not entry.name.lower().endswith(wanted):
                        continue
                    if entry.is_symlink():
                        if confined:
                            raise KeyFileRejected(through_link_reason(where, entry.path, entry.path))
                        continue
                    if last and entry.is_file(follow_symlinks=False):
                        yield norm_path(entry.path)
                    elif not last and entry.is_dir(follow_symlinks=False):
                        deeper.append(entry.path)
            level = deeper

    def _evaluate(
        self, path: str, rule: Rule, values: dict[str, str], p: _Pass
    ) -> tuple[list[str], list[str], str | None]:
        """(members, missing, redirect) for a candidate key file; raises
        :class:`KeyFileRejected` for a key file that must not be imported."""
        where = os.path.dirname(path)
        given, conf = p.given, p.conf
        members: dict[str, None] = {}
        missing: dict[str, None] = {}
        redirect: str | None = None
        me = norm_path(path)
        budget = Budget(self.limits)

        def take(alternatives: Sequence[str], required: bool) -> None:
            budget.tick()
            for alt in alternatives:
                if alt in given:
                    if alt != me:
                        members[alt] = None
                    return
            for alt in alternatives:
                if not p.folders.may_exist(alt):
                    continue
                try:
                    st = os.lstat(alt)
                except (OSError, ValueError):
                    continue
                if conf is not None and stat.S_ISLNK(st.st_mode):
                    raise KeyFileRejected(through_link_reason(where, alt, alt))
                missing[alt] = None
                return
            if required and alternatives:
                missing[alternatives[0]] = None

        for spec in rule.members:
            if isinstance(spec, Sibling):
                named = [norm_path(os.path.join(where, render(t, values))) for t in spec.templates]
                if conf is not None:
                    self._confine(_parsed(ContentRefs(required=[tuple(named)]), None), where, conf)
                take(named, spec.required)
            elif isinstance(spec, Content):
                source = (
                    me if spec.source is None else norm_path(os.path.join(where, render(spec.source, values)))
                )
                if source not in given:
                    continue
                parsed = self._content(spec, source, p)
                if parsed is None:
                    continue
                if parsed.rejected is not None:
                    raise KeyFileRejected(parsed.rejected)
                if conf is not None:
                    self._confine(parsed, where, conf)
                refs = parsed.refs or ContentRefs()
                for alts in refs.required:
                    take(alts, spec.required)
                for opt in refs.optional:
                    take((opt,), False)
                if refs.redirect is not None and refs.redirect != me:
                    redirect = refs.redirect
            elif isinstance(spec, Folder):
                folder = norm_path(os.path.join(where, render(spec.folder, values)))
                if conf is not None:
                    self._confine(_parsed(ContentRefs(required=[(folder,)]), None), where, conf)
                try:
                    st: os.stat_result | None = os.lstat(folder)
                except (OSError, ValueError):
                    st = None
                if st is not None and stat.S_ISLNK(st.st_mode) and conf is not None:
                    raise KeyFileRejected(through_link_reason(where, folder, folder))
                if st is None or not stat.S_ISDIR(st.st_mode):
                    if spec.required:
                        missing[folder + os.sep] = None
                    continue
                for found in self._folder_files(folder, spec, budget, conf is not None, where):
                    if found in given:
                        members[found] = None
                    else:
                        missing[found] = None
        for m in members:
            missing.pop(m, None)
        if len(members) + len(missing) > self.limits.max_members:
            raise too_many(len(members) + len(missing), self.limits)
        return list(members), list(missing), redirect

    def _nest(self, members: list[str], missing: list[str], p: _Pass) -> tuple[list[str], list[str]]:
        """Add the members of members that are themselves key files (one level)."""
        out = dict.fromkeys(members)
        lost = dict.fromkeys(missing)
        for m in members:
            sep = m.rfind(os.sep)
            matched = self._match_rule(m, m[sep + 1 :])
            if matched is None or matched[0].nested:
                continue
            sub, sub_missing, _redirect = self._evaluate(m, matched[0], matched[1], p)
            out.update(dict.fromkeys(sub))
            lost.update(dict.fromkeys(sub_missing))
        for m in out:
            lost.pop(m, None)
        if len(out) + len(lost) > self.limits.max_members:
            raise too_many(len(out) + len(lost), self.limits)
        return list(out), list(lost)

    # -- the opt-in Bio-Formats oracle

    def _asks_oracle(self, name: str) -> bool:
        return self.oracle is not None and last_token(name) in self._oracle_suffixes

    def _ask_oracle(self, path: str) -> UsedFiles | None:
        """The oracle's answer for ``path``, cached while the file and its folder are
        unchanged (a member copied next to it changes the folder's mtime)."""
        assert self.oracle is not None
        try:
            st = os.lstat(path)
            dst = os.lstat(os.path.dirname(path))
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        ck = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, dst.st_mtime_ns)
        if ck in self._oracle_cache:
            self._oracle_cache.move_to_end(ck)
            return self._oracle_cache[ck]
        answer = self.oracle(path)
        self._oracle_cache[ck] = answer
        while len(self._oracle_cache) > self.limits.cache_entries:
            self._oracle_cache.popitem(last=False)
        return answer

    def _oracle_container(self, path: str, p: _Pass) -> _Container | str | None:
        """A container from Bio-Formats' used files of ``path``; the key file it waits for
        (a ``str``) when Bio-Formats names a key not given yet; None when the rule table
        decides (no answer, one file, or a file Bio-Formats cannot open)."""
        answer = self._ask_oracle(path)
        if answer is None:
            return None
        if answer.too_many:
            reason = (
                f"Bio-Formats uses {answer.too_many:,} files with it, over the limit of "
                f"{answer.limit:,} files the Bio-Formats oracle may list; not importing it"
            )
            return _Container(path, path, [path], [], answer.format, reason)
        raw = [os.path.abspath(f) for f in answer.files]  # Java does not resolve ".."
        files = list(dict.fromkeys(norm_path(f) for f in raw))
        if len(files) > self.limits.max_members:
            return _Container(path, path, [path], [], answer.format, too_many(len(files), self.limits).reason)
        if len(files) <= 1 and files in ([], [path]):
            return None
        where = os.path.dirname(path)
        try:
            if p.conf is not None:  # Bio-Formats' answer is confined as a key file's references
                self._confine(_parsed(ContentRefs(required=[(f,) for f in files]), None), where, p.conf)
                for f in files:
                    if f not in p.given and p.conf.is_link(f):
                        raise KeyFileRejected(through_link_reason(where, f, f))
                for f in raw:  # the kernel resolves a ".." after any link before it
                    if ".." in f.split(os.sep):
                        rel = f[len(p.conf.root) + 1 :] if p.conf.inside(f) else None
                        problem = (
                            p.conf.stepwise(p.conf.root, rel, rel)
                            if rel is not None
                            else outside_reason(where, norm_path(f))
                        )
                        if problem is not None:
                            raise KeyFileRejected(problem)
        except KeyFileRejected as exc:
            return _Container(path, path, [path], [], answer.format, exc.reason)
        key = files[0]
        if key not in p.given:
            return key
        given = [f for f in files if f in p.given]
        missing = [f for f in files if f not in p.given]
        return _Container(path, key, [key] + [f for f in given if f != key], missing, answer.format)

    # -- grouping

    def group(self, files: Iterable[str], *, root: str | None = None) -> GroupingResult:
        """Group ``files``. With ``root`` (the user's folder), every reference a key file
        makes must stay inside it, lexically and with no symbolic link on the way; a key
        file that refers outside is refused with a reason naming the reference (the
        importer would open whatever the key file names, whatever we group)."""
        given: dict[str, str] = {}
        for f in files:
            given.setdefault(norm_path(f), f)
        p = _Pass(given, root)
        refused: list[Refused] = []
        waiting: list[Waiting] = []
        eligible: list[tuple[str, str]] = []  # (normalised path, base name), sorted
        system: list[str] = []  # never keys; members only if a rule names them
        sep = os.sep
        for norm in sorted(given):
            name = norm[norm.rfind(sep) + 1 :]
            if is_system_file(norm):
                system.append(norm)
            else:
                eligible.append((norm, name))

        # 1-2. candidates, in sorted order, skipping files an earlier container uses
        containers: list[_Container] = []
        all_used: set[str] = set()
        redirects: dict[str, str] = {}
        for path, name in eligible:
            if path in all_used:
                continue
            matched = self._match_rule(path, name)
            if matched is None:
                if self._asks_oracle(name):
                    found = self._oracle_container(path, p)
                    if isinstance(found, str):
                        redirects[path] = found
                    elif found is not None:
                        containers.append(found)
                        all_used.update(found.used)
                continue
            rule, values = matched
            try:
                members, missing, redirect = self._evaluate(path, rule, values, p)
                if redirect is None and rule.nested:
                    members, missing = self._nest(members, missing, p)
            except KeyFileRejected as exc:
                containers.append(_Container(path, path, [path], [], rule.format, exc.reason))
                all_used.add(path)
                continue
            if redirect is not None:
                redirects[path] = redirect
                continue
            key = path
            if rule.key_choice == "first_member" and members:
                key = min(members)
            used = [key] + [f for f in [path, *members] if f != key]
            containers.append(_Container(path, key, used, missing, rule.format))
            all_used.update(used)

        # 3. OMERO's subsumption: drop a container another one uses, if it uses <= 1 file
        users: dict[str, int] = {}
        for c in containers:
            for f in set(c.used):
                users[f] = users.get(f, 0) + 1
        kept = [
            c
            for c in containers
            if c.rejected is not None or not (len(set(c.used) - {c.file}) <= 1 and users.get(c.file, 0) > 1)
        ]

        # 4. claims, in visiting order: never two filesets for one file
        claimed: set[str] = set()
        filesets: list[Fileset] = []
        for c in kept:
            if c.key in claimed:
                continue
            if c.rejected is not None:  # not imported; its members are not claimed by it
                claimed.add(c.key)
                refused.append(Refused(given[c.key], c.rejected))
                continue
            files_ = [f for f in dict.fromkeys(c.used) if f not in claimed]
            claimed.update(files_)
            grouped = tuple(sorted(given[f] for f in files_))
            filesets.append(
                Fileset(
                    key=given[c.key],
                    files=grouped,
                    format=c.format,
                    missing=tuple(sorted(c.missing)),
                    may_grow=self._may_grow(grouped),
                )
            )

        # 5. everything else: waiting companions, single files, unknown files
        refused += [Refused(given[p], REASON_SYSTEM) for p in system if p not in claimed]
        for path, name in eligible:
            if path in claimed:
                continue
            original = given[path]
            target = redirects.get(path)
            if target is not None:
                if target in given:
                    refused.append(
                        Refused(original, f"companion not used by its key file ({os.path.basename(target)})")
                    )
                else:
                    reason = f"companion waiting for its key file ({name} needs {os.path.basename(target)})"
                    waiting.append(Waiting(original, WaitKind.KEY_NAMED_BUT_ABSENT, (target,), reason))
                continue
            companion = self._companion(path, name, given)
            if isinstance(companion, Waiting):
                waiting.append(companion)
            elif companion is not None:
                refused.append(companion)
            elif (companion_of := COMPANION_SUFFIXES.get(last_token(name))) is not None:
                refused.append(Refused(original, f"metadata file of a {companion_of} dataset"))
            elif self._is_single_name(name):
                filesets.append(
                    Fileset(
                        key=original, files=(original,), format=SINGLE, may_grow=self._may_grow((original,))
                    )
                )
            else:
                refused.append(Refused(original, REASON_UNKNOWN))

        return GroupingResult(
            filesets=tuple(sorted(filesets, key=lambda fs: fs.key)),
            waiting=tuple(sorted(waiting, key=lambda w: w.path)),
            refused=tuple(sorted(refused, key=lambda r: (r.path, r.reason))),
        )


def group_paths(paths: Iterable[str], readers: Path | None = None) -> GroupingResult:
    """Convenience: ``FilesetGrouper(readers).group(paths)``."""
    return FilesetGrouper(readers).group(paths)
