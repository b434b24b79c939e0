"""Security: links, bad user directories, hostile names, exact bytes, optional owner check.

Driven through the real CLI on real directories; a recording program stands in for the
OMERO importer (no OMERO server runs here) and records the exact bytes of every argument.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from omero_dropbox.journal import display_path
from tests.support.faults import check_imports, file_reason, write_file, write_fileset
from tests.support.records import Key
from tests.support.service import Service, running
from tests.support.waiting import wait_for

USERS = ["amy", "zak"]


def _imported_paths(service: Service) -> set[bytes]:
    return {f for r in service.records() for f in r.files}


def _skipped(service: Service, path: bytes | str | Path, why: str, timeout: float = 30) -> None:
    """``path`` is skipped in the journal and in the log, both saying ``why``."""
    shown = display_path(os.fsdecode(path))
    assert wait_for(lambda: f"Not importing {shown}: " in service.text(), timeout), service.tail()
    line = next(ln for ln in service.text().splitlines() if f"Not importing {shown}: " in ln)
    assert why in line, line
    got = file_reason(service.state, path)
    assert got is not None and got[0] == "skipped" and why in got[1], got


def test_links_into_another_users_tree_or_outside_are_never_imported_and_the_log_says_why(
    shm_dir: Path,
) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    outside = shm_dir / "outside"
    secret = write_file(dropbox / "zak" / "private" / "secret.tif", b"II*\x00zak's data")
    elsewhere = write_file(outside / "etc" / "elsewhere.tif", b"II*\x00not in any DropBox")
    linked_twice = write_file(outside / "hard-source.tif", b"II*\x00hard")
    (dropbox / "amy").mkdir(parents=True)
    service = Service(shm_dir, dropbox, state, users=USERS)
    with running(service):
        amy = dropbox / "amy"
        os.symlink(secret, amy / "to-zak.tif")
        os.symlink(elsewhere, amy / "to-outside.tif")
        os.link(linked_twice, amy / "hard-outside.tif")
        os.symlink(dropbox / "zak" / "private", amy / "zak-dir")  # a link to zak's whole directory
        os.symlink(outside / "etc", amy / "etc-dir")
        mine = {write_fileset(amy / "own", "mine", 1, random.Random(1)): "amy"}
        _skipped(service, amy / "to-zak.tif", "symbolic link to")
        _skipped(service, amy / "to-outside.tif", "outside amy's DropBox")
        _skipped(service, amy / "hard-outside.tif", "hard link (2 links)")
        expected = {frozenset({secret}): "zak", **mine}
        assert wait_for(lambda: len(service.records()) >= len(expected), 60), service.tail()
        os.link(secret, amy / "hard-to-zak.tif")  # after zak's import: amy must not get it
        _skipped(service, amy / "hard-to-zak.tif", "hard link")
        assert wait_for(lambda: "Not importing" in service.text(), 5)
    check_imports(service.records(), expected, state)
    imported = _imported_paths(service)
    for name in (b"to-zak.tif", b"to-outside.tif", b"hard-outside.tif", b"hard-to-zak.tif"):
        assert os.fsencode(dropbox / "amy") + b"/" + name not in imported
    assert not any(b"/zak-dir/" in p or b"/etc-dir/" in p for p in imported), imported
    assert os.fsencode(elsewhere) not in imported and os.fsencode(linked_twice) not in imported


def test_files_under_a_symlinked_directory_are_not_imported_as_the_linking_user(shm_dir: Path) -> None:
    """A directory symlink in amy's tree that leads to zak's files: the files are regular, the
    path component is the link. Nothing under it may be imported as amy."""
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    (dropbox / "amy").mkdir(parents=True)
    zak_dir = dropbox / "zak" / "data"
    zak_file = write_file(zak_dir / "z.tif", b"II*\x00zak")
    service = Service(shm_dir, dropbox, state, users=USERS)
    with running(service):
        assert wait_for(lambda: len(service.records()) == 1, 60), service.tail()
        os.symlink(zak_dir, dropbox / "amy" / "linked")
        # Drop a file into zak's directory through amy's link: it lands in zak's tree.
        write_file(dropbox / "amy" / "linked" / "via-link.tif", b"II*\x00via")
        own = {write_fileset(dropbox / "amy", "own", 0, random.Random(2)): "amy"}
        assert wait_for(lambda: len(service.records()) >= 3, 60), service.tail()
    expected = {
        frozenset({zak_file}): "zak",
        frozenset({os.fsencode(zak_dir / "via-link.tif")}): "zak",
        **own,
    }
    check_imports(service.records(), expected, state)
    assert not any(b"/amy/linked/" in p for p in _imported_paths(service))


@pytest.mark.parametrize(
    "name,why",
    [
        (b"a\x01b", "is not a valid OMERO user name"),
        (b"tab\tname", "is not a valid OMERO user name"),
        (b" leading", "is not a valid OMERO user name"),
        (b"trailing ", "is not a valid OMERO user name"),
        (b"new\nline", "is not a valid OMERO user name"),
        (b"back\\slash", "is not a valid OMERO user name"),
        (b"-rf", "is not a valid OMERO user name"),  # would be an option to the importer
    ],
    ids=repr,
)
def test_bad_user_directory_names_are_skipped_with_a_reason(shm_dir: Path, name: bytes, why: str) -> None:
    _bad_user_directory_is_skipped(shm_dir, name, why, {})


def test_dot_user_directory_is_skipped_with_a_reason_when_system_files_are_not_filtered(
    shm_dir: Path,
) -> None:
    # With the default ignoreSysFiles, dot-directories never reach the engine (see below).
    _bad_user_directory_is_skipped(
        shm_dir, b"...", "is not a valid OMERO user name", {"ignoreSysFiles": "false"}
    )


def test_dot_user_directory_is_never_watched_and_the_log_says_why(shm_dir: Path) -> None:
    # With the default ignoreSysFiles the watcher turns system folders down before the engine
    # sees them (as upstream does, without a journal entry); one log line says why and how
    # to change it.
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    dropbox.mkdir()
    service = Service(shm_dir, dropbox, state)
    with running(service):
        write_file(dropbox / "..hidden" / "sub" / "img.tif", b"II*\x00x")
        good = {write_fileset(dropbox / "amy", "ok", 0, random.Random(3)): "amy"}
        assert wait_for(lambda: len(service.records()) >= 1, 30), service.tail()
        shown = f"Not watching {dropbox / '..hidden'}: its name marks a system folder"
        assert wait_for(lambda: shown in service.text(), 10), service.tail()
        assert "ignoreSysFiles=false" in next(ln for ln in service.text().splitlines() if shown in ln)
    check_imports(service.records(), good, state)


def _bad_user_directory_is_skipped(shm_dir: Path, name: bytes, why: str, props: dict[str, str]) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    dropbox.mkdir()
    service = Service(shm_dir, dropbox, state, props=props)  # no user list: only the name rules apply
    with running(service):
        bad = write_file(os.fsencode(dropbox) + b"/" + name + b"/sub/img.tif", b"II*\x00x")
        good = {write_fileset(dropbox / "amy", "ok", 0, random.Random(3)): "amy"}
        # The good file came after the bad one and waited longer: once it is imported,
        # the bad one has long been handled.
        assert wait_for(lambda: len(service.records()) >= 1, 30), service.tail()
        _skipped(service, bad, why, timeout=2)
    check_imports(service.records(), good, state)


def test_unknown_users_non_utf8_user_names_and_files_in_the_root_are_skipped_with_a_reason(
    shm_dir: Path,
) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    dropbox.mkdir()
    service = Service(shm_dir, dropbox, state, users=USERS)
    with running(service):
        ghost = write_file(dropbox / "ghost" / "g.tif", b"II*\x00ghost")
        latin1 = write_file(os.fsencode(dropbox) + b"/am\xe9/x.tif", b"II*\x00latin1")
        root_file = write_file(dropbox / "in-the-root.tif", b"II*\x00root")
        good = {write_fileset(dropbox / "zak", "ok", 1, random.Random(4)): "zak"}
        _skipped(service, ghost, "user unknown: no OMERO user named 'ghost'")
        _skipped(service, latin1, "user unknown: no OMERO user named 'am\\xe9'")
        _skipped(service, root_file, "outside user directories (directly in the DropBox root)")
        assert wait_for(lambda: len(service.records()) >= 1, 30), service.tail()
    check_imports(service.records(), good, state)


HOSTILE = [
    b"$(touch PWNED).tif",
    b"`touch PWNED`.tif",
    b"semi;touch PWNED;.tif",
    b"quote'and\"double.tif",
    b"new\nline.tif",
    b"-rf.tif",
    b"--help.tif",
    b"{files}.tif",
    b"{user}.tif",
    b"a b  c.tif",
    b"*.tif",
    b"caf\xe9-latin1.tif",
    b"\xff\xfe-not-utf8.tif",
]


def test_hostile_and_non_utf8_names_reach_the_importer_as_one_exact_argument_each(shm_dir: Path) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    (dropbox / "amy").mkdir(parents=True)
    service = Service(shm_dir, dropbox, state, users=USERS)
    with running(service):
        expected: dict[Key, str] = {}
        base = os.fsencode(dropbox / "amy")
        for i, name in enumerate(HOSTILE):
            expected[frozenset({write_file(base + b"/n%d/" % i + name, b"II*\x00%d" % i)})] = "amy"
        # Multi-file filesets and directories with hostile, non-UTF-8 names too.
        odd_dir = base + b"/-dir \xe9;$(touch PWNED)"
        expected[frozenset({write_file(odd_dir + b"/\xe9t\xe9.ics", b"\t\nics_version\t1.0\n"),
                            write_file(odd_dir + b"/\xe9t\xe9.ids", b"\x00" * 64)})] = "amy"  # fmt: skip
        assert wait_for(lambda: len(service.records()) >= len(expected), 60), service.tail()
    check_imports(service.records(), expected, state)
    for record in service.records():
        # {files} gave one argument per file, with the exact bytes, and an absolute path.
        assert all(f.startswith(b"/") for f in record.files)
        assert record.user == "amy"
    assert not (shm_dir / "PWNED").exists() and not (Path.cwd() / "PWNED").exists()
    # A newline in a name cannot forge log lines: every line is one of ours.
    stray = [ln for ln in service.text().splitlines() if not re.match(r"\d{4}-\d\d-\d\d \d\d:", ln)]
    assert not stray, stray
    for i, name in enumerate(HOSTILE):
        got = file_reason(state, os.fsencode(dropbox / "amy") + b"/n%d/" % i + name)
        assert got is not None and got[0] == "imported", (name, got)


@pytest.mark.needs_root
@pytest.mark.parametrize("require_owner", [True, False], ids=["requireOwner", "default"])
def test_require_owner_imports_only_files_owned_by_the_owner_of_the_users_directory(
    shm_dir: Path, require_owner: bool
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give files other owners")
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    amy = dropbox / "amy"
    amy.mkdir(parents=True)
    os.chown(amy, 1000, 1000)
    props = {"ng.requireOwner": "true"} if require_owner else {}
    service = Service(shm_dir, dropbox, state, users=USERS, props=props)
    with running(service):
        staging = shm_dir / "staging"
        owned = write_file(staging / "owned.tif", b"II*\x00amy's")
        foreign = write_file(staging / "foreign.tif", b"II*\x00someone else's")
        os.chown(owned, 1000, 1000)
        os.chown(foreign, 1001, 1001)
        os.rename(owned, amy / "owned.tif")
        os.rename(foreign, amy / "foreign.tif")
        expected = {frozenset({os.fsencode(amy / "owned.tif")}): "amy"}
        if require_owner:
            _skipped(service, amy / "foreign.tif", f"owner uid 1001 is not the owner of {amy} (requireOwner)")
        else:
            expected[frozenset({os.fsencode(amy / "foreign.tif")})] = "amy"
        assert wait_for(lambda: len(service.records()) >= len(expected), 30), service.tail()
    check_imports(service.records(), expected, state)
