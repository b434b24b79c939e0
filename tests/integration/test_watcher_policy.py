"""The path policy against the real watcher and the Ice start-up scan: one answer for every name."""

from __future__ import annotations

import random
from pathlib import Path

from omero_dropbox.config import load_config
from omero_dropbox.ownership import Ownership
from omero_dropbox.watcher import Watcher, scan_tree
from tests.support.waiting import wait_for


def _overrides(**props: str) -> list[str]:
    return [f"omero.fs.{k}={v}" for k, v in props.items()]


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
