"""The engine driven by scripted events: its waiting rules on a fake clock, then the whole
engine fed events through ``DropBox.feed``.

The aggregator (:mod:`omero_dropbox.aggregator`) is pure: the clock is the ``now`` each call
is given, and the disk is a :class:`~omero_dropbox.aggregator.DiskView`. Here the disk is a
scripted table of files that are on disk but not reported (``Disk``), since what is tested is
the rules, not the filesystem; the engine's real view (lstat + journal) is covered end to end
by tests/e2e/test_faults_fs.py and tests/e2e/test_edges_engine.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from omero_dropbox.aggregator import MISSING_MEMBER_GRACE, Aggregator, Waits, wait_for
from omero_dropbox.config import load_config
from omero_dropbox.engine import DropBox
from omero_dropbox.grouping import Fileset, FilesetGrouper
from omero_dropbox.importers import ImportRequest
from omero_dropbox.ownership import UserList

ROOT = "/d/amy"
WAITS = Waits(dir_import_wait=10.0, complete_wait=2.0)


@dataclass
class Disk:
    """Files on disk that the watcher has not reported, and when each was last written."""

    written_at: dict[str, float] = field(default_factory=dict)
    now: float = 0.0
    asked: list[tuple[str, ...]] = field(default_factory=list)

    def unsettled(self, paths: Sequence[str], wait: float) -> tuple[list[str], bool]:
        self.asked.append(tuple(paths))
        on_disk = [p for p in paths if p in self.written_at]
        return on_disk, any(self.now - self.written_at[p] < wait for p in on_disk)


def ics(stem: str, folder: str = ROOT, missing: bool = False) -> Fileset:
    key, data = f"{folder}/{stem}.ics", f"{folder}/{stem}.ids"
    if missing:
        return Fileset(key, (key,), "ICS", missing=(data,))
    return Fileset(key, (key, data), "ICS")


class Script:
    """One user's pool, fed and asked at the times a test gives."""

    def __init__(self, disk: Disk | None = None) -> None:
        self.agg = Aggregator()
        self.disk = disk or Disk()

    def arrive(self, t: float, *paths: str) -> None:
        for p in paths:
            self.agg.add("amy", p, ROOT, t)

    def group(
        self, t: float, filesets: Sequence[Fileset], waiting: dict[str, tuple[str, ...]] | None = None
    ) -> None:
        self.agg.take_grouping("amy", filesets, waiting or {}, t)

    def due(self, t: float, unread: bool = False) -> tuple[list[str], list[str]]:
        self.disk.now = t
        due, given_up = self.agg.due("amy", t, WAITS, self.disk, unread=unread)
        return [fs.key for fs in due], [g.path for g in given_up]


def test_a_complete_fileset_is_due_after_complete_wait_and_activity_restarts_the_wait() -> None:
    s = Script()
    fs = ics("a")
    s.arrive(0.0, *fs.files)
    s.group(0.0, [fs])
    assert s.due(1.9) == ([], [])
    s.arrive(1.5, f"{ROOT}/other.tif")  # the folder is active again
    s.group(1.5, [fs, Fileset(f"{ROOT}/other.tif", (f"{ROOT}/other.tif",), "TIFF", may_grow=True)])
    assert s.due(3.0) == ([], [])
    assert s.due(3.5) == ([fs.key], [])
    assert s.due(3.6) == ([], [])  # taken once
    assert s.due(11.5) == ([f"{ROOT}/other.tif"], [])  # a lone .tif waits the full dirImportWait
    assert not s.agg.pools["amy"].files


def test_a_file_arriving_in_a_sub_folder_holds_a_fileset_keyed_above_it() -> None:
    """A key file (a .nd, a .pattern) may sit in a folder above its members: every file that
    arrives counts as activity in its folder and every folder above it, up to the user's."""
    s = Script()
    key, member = f"{ROOT}/run/exp.nd", f"{ROOT}/run/pos1/a.tif"
    fs = Fileset(key, (key, member), "MetaMorph ND")
    s.arrive(0.0, *fs.files)
    s.group(0.0, [fs])
    s.arrive(1.0, f"{ROOT}/run/pos2/b.tif")
    s.group(1.0, [fs])
    assert s.due(2.9) == ([], [])
    assert s.due(3.0) == ([key], [])


