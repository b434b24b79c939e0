"""Issue 12, items 7-10, through the real `omero-dropbox` CLI (subprocesses, real directories,
real SQLite, real importer commands standing in for OMERO): start-up checks of the importer,
the exit-code rule and the "gave up" line, a per-user value without `;`, and rough edges
(unreadable --users file, DropBox directory, `status | head`, --dry-run, TOML layout docs,
the status page's recent imports and /status.json)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from omero_dropbox.journal import Journal
from tests.support.service import CLI, Service, run_cli
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def base() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="odb-edges-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`omero-dropbox ARGS` that must end by itself (a start-up refusal), within `timeout`."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _start_args(base: Path, *extra: str) -> list[str]:
    return ["run", "-D", f"omero.fs.watchDir={base / 'DropBox'}", "--state-dir", str(base / "state"), *extra]


def _refused(out: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Started OMERO.fs DropBox client" not in out.stderr
    assert "Traceback" not in out.stderr and "[Errno" not in out.stderr, out.stderr
    return out.stderr


# ------------------------------------------------------------- 7: importer checked at start-up


def test_importer_command_whose_program_does_not_exist_is_refused_at_start(base: Path) -> None:
    out = _run(
        *_start_args(base, "--importer-command", f"{base}/no-such-importer --user {{user}} -- {{files}}")
    )
    err = _refused(out)
    assert f"cannot start: --importer-command: the program {base}/no-such-importer does not exist" in err


def test_importer_command_not_executable_is_refused_naming_chmod(base: Path) -> None:
    script = base / "import.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    err = _refused(_run(*_start_args(base, "--importer-command", f"{script} {{files}}")))
    assert f"the program {script} is not executable (mode 0644)" in err
    assert f"chmod +x {script}" in err


def test_importer_command_not_on_path_is_refused(base: Path) -> None:
    err = _refused(_run(*_start_args(base, "--importer-command", "odb-no-such-program-xyz {files}")))
    assert "the program 'odb-no-such-program-xyz' is not on PATH" in err
    assert "give its full path, or install it" in err


def _fake_omero_on_path(base: Path) -> dict[str, str]:
    """An `omero` program on PATH (never run: the start is refused before any import)."""
    bin_dir = base / "bin"
    bin_dir.mkdir()
    omero = bin_dir / "omero"
    omero.write_text("#!/bin/sh\nexit 0\n")
    omero.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_auto_importer_with_omero_and_a_password_but_no_ice_refuses_to_start(base: Path) -> None:
    # Ice hidden for real: a module named Ice ahead of site-packages that cannot be imported.
    hide = base / "hide-ice"
    hide.mkdir()
    (hide / "Ice.py").write_text("raise ImportError('No module named Ice (hidden by the test)')\n")
    env = _fake_omero_on_path(base)
    env["PYTHONPATH"] = os.pathsep.join([str(hide), env.get("PYTHONPATH", "")])
    env["OMERO_DROPBOX_ADMIN_PASSWORD"] = "secret"
    (base / "DropBox" / "amy").mkdir(parents=True)
    (base / "DropBox" / "amy" / "scan.czi").write_bytes(b"pixels")
    err = _refused(_run(*_start_args(base), env=env, timeout=60))
    assert "--importer auto chose the OMERO importer" in err
    assert "the OMERO importer cannot run in this Python" in err
    assert "zeroc-ice is not installed" in err
    assert "pip install 'omero-dropbox-ng[omero]'" in err
    assert "--importer-command 'ARGV TEMPLATE' or --importer record" in err
    assert "secret" not in err


def test_omero_importer_without_the_omero_program_is_refused(base: Path) -> None:
    env = {**os.environ, "PATH": "/nonexistent-bin", "OMERO_DROPBOX_ADMIN_PASSWORD": "secret"}
    out = subprocess.run(
        [sys.executable, "-m", "omero_dropbox.cli", *_start_args(base, "--importer", "omero")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=base,  # no `omero` beside sys.executable either, unless the venv has omero-py
    )
    if (Path(sys.executable).parent / "omero").exists():
        pytest.skip("omero-py is installed beside this Python: its `omero` is found")
    err = _refused(out)
    assert "--importer omero: the program 'omero' is not on PATH" in err
    assert "pip install 'omero-dropbox-ng[omero]'" in err


def test_omero_importer_refuses_to_start_when_no_omero_server_answers_fake_server_absent(base: Path) -> None:
    """The admin login at start-up, against a port where no OMERO listens (no OMERO here)."""
    pytest.importorskip("Ice")
    pytest.importorskip("omero")
    import socket

    with socket.socket() as s:  # a free port, closed again: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _fake_omero_on_path(base)
    env["OMERO_DROPBOX_ADMIN_PASSWORD"] = "secret"
    args = _start_args(
        base, "--importer", "omero", "-D", "omero.fs.host=127.0.0.1", "-D", f"omero.fs.port={port}"
    )
    args += ["-D", "omero.fs.maxRetries=2", "-D", "omero.fs.retryInterval=0.1"]
    err = _refused(_run(*args, env=env, timeout=120), code=1)
    assert f"cannot reach OMERO at 127.0.0.1:{port} to log in as 'root'" in err
    assert "2 tries, 0.1 s apart" in err
    assert "-D omero.fs.host=HOST -D omero.fs.port=4064" in err
    assert "secret" not in err


# ------------------------------------------------------- 8: exit codes and the "gave up" line

FAILING_IMPORTER = r"""
import os, sys
state, key = sys.argv[1], sys.argv[2]
with open(os.path.join(state, "runs.txt"), "a") as fh:
    fh.write(key + "\n")
