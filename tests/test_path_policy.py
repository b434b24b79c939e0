"""One path policy and one owner: what the watcher reports, the Ice start-up scan lists and
the engine waits for is the same answer, and who owns a path is decided once."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from omero_dropbox._native import PathPolicy
from omero_dropbox.config import load_config
from omero_dropbox.ownership import NotOwned, Owner, Ownership, UserList
from omero_dropbox.watcher import Watcher, scan_tree

from .conftest import wait_for


def _overrides(**props: str) -> list[str]:
    return [f"omero.fs.{k}={v}" for k, v in props.items()]


def test_policy_says_why_a_path_is_not_reported(tmp_path: Path) -> None:
    policy = PathPolicy(tmp_path, whitelist=["tif"], blacklist=["amy/private"])
    assert policy.reports(tmp_path / "amy" / "run" / "a.TIF")
    assert policy.why(tmp_path / "amy" / "run" / "a.tif") is None
    why = policy.why(tmp_path / "amy" / "a.czi")
    assert why is not None and "whitelist" in why
    why = policy.why(tmp_path / "amy" / "private" / "a.tif")
    assert why is not None and "blacklist" in why
    why = policy.why(tmp_path / "amy" / "Thumbs.db")
    assert why is not None and "thumbnail" in why and "ignoreSysFiles" in why
    why = policy.why(tmp_path / "amy" / ".git" / "a.tif")
    assert why is not None and ".git" in why
    why = policy.why("/elsewhere/a.tif")
    assert why is not None and "not below" in why
    flat = PathPolicy(tmp_path, mode="flat")
    assert flat.reports(tmp_path / "a.tif") and not flat.reports(tmp_path / "amy" / "a.tif")
    assert "flat" in (flat.why(tmp_path / "amy" / "a.tif") or "")
    with pytest.raises(ValueError, match="unknown path mode 'deep'"):
        PathPolicy(tmp_path, mode="deep")


def test_policy_never_data_holds_even_when_system_files_are_reported(tmp_path: Path) -> None:
    policy = PathPolicy(tmp_path, ignore_sys_files=False)
    assert policy.reports(tmp_path / "amy" / ".DS_Store")
    assert policy.never_data(tmp_path / "amy" / ".DS_Store")
    assert policy.never_data(tmp_path / "amy" / "__MACOSX" / "run" / "a.tif")
    assert policy.never_data(tmp_path / "amy" / "ehthumbs.db")
    assert not policy.never_data(tmp_path / "amy" / "run" / "a.tif")


def test_the_watcher_the_ice_scan_and_the_policy_agree_on_every_name(tmp_path: Path) -> None:
    """Random names, good and bad, on a real tree: what the live watcher reports, what the Ice
    DropBox's start-up scan lists and what the policy says are the same sets."""
    dropbox = tmp_path / "DropBox"
    rng = random.Random(7)
    stems = ["a", ".hidden", "Thumbs", "ehthumbs", "desktop", "x~", "~$lock", "Icon\r", "run"]
    suffixes = [".tif", ".db", ".ini", ".tmp", ".part", "", ".TIF", ".swp"]
    folders = [
        "amy",
        "amy/__MACOSX",
        "amy/.git",
        "amy/lost+found",
        "amy/run 1",
        "amy/New Folder",
        "amy/private",
    ]
    paths = set()
    for _ in range(150):
        folder = dropbox / rng.choice(folders)
        paths.add(folder / (rng.choice(stems) + rng.choice(suffixes)))
    config = load_config(overrides=_overrides(watchDir=str(dropbox), blacklist="amy/private"))
    (monitor,) = config.users
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    ownership = Ownership(config)
    with Watcher(dropbox, blacklist=list(monitor.blacklist), settle=0.1) as watcher:
        for p in paths:
            p.write_bytes(b"x")
        policy = ownership.policies()[0]
        expected = {str(p) for p in paths if policy.reports(p)}
        seen: set[str] = set()

        def all_reported() -> bool:
            for batch in iter(lambda: watcher.next_batch(timeout=0.05) or [], []):
                seen.update(e.path for e in batch if not e.is_dir)
            return seen >= expected

        assert wait_for(all_reported, 20), sorted(expected - seen)
        assert seen == expected  # and nothing the policy says is not reported
    assert set(scan_tree(ownership.policies()[0])) == expected
    assert all(ownership.reported(p) for p in expected)
    assert 0 < len(expected) < len(paths)


def test_the_deepest_watch_dir_owns_a_path() -> None:
    config = load_config(overrides=_overrides(importUsers="default;root", watchDir=";/OMERO/DropBox/lab"))
    default, root = config.users
    ownership = Ownership(config, UserList(["amy", "lab", "root"]))
    found = ownership.owner("/OMERO/DropBox/lab/x/a.tif")
    assert isinstance(found, Owner) and found.user == "root" and found.monitor is root
    assert found.root == "/OMERO/DropBox/lab"
    found = ownership.owner("/OMERO/DropBox/amy/run/a.tif")
    assert isinstance(found, Owner) and (found.user, found.root) == ("amy", "/OMERO/DropBox/amy")
    assert found.monitor is default


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/OMERO/DropBox/a.tif", "directly in the DropBox root"),
        ("/OMERO/DropBox/-rf/a.tif", "not a valid OMERO user name"),
        ("/OMERO/DropBox/.amy/a.tif", "not a valid OMERO user name"),
        ("/OMERO/DropBox/zak/a.tif", "no OMERO user named 'zak'"),
        ("/OMERO/DropBox/amy/../zak/a.tif", "climbs out"),
        ("/tmp/a.tif", "outside every watched directory"),
    ],
)
def test_a_path_nobody_owns_says_why(path: str, why: str) -> None:
    ownership = Ownership(load_config(), UserList(["amy"]))
    found = ownership.owner(path)
    assert isinstance(found, NotOwned) and why in found.reason
    assert found.user == ("zak" if "zak" in why else None)


def test_a_named_user_owns_her_whole_tree() -> None:
    config = load_config(overrides=_overrides(importUsers="amy", watchDir="/data/amy-scope"))
    ownership = Ownership(config, UserList([]))  # a named monitor needs no directory lookup
    found = ownership.owner("/data/amy-scope/a.tif")
    assert isinstance(found, Owner) and (found.user, found.root) == ("amy", "/data/amy-scope")
    assert ownership.of_user("amy") is found
    assert ownership.backlog_key(os.path.join("/data/amy-scope", "x", "a.tif")) == "amy"