@pytest.mark.parametrize(
    ("may_grow", "complete", "expected"), [(False, True, 2.0), (True, True, 10.0), (False, False, 10.0)]
)
def test_wait_for_takes_the_full_wait_unless_complete_and_final(
    may_grow: bool, complete: bool, expected: float
) -> None:
    key = f"{ROOT}/a.tif"
    fs = Fileset(key, (key,), "TIFF", missing=() if complete else (f"{ROOT}/b.tif",), may_grow=may_grow)
    assert wait_for(fs, WAITS) == expected
    assert (
        wait_for(fs, Waits(dir_import_wait=1.0, complete_wait=5.0)) == 1.0
    )  # never longer than dirImportWait


def test_a_fileset_waits_for_a_missing_member_while_it_is_written_then_at_most_the_grace() -> None:
    disk = Disk()
    s = Script(disk)
    fs = ics("a", missing=True)
    member = fs.missing[0]
    s.arrive(0.0, fs.key)
    s.group(0.0, [fs])
    disk.written_at[member] = 9.0  # still being copied
    assert s.due(10.0) == ([], [])
    assert s.due(18.9) == ([], [])  # written 9.9 s ago: within dirImportWait
    # No more writes: held from the first look after it settled, for wait + grace.
    assert s.due(19.5) == ([], [])
    assert s.due(19.5 + WAITS.dir_import_wait + MISSING_MEMBER_GRACE - 0.1) == ([], [])
    assert s.due(19.5 + WAITS.dir_import_wait + MISSING_MEMBER_GRACE) == ([fs.key], [])


def test_unread_events_hold_a_fileset_whose_member_is_on_disk() -> None:
    disk = Disk(written_at={f"{ROOT}/a.ids": -100.0})
    s = Script(disk)
    fs = ics("a", missing=True)
    s.arrive(0.0, fs.key)
    s.group(0.0, [fs])
    horizon = WAITS.dir_import_wait + MISSING_MEMBER_GRACE + 100
    assert s.due(horizon, unread=True) == ([], [])  # its report may be among them
    assert s.due(horizon + 0.1) == ([], [])  # held from now on, for wait + grace
    assert s.due(horizon + 0.1 + WAITS.dir_import_wait + MISSING_MEMBER_GRACE) == ([fs.key], [])


def test_a_missing_member_not_on_disk_does_not_hold_its_fileset() -> None:
    s = Script()
    fs = ics("a", missing=True)
    s.arrive(0.0, fs.key)
    s.group(0.0, [fs])
    assert s.due(10.0) == ([fs.key], [])


def test_a_companion_without_its_key_is_given_up_after_dir_import_wait() -> None:
    s = Script()
    ids, key = f"{ROOT}/a.ids", f"{ROOT}/a.ics"
    s.arrive(0.0, ids)
    s.group(0.0, [], {ids: (key,)})
    assert s.due(9.9) == ([], [])
    due, given_up = s.agg.due("amy", 10.0, WAITS, s.disk)
    assert (due, [(g.path, g.reason) for g in given_up]) == (
        [],
        [(ids, "companion file whose key file never arrived")],
    )
    assert ids not in s.agg.pools["amy"].files


def test_a_companion_whose_key_is_on_disk_waits_the_grace_and_names_the_key() -> None:
    ids, key = f"{ROOT}/a.ids", f"{ROOT}/a.ics"
    s = Script(Disk(written_at={key: -100.0}))
    s.arrive(0.0, ids)
    s.group(0.0, [], {ids: (key,)})
    assert s.due(10.0 + MISSING_MEMBER_GRACE - 0.1) == ([], [])
    _due, given_up = s.agg.due("amy", 10.0 + MISSING_MEMBER_GRACE, WAITS, s.disk)
    assert len(given_up) == 1 and "a.ics is on disk but was not reported complete" in given_up[0].reason


def test_a_companion_claimed_by_its_key_is_imported_with_it() -> None:
    s = Script()
    fs = ics("a")
    s.arrive(0.0, fs.files[1])
    s.group(0.0, [], {fs.files[1]: (fs.key,)})
    s.arrive(5.0, fs.key)
    s.group(5.0, [fs])
    assert s.due(7.0) == ([fs.key], [])
    assert s.due(20.0) == ([], [])  # not given up later: it left with its fileset