print("connecting to server...", file=sys.stderr)
print("cannot import " + os.path.basename(key), file=sys.stderr)
sys.exit(int(os.path.basename(key).split("-")[0]))
"""


def test_exit_1_is_retried_then_given_up_with_a_line_naming_retry(base: Path) -> None:
    script = base / "fail.py"
    script.write_text(FAILING_IMPORTER)
    work = base / "work"
    work.mkdir()
    svc = Service.scripted(base, "-D", "omero.fs.ng.maxAttempts=3")
    svc.command = f"{sys.executable} {script} {work} {{key}}"
    with svc:
        transient = svc.drop("amy", "1-flaky.czi")
        permanent = svc.drop("amy", "65-corrupt.czi")
        svc.wait_state(transient, "failed")
        svc.wait_state(permanent, "failed")
        assert wait_for(lambda: svc.text().count("Gave up on fileset") == 2, 30), svc.text()
        tid, pid = svc.fileset_id(transient), svc.fileset_id(permanent)
    runs = (work / "runs.txt").read_text().splitlines()
    assert runs.count(str(transient)) == 3  # exit 1: transient, retried up to maxAttempts
    assert runs.count(str(permanent)) == 1  # exit 65 (EX_DATAERR): permanent, not retried
    text = svc.text()
    assert re.search(
        rf"ERROR .*Gave up on fileset {tid} \({re.escape(str(transient))} as amy\) after 3 attempt\(s\), "
        r"the last allowed by omero\.fs\.ng\.maxAttempts; last reason: importer '\S+' exited with status 1: "
        r"\.\.\. cannot import 1-flaky\.czi\. Fix the cause, then `omero-dropbox retry "
        rf"{tid[:12]}` \(or --all-failed, or the status page\) imports it again",
        text,
    ), text
    assert re.search(
        rf"Gave up on fileset {pid} \({re.escape(str(permanent))} as amy\) after 1 attempt\(s\), "
        r"the failure is permanent, so it was not retried; last reason: importer '\S+' exited with status 65",
        text,
    ), text


def test_readme_and_troubleshooting_state_the_exit_code_rule_of_the_code() -> None:
    from omero_dropbox.importers import DEFAULT_PERMANENT_EXIT_CODES

    assert frozenset(range(64, 79)) - {75} == DEFAULT_PERMANENT_EXIT_CODES
    readme = " ".join((ROOT / "README.md").read_text().split())
    trouble = " ".join((ROOT / "docs" / "troubleshooting.md").read_text().split())
    rule = "64-78 except 75"
    for text in (readme, trouble):
        assert rule in text
        assert "any other non-zero status (1, 2, 75 `EX_TEMPFAIL`, ...)" in text
        assert "Gave up on fileset" in text
    assert "other codes fail at once" not in readme


# ---------------------------------------------------- 9: a per-user value without `;`


def _config_show(*defines: str) -> str:
    args = ["config", "show"]
    for d in defines:
        args += ["-D", d]
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _user_section(text: str, user: str) -> str:
    return text.split(f"Import user '{user}'", 1)[1].split("\n\n", 1)[0]


def test_config_show_a_value_without_semicolon_applies_to_every_user() -> None:
    text = _config_show(
        "omero.fs.importUsers=amy;zak",
        "omero.fs.watchDir=/data/amy;/data/zak",
        "omero.fs.whitelist=.tif",
        "omero.fs.dirImportWait=5;7",
        "omero.fs.throttleImport=3;",
    )
    amy, zak = _user_section(text, "amy"), _user_section(text, "zak")
    assert re.search(r"omero\.fs\.whitelist\s+= \.tif\s+\(-D\)", amy), text
    assert re.search(r"omero\.fs\.whitelist\s+= \.tif\s+\(-D\)", zak), text
    # `;` lists stay upstream's: entry i for user i, an empty entry is the default.
    assert re.search(r"omero\.fs\.dirImportWait\s+= 5 ", amy) and re.search(
        r"omero\.fs\.dirImportWait\s+= 7 ", zak
    )
    assert re.search(r"omero\.fs\.throttleImport\s+= 3 ", amy)
    assert re.search(r"omero\.fs\.throttleImport\s+= 10\s+\(default\)", zak), text


def test_templates_value_without_semicolon_applies_to_every_user(base: Path) -> None:
    templates = base / "templates.xml"
    templates.write_text(
        '<icegrid><properties id="DropBox">'
        '<property name="omero.fs.importUsers" value="amy;zak"/>'
        '<property name="omero.fs.watchDir" value="/data/amy;/data/zak"/>'
        '<property name="omero.fs.eventTypes" value="Creation"/>'
        "</properties></icegrid>"
    )
    out = run_cli("config", "show", "--templates", str(templates))
    assert out.returncode == 0, out.stderr
    for user in ("amy", "zak"):
        assert re.search(
            r"omero\.fs\.eventTypes\s+= Creation\s+\(templates\.xml\)", _user_section(out.stdout, user)
        )


def test_run_a_value_without_semicolon_reaches_the_second_user(base: Path) -> None:
    amy, zak = base / "amy-drop", base / "zak-drop"
    amy.mkdir()
    zak.mkdir()
    svc = Service.scripted(base)
    svc.props = {**svc.props, "watchDir": f"{amy};{zak}", "importUsers": "amy;zak", "whitelist": ".czi"}
    with svc:
        # zak is the second user: the whitelist is his too, so his .tif is never seen.
        unwanted = zak / "unwanted.tif"
        unwanted.write_bytes(b"II*\x00pixels")
        wanted = zak / "wanted.czi"  # reported after unwanted.tif, had that one been reported
        wanted.write_bytes(b"pixels")
        svc.wait_state(wanted, "imported")
        after = time.time()

        def idle() -> bool:
            doc = svc.status()
            row = doc["users"].get("zak", {})  # type: ignore[attr-defined]
            fresh = doc["service"].get("updated_at", 0) > after  # type: ignore[attr-defined]
            return fresh and not any(row.get(k) for k in ("waiting", "queued", "importing"))

        assert wait_for(idle, 60, 0.2), svc.status()
        assert svc.imports() == [str(wanted)], svc.text()


# ------------------------------------------------------------------------- 10: rough edges


def test_users_file_missing_is_a_clear_error(base: Path) -> None:
    err = _refused(_run(*_start_args(base, "--users", f"@{base}/users.txt")))
    assert (
        f"configuration error: --users @{base}/users.txt: cannot read the user list {base}/users.txt: " in err
    )
    assert "No such file or directory; give a file with one OMERO user name per line" in err
    assert "--users amy,zak" in err


def test_watch_dir_that_cannot_be_created_is_a_clear_error(base: Path) -> None:
    (base / "a-file").write_text("not a directory")
    drop = base / "a-file" / "DropBox"
    out = _run("run", "-D", f"omero.fs.watchDir={drop}", "--state-dir", str(base / "state"))
    err = _refused(out)
    assert (
        f"cannot start: omero.fs.watchDir: cannot create the DropBox directory {drop}: Not a directory" in err
    )
    assert "set -D omero.fs.watchDir=DIR to an existing directory" in err


def test_no_watch_dir_and_no_omero_data_dir_refuses_naming_the_property(base: Path) -> None:
    data = base / "OMERO"
    out = _run("run", "-D", f"omero.data.dir={data}", "--state-dir", str(base / "state"))
    err = _refused(out)
    assert f"omero.fs.watchDir is not set, and its default {data}/DropBox" in err
    assert f"{data} does not exist" in err
    assert "-D omero.fs.watchDir=/path/to/DropBox" in err
    assert not data.exists()


def test_no_watch_dir_creates_upstreams_default_with_a_warning(base: Path) -> None:
    data = base / "OMERO"
    data.mkdir()
    log = base / "run.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [*CLI, "run", "-D", f"omero.data.dir={data}", "--state-dir", str(base / "state")],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_for(lambda: b"Started OMERO.fs DropBox client" in log.read_bytes(), 60), log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert (data / "DropBox").is_dir()
    assert re.search(
        rf"WARNI .*omero\.fs\.watchDir is not set: created the default DropBox directory {data}/DropBox "
        r"\(<omero\.data\.dir>/<omero\.fs\.defaultDropBoxDir>, as upstream\); set -D omero\.fs\.watchDir=DIR",
        log.read_text(),
    ), log.read_text()


def test_status_into_a_closed_pipe_ends_quietly(base: Path) -> None:
    state = base / "state"
    Journal(state).close()
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `status | head` once head has exited
    try:
        out = subprocess.run(
            [*CLI, "status", "--state-dir", str(state)], stdout=write_end, stderr=subprocess.PIPE, timeout=60
        )
    finally:
        os.close(write_end)
    assert out.stderr == b"", out.stderr.decode()
    assert out.returncode == 128 + signal.SIGPIPE


def test_dry_run_says_would_import_records_nothing_and_leaves_no_temporary_journal(base: Path) -> None:
    tmp = base / "tmp"
    tmp.mkdir()
    drop = base / "DropBox"
    (drop / "amy").mkdir(parents=True)
    (drop / "amy" / "scan.czi").write_bytes(b"pixels")
    log = base / "dry.log"
    args = ["run", "--dry-run", "-D", f"omero.fs.watchDir={drop}", "-D", "omero.fs.ng.completeWait=0.2"]
    args += ["-D", "omero.fs.throttleImport=0", "--state-dir", str(base / "state")]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [*CLI, *args], stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": str(tmp)}
        )
    try:
        assert wait_for(lambda: b"Dry run: would import" in log.read_bytes(), 60), log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    text = log.read_text()
    assert f"Dry run: would import {drop}/amy/scan.czi as amy now" in text
    assert "completed" not in text and "Importing " not in text
    assert "recording" not in text.lower()
    assert not (base / "state").exists()  # the real state dir is untouched
    assert [p.name for p in tmp.iterdir() if p.name.startswith("omero-dropbox-dry-run-")] == []


def _documented_toml() -> str:
    reference = (ROOT / "docs" / "reference.md").read_text()
    section = reference.split("## TOML configuration file", 1)[1]
    m = re.search(r"```toml\n(.*?)```", section, re.S)
    assert m, "no ```toml example in the TOML section of docs/reference.md"
    return m.group(1)


def test_toml_layout_is_documented_in_the_reference_and_the_example_works(base: Path) -> None:
    toml = base / "dropbox.toml"
    toml.write_text(_documented_toml())
    out = run_cli("config", "show", "--config", str(toml))
    assert out.returncode == 0, out.stderr
    assert re.search(r"omero\.fs\.importUsers\s+= default;amy\s+\(toml\)", out.stdout), out.stdout
    assert re.search(r"omero\.fs\.dirImportWait\s+= 30\s+\(toml\)", _user_section(out.stdout, "amy"))
    assert re.search(r"omero\.fs\.dirImportWait\s+= 60\s+\(toml\)", _user_section(out.stdout, "default"))
    reference = (ROOT / "docs" / "reference.md").read_text()
    assert "`[users.NAME]`" in reference and "`[dropbox]`" in reference


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return str(resp.read().decode())


def test_status_page_recent_imports_newest_first_and_status_json_has_host(base: Path) -> None:
    import socket

    with Service.scripted(base, "--http", "127.0.0.1:0") as svc:
        first = svc.drop("amy", "first.czi")
        svc.wait_state(first, "imported")
        second = svc.drop("amy", "second.czi")
        svc.wait_state(second, "imported")
        fid = svc.fileset_id(first)
        # The user renames the older file afterwards: the journal follows it.
        renamed = first.with_name("first-renamed.czi")
        first.rename(renamed)

        def followed() -> bool:
            with Journal(svc.state, readonly=True, check=False) as j:
                rec = j.fileset_by_id(fid)
                return rec is not None and rec.key == str(renamed)

        assert wait_for(followed, 60, 0.1), svc.text()
        page = _get(svc.url)
        table = page.split("<table id=imports>", 1)[1].split("</table>", 1)[0]
        rows = re.findall(r"<tr data-fileset=\"([0-9a-f]+)\"", table)
        assert rows == [svc.fileset_id(second), fid], table
        doc = json.loads(_get(svc.url + "status.json"))
    service = doc["service"]
    assert service["host"] == socket.gethostname()
    assert isinstance(service["updated_at"], float) and service["updated_at"] >= service["started_at"]


def test_admin_login_refused_at_start_is_permanent_and_names_the_fix_fake_omero_server() -> None:
    """A server that refuses the admin's password (no OMERO here: the factory stands in for
    its Glacier2 router): not retried, and the message says what to check."""
    pytest.importorskip("Ice")
    pytest.importorskip("omero")
    import Glacier2  # type: ignore[import-not-found, import-untyped, unused-ignore]

    from omero_dropbox.ice.sessions import UserSessions, check_admin_login

    logins: list[int] = []

    def refusing_server() -> object:
        logins.append(1)
        raise Glacier2.PermissionDeniedException("Password check failed")

    problem = check_admin_login(UserSessions(refusing_server), "omero.example.org", 4064, "root", 5, 0.0)
    assert problem == (
        "OMERO at omero.example.org:4064 refused the login of admin 'root' (Password check failed); "
        "check the admin name (--omero-admin) and its password",
        True,
    )
    assert logins == [1]
