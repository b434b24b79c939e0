"""One path policy and one owner: what the watcher reports, the Ice start-up scan lists and
the engine waits for is the same answer, and who owns a path is decided once.

That a real watcher and the Ice scan agree with the policy is checked in
tests/integration/test_watcher_policy.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omero_dropbox._native import PathPolicy
from omero_dropbox.config import load_config
from omero_dropbox.ownership import NotOwned, Owner, Ownership, UserList


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