def test_a_deleted_file_leaves_the_pool_and_counts_as_activity() -> None:
    s = Script()
    a, b = ics("a"), ics("b")
    s.arrive(0.0, *a.files, *b.files)
    s.group(0.0, [a, b])
    s.agg.drop(b.files[1], 1.0)
    pool = s.agg.pools["amy"]
    assert pool.dirty and b.files[1] not in pool.files
    s.group(1.0, [a])  # the engine regroups a dirty pool
    assert s.due(2.5) == ([], [])
    assert s.due(3.0) == ([a.key], [])


def test_a_grouping_of_an_older_copy_keeps_only_filesets_wholly_in_the_pool() -> None:
    s = Script()
    a, b = ics("a"), ics("b")
    s.arrive(0.0, *a.files, *b.files)
    s.agg.drop(b.files[0], 0.5)  # gone while the background grouping ran
    s.agg.take_grouping("amy", [a, b], {}, 1.0, only=s.agg.pools["amy"].files)
    assert s.agg.pools["amy"].filesets == [a]


def test_a_held_fileset_is_said_once_per_reason_and_forgotten_when_fixed_or_gone() -> None:
    # A bad dropbox.toml holds a fileset: its reason is logged when new, not at every re-check
    # (every 60 s, for days), and nothing is kept for a fileset that is released or deleted.
    s = Script()
    a, b = ics("a"), ics("b")
    s.arrive(0.0, *a.files, *b.files)
    s.group(0.0, [a, b])
    assert s.due(3.0) == ([a.key, b.key], [])
    assert s.agg.block("amy", a, "bad toml: line 1", 63.0) is True
    assert s.agg.block("amy", b, "bad toml: line 1", 63.0) is True
    assert s.due(10.0) == ([], [])  # held until the re-check
    assert [w[2] for w in s.agg.waiting("amy", 10.0, WAITS)] == ["bad toml: line 1"] * 2
    assert s.due(63.0) == ([a.key, b.key], [])
    assert s.agg.block("amy", a, "bad toml: line 1", 123.0) is False  # same reason: said already
    assert s.agg.block("amy", b, "bad toml: line 2", 123.0) is True  # a new reason is said
    s.agg.touch("amy", f"{ROOT}/dropbox.toml", ROOT, 70.0)  # the file was edited: ask at once
    assert s.due(80.0) == ([a.key, b.key], [])
    s.agg.unblock("amy", a.key)  # fixed: a goes
    assert s.agg.block("amy", b, "bad toml: line 2", 140.0) is False
    assert set(s.agg.pools["amy"].blocked) == {b.key}
    for f in b.files:  # b deleted while held: its block goes with it
        s.agg.drop(f, 90.0)
    s.group(90.0, [])
    assert s.agg.pools["amy"].blocked == {}
    assert s.agg.block("amy", b, "bad toml: line 2", 150.0) is True  # a new copy is said again


def test_put_back_files_wait_again_and_are_regrouped() -> None:
    s = Script()
    a = ics("a")
    s.arrive(0.0, *a.files)
    s.group(0.0, [a])
    assert s.due(3.0) == ([a.key], [])
    s.agg.put_back("amy", a.files)  # the journal was full: nothing lost
    pool = s.agg.pools["amy"]
    assert pool.dirty and set(a.files) <= pool.files


def test_the_real_grouper_and_the_aggregator_release_an_ics_pair_once(tmp_path: object) -> None:
    """The grouping the engine really gets, fed to the rules: a lone .ids waits for its .ics,
    and the pair is due once, after completeWait."""
    grouper = FilesetGrouper()
    s = Script()
    ids, key = f"{ROOT}/s.ids", f"{ROOT}/s.ics"
    s.arrive(0.0, ids)
    result = grouper.group([ids])
    assert [w.path for w in result.waiting] == [ids] and not result.filesets
    s.group(0.0, result.filesets, {w.path: w.awaited_keys for w in result.waiting})
    s.arrive(1.0, key)
    result = grouper.group([ids, key])
    s.group(1.0, result.filesets, {w.path: w.awaited_keys for w in result.waiting})
    assert s.due(2.9) == ([], [])
    assert s.due(3.0) == ([key], [])
    assert s.due(30.0) == ([], [])


# ----------------------------------------------------------------------------------------
# The engine as a whole, fed scripted events through DropBox.feed (as the Ice DropBox service
# feeds it): real files, a real journal, a real import queue; no watcher.


