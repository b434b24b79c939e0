"""Documentation and packaging stay true to the code: generated docs are current, the
migration guide names only real properties, the systemd unit's command line parses and
verifies, and the logrotate snippet works with the real logrotate and a real service."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from omero_dropbox.cli import build_parser
from omero_dropbox.properties import PROPERTIES
from tests.support.service import CLI
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "omero-dropbox.service"
LOGROTATE = ROOT / "packaging" / "logrotate" / "omero-dropbox"


def _gen_docs() -> object:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_docs_are_current() -> None:
    gen = _gen_docs()
    reference = gen.render_reference()  # type: ignore[attr-defined]
    assert (ROOT / "docs" / "reference.md").read_text() == reference, "run: python scripts/gen_docs.py"
    current = (ROOT / "docs" / "troubleshooting.md").read_text()
    assert current == gen.render_troubleshooting(current), "run: python scripts/gen_docs.py"  # type: ignore[attr-defined]


def test_reference_lists_every_option_and_property() -> None:
    text = (ROOT / "docs" / "reference.md").read_text()
    for prop in PROPERTIES:
        assert f"`{prop.name}`" in text
    for name, sub in _commands().items():
        assert f"`omero-dropbox {name}" in text
        for opt in sub._actions:
            for flag in opt.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in text, f"{name} {flag} missing from docs/reference.md"


def test_troubleshooting_lists_errors_the_code_raises() -> None:
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    # One from each layer: Python config, the journal, the engine's skips, the native core.
    for needle in (
        "is not writable by this user",
        "Not importing <path>: user unknown",
        "watch root does not exist",
        "--http <spec>: the port must be a number",
    ):
        assert needle in text, needle


def test_migration_guide_names_only_real_properties_and_commands() -> None:
    text = (ROOT / "docs" / "migration.md").read_text()
    known = {p.name for p in PROPERTIES}
    mentioned = set(re.findall(r"omero\.fs\.[A-Za-z.]+[A-Za-z]", text))
    assert mentioned, "the guide should name properties"
    assert mentioned - {"omero.fs.NAME"} <= known, mentioned - known
    commands = set(re.findall(r"omero-dropbox ([a-z]+)", text))
    assert commands <= set(_commands()), commands - set(_commands())


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _unit_argv() -> list[str]:
    text = UNIT.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.split("=", 1)[1])


def test_systemd_unit_command_line_is_valid_for_this_cli() -> None:
    argv = _unit_argv()
    assert argv[0].endswith("/omero-dropbox")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.external_logrotate and args.log_dir
    assert args.http.startswith("127.0.0.1:"), "the status page stays on loopback by default"
    assert "TimeoutStopSec=330" in UNIT.read_text(), "longer than the 300 s drain of running imports"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    exe = shutil.which("omero-dropbox")
    if exe is None:
        pytest.skip("omero-dropbox is not on PATH")
    unit = tmp_path / "omero-dropbox.service"
    unit.write_text(UNIT.read_text().replace("/opt/omero-dropbox/bin/omero-dropbox", exe))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "omero-dropbox.service" not in out.stderr, out.stderr


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="needs logrotate (apt-get install logrotate)")
def test_logrotate_snippet_rotates_a_running_services_log(shm_dir: Path) -> None:
    logs, dropbox = shm_dir / "log", shm_dir / "DropBox"
    (dropbox / "amy").mkdir(parents=True)
    conf = LOGROTATE.read_text().replace("/var/log/omero-dropbox", str(logs))
    # As the invoking user (the snippet's su/create name the service account).
    conf = re.sub(r"^\s*(su|create) .*$", "", conf, flags=re.M)
    (shm_dir / "logrotate.conf").write_text(conf)
    argv = [*CLI, "run", "-D", f"omero.fs.watchDir={dropbox}", "-D", "omero.fs.ng.completeWait=0.2",
            "--state-dir", str(shm_dir / "state"), "--importer", "record",
            "--log-dir", str(logs), "--external-logrotate"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = logs / "DropBox.log"
    try:
        assert wait_for(lambda: log.exists() and "Started OMERO.fs DropBox client" in log.read_text(), 60)
        out = subprocess.run(
            ["logrotate", "-f", "-s", str(shm_dir / "logrotate.state"), str(shm_dir / "logrotate.conf")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert (logs / "DropBox.log.1").exists()
        assert "Started OMERO.fs DropBox client" in (logs / "DropBox.log.1").read_text()
        (dropbox / "amy" / "after-rotation.czi").write_bytes(b"x")
        assert wait_for(lambda: log.exists() and "after-rotation.czi" in log.read_text(), 60)
        assert "after-rotation.czi" not in (logs / "DropBox.log.1").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    # Upstream's line format, for sites that keep their log tooling.
    line = next(ln for ln in log.read_text().splitlines() if "after-rotation.czi" in ln)
    assert re.match(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO |WARN |ERROR) \[ *[\w.]+\] \(.{10}\) ", line
    )


def test_readme_points_operators_to_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    for doc in ("docs/reference.md", "docs/migration.md", "docs/troubleshooting.md"):
        assert doc in readme and (ROOT / doc).exists()
