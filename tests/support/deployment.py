"""The DropBox Ice application with our MonitorServer, started exactly as docs/icegrid.md's
templates say: real processes on loopback tcp, a recorder script standing in for OMERO's importer."""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.support.appended import complete_lines
from tests.support.ice import REPO, ServerProcess, free_port, python_env

DOC = REPO / "docs" / "icegrid.md"

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