@dataclass(frozen=True)
class Scripted:
    path: str
    kind: str = "created"
    is_dir: bool = False
    src_path: str | None = None


def _fed_dropbox(tmp_path: Path, users: list[str], **props: str) -> tuple[DropBox, list[ImportRequest]]:
    settings = {"dirImportWait": "0.3", "throttleImport": "0", **props}
    config = load_config(overrides=[f"omero.fs.{k}={v}" for k, v in settings.items()])
    imported: list[ImportRequest] = []
    box = DropBox(config, imported.append, state_dir=tmp_path / "state", users=UserList(users), watch=False)
    box.start()
    return box, imported


def _run_until(box: DropBox, condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        box.step(timeout=0.05)
        if condition():
            return True
    return condition()


def test_fed_events_are_owned_by_the_deepest_watch_dir_whatever_their_source(tmp_path: Path) -> None:
    """A named user's folder inside the all-users DropBox: her files are imported as her, once,
    not as the folder's name too (ownership is decided by the path, not by who reported it)."""
    dropbox = tmp_path / "DropBox"
    lab = dropbox / "lab"
    lab.mkdir(parents=True)
    (dropbox / "amy").mkdir()
    box, imported = _fed_dropbox(
        tmp_path, ["amy", "lab", "root"], importUsers="default;root", watchDir=f"{dropbox};{lab}"
    )
    try:
        mine, hers = lab / "a.tif", dropbox / "amy" / "b.tif"
        mine.write_bytes(b"II*\0" + b"1" * 100)
        hers.write_bytes(b"II*\0" + b"2" * 100)
        # Both monitors would report the file in lab/ (the all-users one and root's own).
        box.feed([Scripted(str(mine)), Scripted(str(hers))])
        box.feed([Scripted(str(mine))])
        assert _run_until(box, lambda: len(imported) == 2), imported
        assert box.queue.wait_idle(10)
        assert sorted((r.user, r.key) for r in imported) == [("amy", str(hers)), ("root", str(mine))]
    finally:
        box.shutdown(drain_timeout=10)


def test_a_fed_deletion_takes_a_waiting_file_out_and_a_move_brings_it_back(tmp_path: Path) -> None:
    dropbox = tmp_path / "DropBox"
    (dropbox / "amy").mkdir(parents=True)
    box, imported = _fed_dropbox(tmp_path, ["amy"], watchDir=str(dropbox), dirImportWait="1")
    try:
        first, moved = dropbox / "amy" / "a.tif", dropbox / "amy" / "b.tif"
        first.write_bytes(b"II*\0" + b"1" * 100)
        box.feed([Scripted(str(first))])
        box.step(timeout=0.05)
        first.rename(moved)
        box.feed([Scripted(str(moved), kind="moved", src_path=str(first))])
        assert _run_until(box, lambda: len(imported) == 1), imported
        assert box.queue.wait_idle(10)
        assert [r.key for r in imported] == [str(moved)]
        assert not _run_until(box, lambda: len(imported) > 1, timeout=1.5)
    finally:
        box.shutdown(drain_timeout=10)


def test_a_fileset_held_by_bad_settings_waits_with_the_reason_until_rechecked_or_settings_change() -> None:
    s = Script()
    fs = ics("a")
    s.arrive(0.0, *fs.files)
    s.group(0.0, [fs])
    assert s.due(2.0) == ([fs.key], [])
    # The engine found its dropbox.toml bad: back to the pool, asked again at t=62.
    s.agg.block("amy", fs, "the folder settings cannot be used: bad", 62.0)
    assert s.due(30.0) == ([], [])
    [(key, n, why, until)] = s.agg.waiting("amy", 30.0, WAITS)
    assert (key, n, until) == (fs.key, 2, 62.0) and "folder settings cannot be used" in why
    assert s.due(62.0) == ([fs.key], [])  # the recheck
    s.agg.block("amy", fs, "still bad", 122.0)
    # The settings file was edited: its folder is active, the hold is lifted, and the fileset
    # goes after the usual quiet wait rather than at the next minute.
    s.agg.touch("amy", f"{ROOT}/dropbox.toml", ROOT, 70.0)
    assert s.due(71.0) == ([], [])
    assert s.due(72.0) == ([fs.key], [])
