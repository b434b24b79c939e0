"""The CLI's smaller commands and its error messages, run as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.support.waiting import wait_for

CLI = [sys.executable, "-m", "omero_dropbox.cli"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@contextlib.contextmanager
def running_service(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`omero-dropbox run ...` in the background until it is started; SIGTERM on exit."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: b"Started OMERO.fs DropBox client" in log.read_bytes(), 60), log.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_config_show_prints_each_user_resolved(tmp_path: Path) -> None:
    out = run_cli(
        "config",
        "show",
        "-D",
        "omero.fs.importUsers=default;amy",
        "-D",
        f"omero.fs.watchDir=;{tmp_path / 'amy-box'}",
        "-D",
        "omero.fs.dirImportWait=30;",
    )
    assert out.returncode == 0, out.stderr
    assert "amy" in out.stdout
    assert str(tmp_path / "amy-box") in out.stdout
    assert "30" in out.stdout


def test_bad_property_value_is_a_clear_error_with_exit_2() -> None:
    out = run_cli("config", "show", "-D", "omero.fs.eventTypes=Creatoin")
    assert out.returncode == 2
    assert "omero.fs.eventTypes" in out.stderr
    assert "Creatoin" in out.stderr
    assert "Modification" in out.stderr  # what is allowed


def test_unknown_property_suggests_the_closest_name() -> None:
    out = run_cli("config", "show", "-D", "omero.fs.dirImportWiat=5")
    assert out.returncode == 2
    assert "dirImportWait" in out.stderr


def test_filesets_prints_one_json_object_per_fileset(tmp_path: Path) -> None:
    (tmp_path / "cell.ics").write_bytes(b"\t\nics_version\t1.0\nfilename\tcell\n")
    (tmp_path / "cell.ids").write_bytes(b"\x00" * 64)
    (tmp_path / "single.tif").write_bytes(b"II*\x00" + b"\x00" * 64)
    out = run_cli("filesets", str(tmp_path))
    assert out.returncode == 0, out.stderr
    objs = [json.loads(line) for line in out.stdout.splitlines()]
    filesets = {o["key"]: o for o in objs if "key" in o}
    assert sorted(filesets[str(tmp_path / "cell.ics")]["files"]) == [
        str(tmp_path / "cell.ics"),
        str(tmp_path / "cell.ids"),
    ]
    assert filesets[str(tmp_path / "single.tif")]["files"] == [str(tmp_path / "single.tif")]


def test_status_without_a_journal_says_where_it_looked(tmp_path: Path) -> None:
    out = run_cli("status", "--state-dir", str(tmp_path / "nothing"))
    assert out.returncode == 1
    assert str(tmp_path / "nothing") in out.stderr


def test_dry_run_logs_what_would_be_imported_as_whom_and_imports_nothing(shm_dir: Path) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    (dropbox / "amy").mkdir(parents=True)
    log = shm_dir / "log.txt"
    argv = [
        *CLI,
        "run",
        "--dry-run",
        "-D",
        f"omero.fs.watchDir={dropbox}",
        "-D",
        "omero.fs.dirImportWait=1",
        "--state-dir",
        str(state),
        "--importer-command",
        "false",
    ]
    with running_service(argv, log) as proc:
        (dropbox / "amy" / "scan.tif").write_bytes(b"II*\x00data")
        assert wait_for(lambda: b"Dry run: would import" in log.read_bytes(), 60), log.read_text()
    rc = proc.returncode
    text = log.read_text()
    assert rc == 0
    assert f"would import {dropbox / 'amy' / 'scan.tif'} as amy" in text
    assert not (state / "journal.sqlite3").exists(), "a dry run must not touch the real journal"


def test_sigterm_exits_0_and_a_crashing_importer_fails_with_its_stderr(shm_dir: Path) -> None:
    dropbox, state = shm_dir / "DropBox", shm_dir / "state"
    (dropbox / "zak").mkdir(parents=True)
    crash = shm_dir / "crash.py"
    crash.write_text("import sys\nprint('bad pixel type in', sys.argv[1], file=sys.stderr)\nsys.exit(3)\n")
    log = shm_dir / "log.txt"
    argv = [
        *CLI,
        "run",
        "-D",
        f"omero.fs.watchDir={dropbox}",
        "-D",
        "omero.fs.dirImportWait=1",
        "-D",
        "omero.fs.ng.maxAttempts=2",
        "-D",
        "omero.fs.ng.retryBackoff=0.2",
        "--state-dir",
        str(state),
        "--importer-command",
        f"{sys.executable} {crash} {{key}}",
    ]
    with running_service(argv, log) as proc:
        (dropbox / "zak" / "x.tif").write_bytes(b"II*\x00data")
        status = lambda: run_cli("status", "--state-dir", str(state), "--json").stdout  # noqa: E731
        assert wait_for(lambda: '"failed": 1' in status(), 60, 0.5), log.read_text()
    rc = proc.returncode
    text = log.read_text()
    assert rc == 0
    assert f"Import of {dropbox / 'zak' / 'x.tif'} failed=3" in text
    assert "bad pixel type in" in text
    assert "***** start of output from importer-cli to stderr *****" in text
    doc = json.loads(run_cli("status", "--state-dir", str(state), "--json").stdout)
    failed = [e for e in doc["recent"] if e["to"] == "failed"]
    assert failed and "bad pixel type" in failed[0]["reason"]
    assert os.path.exists(dropbox / "zak" / "x.tif"), "a failed import must not lose the file"
