"""The DropBox Ice application with our MonitorServer, both run exactly as docs/icegrid.md's templates say.

Real processes on loopback tcp, real files, real journal. No OMERO server can run here, so
imports go through ``--importer-command`` (a recorder script) and users through ``--users``;
the OMERO session path is tested in test_omero_importer.py.
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from omero_dropbox.config import load_config
from tests.support.deployment import Deployment, doc_templates, server_from_template
from tests.support.ice import python_env, require_ice
from tests.support.waiting import wait_for

require_ice()

DEADLINE = 30.0


def test_doc_snippet_keeps_upstream_ids_and_loads_with_our_config(tmp_path: Path) -> None:
    templates = doc_templates(tmp_path)
    options, props, server = server_from_template(templates, "MonitorServerTemplate")
    assert options == ["-m", "omero_dropbox.ice.monitor_server"]
    assert server.get("id") == "MonitorServer" and server.get("activation") == "always"
    adapter = server.find("adapter")
    assert adapter is not None and adapter.get("name") == "omerofs.MonitorServer"
    obj = adapter.find("object")
    assert obj is not None and (obj.get("identity"), obj.get("type")) == (
        "MonitorServer",
        "::monitors::MonitorServer",
    )
    assert props["omero.fs.monitorServerIdString"] == "MonitorServer"

    options, props, server = server_from_template(templates, "DropBoxTemplate")
    assert options[:2] == ["-m", "omero_dropbox.ice.dropbox_service"] and "--state-dir" in options
    assert server.get("id") == "DropBox"
    adapter = server.find("adapter")
    assert adapter is not None and adapter.get("name") == "omerofs.DropBox"
    assert props == {
        "omero.fs.serverIdString": "MonitorServer",
        "omero.fs.clientIdString": "DropBox",
        "omero.fs.clientAdapterName": "omerofs.DropBox",
    }
    refs = [p.get("refid") for p in server.find("properties").findall("properties")]  # type: ignore[union-attr]
    assert refs.index("DropBox") < refs.index("Profile")  # so `omero config set` still wins

    config = load_config(templates=templates, overrides=["omero.data.dir=/OMERO"])
    assert config.import_users == ("default",)
    (user,) = config.users
    assert str(user.watch_dir) == "/OMERO/DropBox"
    assert user.event_types == ("creation", "modification")
    assert (user.path_mode, user.dir_import_wait, user.throttle_import) == ("follow", 60, 10)
    assert (config.server_id_string, config.client_adapter_name) == ("MonitorServer", "omerofs.DropBox")


@pytest.fixture
def deployment(tmp_path: Path, shm_dir: Path) -> Iterator[Deployment]:
    dep = Deployment(tmp_path, shm_dir / "DropBox")
    (shm_dir / "DropBox").mkdir()
    yield dep
    dep.stop()


def _put(path: Path, data: bytes = b"II*\x00") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_files_dropped_are_imported_as_their_user_over_ice(deployment: Deployment) -> None:
    drop = deployment.drop
    before = _put(drop / "amy" / "before.png")  # there before anything runs: the start-up scan
    ms = deployment.start_monitor_server()
    db = deployment.start_dropbox()
    assert wait_for(lambda: [before] == deployment.imported_files(), DEADLINE), db.log
    new = [_put(drop / "amy" / "run1" / "a.png"), _put(drop / "zak" / "b.png")]
    _put(drop / "bob" / "c.png")  # bob does not exist
    assert wait_for(lambda: deployment.imported_files() == sorted([before, *new]), DEADLINE), db.log
    assert sorted(deployment.imported()) == sorted([("amy", [before]), ("amy", [new[0]]), ("zak", [new[1]])])
    # The new files came over Ice, from the MonitorServer, to DropBox.default.
    assert f"::Create::{new[0]}" in db.log and "Proxy: DropBox.default" in ms.log
    assert wait_for(lambda: "user unknown: no OMERO user named 'bob'" in db.log, DEADLINE)
    assert re.search(r"Created monitor with id = \S+", db.log)
    db.proc.send_signal(signal.SIGTERM)
    assert db.proc.wait(60) == 0
    assert wait_for(lambda: "Exiting with exit code: 0" in db.log, 5)
    assert wait_for(lambda: "destroyed" in ms.log, DEADLINE)  # DropBox cleaned up its monitor


def test_monitor_server_restart_is_recovered_and_nothing_is_missed(deployment: Deployment) -> None:
    drop = deployment.drop
    ms = deployment.start_monitor_server()
    db = deployment.start_dropbox()
    first = _put(drop / "amy" / "first.png")
    assert wait_for(lambda: deployment.imported_files() == [first], DEADLINE), db.log
    ms.stop()
    while_down = _put(drop / "amy" / "while-down.png")
    deployment.start_monitor_server()
    assert wait_for(lambda: db.log.count("Created monitor with id") >= 2, DEADLINE), db.log
    after = _put(drop / "zak" / "after.png")
    assert wait_for(lambda: deployment.imported_files() == sorted([first, while_down, after]), DEADLINE), (
        db.log
    )
    assert "Re-registration scan of" in db.log


def test_pending_import_survives_a_dropbox_restart(deployment: Deployment) -> None:
    drop = deployment.drop
    deployment.start_monitor_server()
    db = deployment.start_dropbox("--omero.fs.dirImportWait=600", "--omero.fs.ng.completeWait=600")
    pending = _put(drop / "amy" / "pending.png")
    assert wait_for(lambda: f"::Create::{pending}" in db.log, DEADLINE)  # received, waiting
    db.proc.send_signal(signal.SIGKILL)
    db.proc.wait(30)
    assert deployment.imported() == []
    db2 = deployment.start_dropbox()
    assert wait_for(lambda: deployment.imported_files() == [pending], DEADLINE), db2.log
    assert "Destroyed monitor id = " in db2.log  # the killed run's monitor was cleaned up


def test_bad_property_stops_the_service_with_a_reason(tmp_path: Path) -> None:
    import subprocess

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "omero_dropbox.ice.dropbox_service",
            "--state-dir",
            str(tmp_path / "state"),
            f"--omero.fs.watchDir={tmp_path}",
            "--omero.fs.pathMode=Sideways",
        ],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "Failed get properties from templates.xml" in r.stderr
    assert "omero.fs.pathMode" in r.stderr and "Sideways" in r.stderr
