"""The DropBox Ice application with our MonitorServer, both run exactly as docs/icegrid.md's templates say.

Real processes on loopback tcp, real files, real journal. No OMERO server can run here, so
imports go through ``--importer-command`` (a recorder script) and users through ``--users``;
the OMERO session path is tested in test_omero_importer.py.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from omero_dropbox.config import load_config

from .conftest import wait_for
from .faults_helpers import complete_lines
from .ice_helpers import REPO, ServerProcess, free_port, python_env, require_ice

require_ice()

DOC = REPO / "docs" / "icegrid.md"
DEADLINE = 30.0

RECORDER = """\
import json, os, sys
with open(os.environ["IMPORTS_TO"], "a") as fh:
    fh.write(json.dumps({"user": sys.argv[1], "files": sys.argv[2:]}) + "\\n")
"""


def doc_templates(tmp_path: Path) -> Path:
    """The XML block of docs/icegrid.md, as a templates.xml file."""
    blocks = re.findall(r"```xml\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, "docs/icegrid.md should have exactly one xml block"
    path = tmp_path / "templates.xml"
    path.write_text(blocks[0])
    return path


def server_from_template(templates: Path, template_id: str) -> tuple[list[str], dict[str, str], ET.Element]:
    """``(options, properties, server element)`` of a server template."""
    root = ET.parse(templates).getroot()
    (tpl,) = [t for t in root.iter("server-template") if t.get("id") == template_id]
    server = tpl.find("server")
    assert server is not None
    options = [str(o.text) for o in server.findall("option")]
    props = {str(p.get("name")): str(p.get("value")) for p in server.find("properties").findall("property")}  # type: ignore[union-attr]
    return options, props, server


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


class Deployment:
    """MonitorServer + DropBox started from the doc's templates, on loopback tcp."""

    def __init__(self, tmp_path: Path, drop: Path) -> None:
        self.tmp = tmp_path
        self.drop = drop
        self.templates = doc_templates(tmp_path)
        self.ms_port = free_port()
        self.imports = tmp_path / "imports.jsonl"
        self.recorder = tmp_path / "recorder.py"
        self.recorder.write_text(RECORDER)
        self.state = tmp_path / "state"
        self.ms_proxy = f"MonitorServer:tcp -h 127.0.0.1 -p {self.ms_port}"
        self.monitor_server: ServerProcess | None = None
        self.dropbox: ServerProcess | None = None

    def start_monitor_server(self) -> ServerProcess:
        options, props, _ = server_from_template(self.templates, "MonitorServerTemplate")
        argv = [sys.executable, *options, *(f"--{k}={v}" for k, v in props.items())]
        argv += [f"--omerofs.MonitorServer.Endpoints=tcp -h 127.0.0.1 -p {self.ms_port}"]
        self.monitor_server = ServerProcess(argv, env=python_env(), cwd=self.tmp)
        self.monitor_server.wait_for_line("Started OMERO.fs MonitorServer")
        return self.monitor_server

    def start_dropbox(self, *extra: str) -> ServerProcess:
        options, props, _ = server_from_template(self.templates, "DropBoxTemplate")
        options = [str(self.state) if o == "var/omero-dropbox-ng" else o for o in options]
        props["omero.fs.serverIdString"] = self.ms_proxy
        argv = [sys.executable, *options, *(f"--{k}={v}" for k, v in props.items())]
        argv += [
            "--omerofs.DropBox.Endpoints=tcp -h 127.0.0.1 -p 0",
            "--Ice.Default.Host=127.0.0.1",
            f"--omero.fs.watchDir={self.drop}",
            "--omero.fs.dirImportWait=3",
            "--omero.fs.throttleImport=0",
            "--omero.fs.ng.completeWait=1",
            "--users=amy,zak",
            f"--importer-command={sys.executable} {self.recorder} {{user}} {{files}}",
            *extra,
        ]
        env = python_env()
        env["IMPORTS_TO"] = str(self.imports)
        self.dropbox = ServerProcess(argv, env=env, cwd=self.tmp)
        self.dropbox.wait_for_line("Started OMERO.fs DropBox client")
        return self.dropbox

    def imported(self) -> list[tuple[str, list[str]]]:
        return [(d["user"], d["files"]) for d in map(json.loads, complete_lines(self.imports))]

    def imported_files(self) -> list[str]:
        return sorted(f for _, files in self.imported() for f in files)

    def stop(self) -> None:
        for proc in (self.dropbox, self.monitor_server):
            if proc is not None:
                proc.stop()


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
