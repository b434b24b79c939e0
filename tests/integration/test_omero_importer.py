"""The OMERO importer: what reaches `omero` (argv, environment, session store), secrets, odd names.

The `omero` executable here is a fake on PATH that records what it got (no OMERO server can
run here: tests named `_fake_omero`). The session store it reads is checked against omero-py's
own ``SessionsStore`` reader. Tests against a real OMERO server are at the end, skipped unless
``OMERO_DROPBOX_TEST_HOST`` (and ``_PORT``, ``_ADMIN``, ``_PASSWORD``, ``_USER``) are set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from omero_dropbox.annotations import AnnotationError
from omero_dropbox.folder_settings import ImportPlan
from omero_dropbox.importers import (
    ImportRequest,
    OmeroImporter,
    PermanentImportError,
    UnconfiguredSessionProvider,
    write_session_store,
)

KEY = "8afe443f-19fc-4cc4-bf4a-850ec94f4650"
REPO = Path(__file__).resolve().parents[2]

# A fake `omero`: records argv, selected environment, the session store it was pointed at
# (with file modes), and what other users could see in /proc/self/cmdline; then exits as told.
FAKE_OMERO = """\
#!{python}
import json, os, sys
store = os.environ.get("OMERO_SESSIONDIR")
files = {{}}
if store:
    for d, _, names in os.walk(store):
        for n in names:
            p = os.path.join(d, n)
            files[os.path.relpath(p, store)] = [open(p).read(), oct(os.stat(p).st_mode & 0o777)]
with open("/proc/self/cmdline", "rb") as fh:
    cmdline = fh.read().decode("utf-8", "replace")
with open(os.environ["RECORD_TO"], "w") as fh:
    json.dump({{
        "argv": sys.argv[1:],
        "store": store,
        "store_mode": oct(os.stat(store).st_mode & 0o777) if store else None,
        "files": files,
        "password_env": "OMERO_PASSWORD" in os.environ or "OMERO_DROPBOX_ADMIN_PASSWORD" in os.environ,
        "cmdline": cmdline,
    }}, fh)
if os.environ.get("FAKE_STDERR"):
    key = files.get("localhost/amy/._LASTSESS_", [""])[0]
    sys.stderr.write(os.environ["FAKE_STDERR"].replace("KEY", key))
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


class FakeSessions:
    """Stands in for the OMERO server's session service (no server can run here)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.opened: list[str] = []
        self.groups: list[str | None] = []
        self.closed: list[str] = []

    def open_session(self, user: str, group: str | None = None) -> str:
        if self.error:
            raise self.error
        self.opened.append(user)
        self.groups.append(group)
        return KEY

    def close_session(self, key: str) -> None:
        self.closed.append(key)


def _req(files: list[str], user: str = "amy") -> ImportRequest:
    return ImportRequest(user=user, key=files[0], files=tuple(files), fileset_id="fs1", format="TIFF")


@pytest.fixture
def fake_omero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "omero"
    script.write_text(FAKE_OMERO.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    record = tmp_path / "record.json"
    monkeypatch.setenv("RECORD_TO", str(record))
    monkeypatch.setenv("OMERO_PASSWORD", "admin-secret")  # neither may reach the CLI
    monkeypatch.setenv("OMERO_DROPBOX_ADMIN_PASSWORD", "admin-secret")
    return record


def test_argv_is_upstreams_without_the_key() -> None:
    imp = OmeroImporter(
        "omero.example.org", 4064, FakeSessions(), "-T 'Dataset:name:my data' -c", omero="omero"
    )
    req = _req(["/drop/amy/a.ics", "/drop/amy/a.ids"])
    assert imp.upstream_argv(req, KEY) == [
        "omero",
        "-s",
        "omero.example.org",
        "-p",
        "4064",
        "-k",
        KEY,
        "import",
        "--",
        "--agent=dropbox",
        "-T",
        "Dataset:name:my data",
        "-c",
        "/drop/amy/a.ics",
    ]
    argv, env = imp.build_invocation(req, "/private/store")
    assert argv == [os.fsencode(a) for a in imp.upstream_argv(req, KEY) if a not in ("-k", KEY)]
    assert env["OMERO_SESSIONDIR"] == "/private/store"
    assert KEY not in json.dumps(env)


def test_import_hands_the_session_over_privately_fake_omero(
    fake_omero: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    sessions = FakeSessions()
    root = tmp_path / "state" / "omero-sessions"
    imp = OmeroImporter("localhost", 4064, sessions, "--transfer=ln_rm", session_root=root)
    assert imp.omero == str(tmp_path / "bin" / "omero")  # found on PATH
    result = imp(_req(["/drop/amy/a.tif"]))
    assert result.ok, result
    rec = json.loads(fake_omero.read_text())
    assert rec["argv"] == [
        "-s",
        "localhost",
        "-p",
        "4064",
        "import",
        "--",
        "--agent=dropbox",
        "--transfer=ln_rm",
        "/drop/amy/a.tif",
    ]
    assert KEY not in rec["cmdline"] and not rec["password_env"]
    # The session store the CLI attaches to: private, and holding exactly our session.
    assert rec["store_mode"] == "0o700" and Path(rec["store"]).parent == root
    assert rec["files"]["._LASTHOST_"][0] == "localhost" and rec["files"]["._LASTPORT_"][0] == "4064"
    assert rec["files"]["localhost/amy/._LASTSESS_"][0] == KEY
    assert {mode for _, mode in rec["files"].values()} == {"0o600"}
    assert not Path(rec["store"]).exists()  # removed after the import
    assert sessions.opened == ["amy"] and sessions.closed == [KEY]
    assert KEY not in caplog.text

    # A failing CLI that prints the key: redacted from the reason and the log; session closed.
    monkeypatch.setenv("FAKE_STDERR", "Cannot join KEY on localhost\n")
    monkeypatch.setenv("FAKE_EXIT", "1")
    result = imp(_req(["/drop/amy/a.tif"]))
    assert not result.ok and result.transient and "Cannot join <session>" in result.reason
    assert KEY not in result.reason and KEY not in caplog.text
    assert sessions.closed == [KEY, KEY]


def test_name_that_is_not_utf8_fails_with_the_reason_fake_omero(fake_omero: Path) -> None:
    sessions = FakeSessions()
    bad = os.fsdecode(b"/drop/amy/scan-\xff.tif")
    result = OmeroImporter("localhost", 4064, sessions)(_req([bad]))
    assert not result.ok and not result.transient
    assert (
        "not valid UTF-8" in result.reason and "scan-\\xff.tif" in result.reason and "rename" in result.reason
    )
    assert not fake_omero.exists() and sessions.opened == []  # nothing run, no session made


def test_session_failures_say_what_to_do() -> None:
    req = _req(["/drop/amy/a.tif"])
    res = OmeroImporter("h", 1, omero="omero")(req)
    assert not res.ok and not res.transient and "no OMERO session provider is configured" in res.reason
    assert not OmeroImporter("h", 1, UnconfiguredSessionProvider(), omero="omero")(req).transient
    res = OmeroImporter("h", 1, FakeSessions(PermanentImportError("user unknown")), omero="omero")(req)
    assert not res.transient and "user unknown" in res.reason
    res = OmeroImporter("h", 1, FakeSessions(ConnectionRefusedError("down")), omero="omero")(req)
    assert res.transient and "down" in res.reason
    from omero_dropbox.importers import ImporterConfigError

    with pytest.raises(ImporterConfigError, match="importArgs"):
        OmeroImporter("h", 1, import_args="'open")
    with pytest.raises(ImporterConfigError, match=r"omero\.fs\.port"):
        OmeroImporter("h", "x")  # type: ignore[arg-type]


def test_session_store_is_what_omero_py_reads(tmp_path: Path) -> None:
    from tests.support.ice import require_ice

    require_ice()
    from omero.util.sessions import SessionsStore  # type: ignore[import-not-found, import-untyped, unused-ignore]

    store = tmp_path / "store"
    write_session_store(store, "omero.example.org", 4064, "amy", KEY)
    reader = SessionsStore(str(store))
    assert reader.get_current() == ("omero.example.org", "amy", KEY, "4064")
    props = reader.get("omero.example.org", "amy", KEY)
    assert props["omero.port"] == "4064" and props["omero.sess"] == KEY
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    with pytest.raises(ValueError):
        write_session_store(store, "h", 1, "../evil", KEY)


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omero_dropbox.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_cli_importer_omero_needs_a_private_admin_password(tmp_path: Path) -> None:
    from tests.support.ice import python_env, require_ice

    require_ice()
    env = python_env()
    env.pop("OMERO_DROPBOX_ADMIN_PASSWORD", None)
    base = ["--importer", "omero", "--state-dir", str(tmp_path / "s"), "-D", f"omero.fs.watchDir={tmp_path}"]
    r = _run_cli(*base, env=env)
    assert (
        r.returncode == 2
        and "--omero-password-file" in r.stderr
        and "OMERO_DROPBOX_ADMIN_PASSWORD" in r.stderr
    )
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o644)
    r = _run_cli(*base, "--omero-password-file", str(pw), env=env)
    assert r.returncode == 1 and "chmod 600" in r.stderr and "secret" not in r.stderr


# --------------------------------------------------------------------------- real OMERO server

SERVER = os.environ.get("OMERO_DROPBOX_TEST_HOST")
needs_omero = pytest.mark.skipif(
    not SERVER,
    reason="needs an OMERO server: set OMERO_DROPBOX_TEST_HOST, _PORT (4064), _ADMIN (root), "
    "_PASSWORD, _USER",
)


@needs_omero
def test_user_session_from_admin_login_real_omero_server() -> None:
    from omero_dropbox.ice.sessions import UserSessions, password_admin_factory

    factory, close = password_admin_factory(
        SERVER or "",
        int(os.environ.get("OMERO_DROPBOX_TEST_PORT", "4064")),
        os.environ.get("OMERO_DROPBOX_TEST_ADMIN", "root"),
        os.environ["OMERO_DROPBOX_TEST_PASSWORD"],
    )
    sessions = UserSessions(factory, time_to_live_ms=0, time_to_idle_ms=60_000, close=close)
    try:
        user = os.environ["OMERO_DROPBOX_TEST_USER"]
        assert sessions.exists(user)
        assert not sessions.exists("no-such-user-omero-dropbox-ng")
        key = sessions.open_session(user)
        assert len(key) >= 32
        sessions.close_session(key)
        with pytest.raises(PermanentImportError, match="user unknown"):
            sessions.open_session("no-such-user-omero-dropbox-ng")
    finally:
        sessions.close()


def test_each_import_users_entry_keeps_its_import_args_fake_omero(fake_omero: Path, tmp_path: Path) -> None:
    from tests.support.ice import require_ice

    require_ice()
    from omero_dropbox.config import load_config
    from omero_dropbox.ice.sessions import omero_importer_for

    config = load_config(
        overrides=[
            "omero.fs.importUsers=default;amy",
            f"omero.fs.watchDir={tmp_path}/all;{tmp_path}/amy",
            "omero.fs.importArgs=-T Dataset:name:everyone;--transfer=ln_rm",
            "omero.fs.host=omero.example.org",
            "omero.fs.port=14064",
        ]
    )
    imp = omero_importer_for(config, FakeSessions(), session_root=tmp_path / "sessions")  # type: ignore[arg-type]
    for user, extra in (("amy", ["--transfer=ln_rm"]), ("zak", ["-T", "Dataset:name:everyone"])):
        assert imp(_req([f"/drop/{user}/a.tif"], user=user)).ok
        argv = json.loads(fake_omero.read_text())["argv"]
        assert argv == [
            *("-s", "omero.example.org", "-p", "14064", "import", "--", "--agent=dropbox"),
            *extra,
            f"/drop/{user}/a.tif",
        ]


class FakeOmeroServer:
    """Stands in for an OMERO server's admin ServiceFactory (none can run here): the admin and
    session services that UserSessions uses, recording every call."""

    def __init__(self, Ice: object, omero: object, users: set[str], lose_first: bool = False) -> None:
        self.Ice, self.omero, self.users = Ice, omero, users
        self.created: list[tuple[object, int, int]] = []
        self.closed: list[object] = []
        self.factories = 0
        self.lose_first = lose_first

    def factory(self) -> FakeOmeroServer:
        self.factories += 1
        return self

    def getAdminService(self) -> FakeOmeroServer:
        if self.lose_first:
            self.lose_first = False
            raise self.Ice.ObjectNotExistException()  # type: ignore[attr-defined]
        return self

    def getSessionService(self) -> FakeOmeroServer:
        return self

    def lookupExperimenter(self, name: str) -> object:
        if name not in self.users:
            raise self.omero.ApiUsageException(message=f"No such experimenter: {name}")  # type: ignore[attr-defined]
        return object()

    def createSessionWithTimeouts(self, principal: object, ttl: int, tti: int) -> object:
        self.created.append((principal, ttl, tti))
        rtypes = self.omero.rtypes  # type: ignore[attr-defined]
        session = self.omero.model.SessionI()  # type: ignore[attr-defined]
        session.setUuid(rtypes.rstring(KEY))
        return session

    def closeSession(self, session: object) -> None:
        self.closed.append(session)


def test_user_sessions_as_upstream_and_closed_fake_omero_server(caplog: pytest.LogCaptureFixture) -> None:
    from tests.support.ice import require_ice

    Ice, omero = require_ice()
    from omero_dropbox.config import load_config
    from omero_dropbox.ice.sessions import UserSessions

    caplog.set_level(logging.DEBUG)
    config = load_config(overrides=["omero.fs.timeToLive=0", "omero.fs.timeToIdle=300"])
    server = FakeOmeroServer(Ice, omero, {"amy"}, lose_first=True)
    user = config.users[0]
    sessions = UserSessions(
        server.factory, time_to_live_ms=user.time_to_live_ms, time_to_idle_ms=user.time_to_idle_ms
    )
    key = sessions.open_session("amy")
    assert key == KEY and server.factories == 2  # the lost admin session was replaced once
    ((principal, ttl, tti),) = server.created
    assert (principal.name, principal.group, principal.eventType) == ("amy", "user", "User")
    assert (ttl, tti) == (0, 300_000)
    sessions.close_session(key)
    assert len(server.closed) == 1 and server.closed[0].getUuid().getValue() == KEY
    with pytest.raises(PermanentImportError, match="user unknown"):
        sessions.open_session("bob")
    assert sessions.exists("amy") and not sessions.exists("bob")
    assert KEY not in caplog.text


def test_cli_importer_omero_logs_in_at_start_and_keeps_the_password_out(
    tmp_path: Path, shm_dir: Path
) -> None:
    """The real CLI wiring: the admin logs in before anything is watched (issue 12). The server
    address is closed (no OMERO server here), so `run` refuses to start, exit 1, naming the
    server and what to check, after omero.fs.maxRetries tries; the password appears nowhere:
    not in the output, not in any argv."""
    from tests.support.ice import free_port, python_env, require_ice

    require_ice()
    pw = tmp_path / "pw"
    pw.write_text("s3cret-admin-pw\n")
    pw.chmod(0o600)
    drop = shm_dir / "DropBox"
    (drop / "amy").mkdir(parents=True)
    (drop / "amy" / "a.png").write_bytes(b"\x89PNG")
    port = free_port()
    argv = ["--importer", "omero", "--omero-password-file", str(pw), "--state-dir", str(tmp_path / "state")]
    argv += [
        "-D",
        f"omero.fs.watchDir={drop}",
        "-D",
        "omero.fs.host=127.0.0.1",
        "-D",
        f"omero.fs.port={port}",
    ]
    argv += ["-D", "omero.fs.maxRetries=2", "-D", "omero.fs.retryInterval=0.1"]
    r = _run_cli(*argv, env=python_env())
    assert r.returncode == 1, r.stderr
    assert "Started OMERO.fs DropBox client" not in r.stderr
    assert f"cannot start: cannot reach OMERO at 127.0.0.1:{port} to log in as 'root'" in r.stderr
    assert "Connection refused" in r.stderr
    assert "s3cret-admin-pw" not in r.stderr + r.stdout
    assert "s3cret-admin-pw" not in " ".join(argv)


def test_a_rerun_after_a_crash_skips_what_omero_already_has_fake_omero(fake_omero: Path) -> None:
    """A re-run of an import the service's crash interrupted passes ``--exclude=clientpath``
    (OMERO skips files it already imported from the same client path); first runs and retries
    after an ordinary failure do not (a failed import must be redone whole)."""
    imp = OmeroImporter("localhost", 4064, FakeSessions(), "--transfer=ln_rm")
    first = _req(["/drop/amy/a.tif"])
    rerun = dataclasses.replace(first, attempt=2, interrupted=True)
    retry = dataclasses.replace(first, attempt=2, interrupted=False)
    for request, excluded in ((first, False), (rerun, True), (retry, False)):
        assert imp(request).ok
        argv = json.loads(fake_omero.read_text())["argv"]
        assert ("--exclude=clientpath" in argv) == excluded, argv
        assert argv[argv.index("--") + 1] == "--agent=dropbox" and argv[-1] == "/drop/amy/a.tif"


class RecordedSteps:
    """Stands in for omero-py's steps against a server (none can run here)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[object, ...]] = []

    def dataset_in_project(self, session_key: str, project: str, dataset: str) -> int:
        if self.error:
            raise self.error
        self.calls.append(("dataset_in_project", session_key, project, dataset))
        return 77

    def annotate(
        self,
        session_key: str,
        objects: Sequence[str],
        key_values: Sequence[tuple[str, str]],
        tags: Sequence[str],
    ) -> None:
        if self.error:
            raise self.error
        self.calls.append(("annotate", session_key, tuple(objects), tuple(key_values), tuple(tags)))


def _planned(plan: ImportPlan) -> ImportRequest:
    return dataclasses.replace(_req(["/drop/amy/run/a.tif"]), plan=plan)


def test_folder_settings_choose_group_and_target_over_the_sites_fake_omero_server(fake_omero: Path) -> None:
    sessions, steps = FakeSessions(), RecordedSteps()
    imp = OmeroImporter(
        "localhost", 4064, sessions, "-T Dataset:name:site --skip=all", steps=steps, session_root=None
    )
    result = imp(_planned(ImportPlan(dataset="Mitosis", target="Dataset:name:Mitosis", group="lab")))
    assert result.ok, result
    argv = json.loads(fake_omero.read_text())["argv"]
    # The site's -T is dropped (one target, the folder's); its other options stay.
    assert argv[-4:] == ["--skip=all", "-T", "Dataset:name:Mitosis", "/drop/amy/run/a.tif"]
    assert "Dataset:name:site" not in argv
    assert sessions.groups == ["lab"]

    # Project + dataset: the dataset is found or created in the user's session first, then
    # the import goes to it by id.
    result = imp(_planned(ImportPlan(project="Cells", dataset="Day 1")))
    assert result.ok, result
    assert steps.calls == [("dataset_in_project", KEY, "Cells", "Day 1")]
    assert json.loads(fake_omero.read_text())["argv"][-3:] == ["-d", "77", "/drop/amy/run/a.tif"]


def test_folder_settings_failures_name_the_group_or_the_dataset_fake_omero_server(fake_omero: Path) -> None:
    refused = FakeSessions(PermanentImportError("not a member of group 'other-lab'"))
    result = OmeroImporter("localhost", 4064, refused, "", steps=RecordedSteps())(
        _planned(ImportPlan(group="other-lab"))
    )
    assert not result.ok and not result.transient
    assert "cannot log in as amy in group 'other-lab'" in result.reason and "not a member" in result.reason

    down = OmeroImporter(
        "localhost", 4064, FakeSessions(), "", steps=RecordedSteps(ConnectionError("refused"))
    )
    result = down(_planned(ImportPlan(project="Cells", dataset="Day 1")))
    assert not result.ok and result.transient
    assert "cannot find or create dataset 'Day 1' in project 'Cells'" in result.reason
    assert not fake_omero.exists()  # nothing was imported anywhere else meanwhile

    no_steps = OmeroImporter("localhost", 4064, FakeSessions(), "")
    result = no_steps(_planned(ImportPlan(project="Cells", dataset="Day 1")))
    assert not result.ok and not result.transient and "project and a dataset" in result.reason


def test_annotate_attaches_in_the_users_session_in_her_group_fake_omero_server() -> None:
    sessions, steps = FakeSessions(), RecordedSteps()
    imp = OmeroImporter("localhost", 4064, sessions, "", steps=steps)
    plan = ImportPlan(group="lab", key_values=(("Stain", "DAPI"),), tags=("confocal",))
    imp.annotate("amy", plan, ["Image:1", "Image:2"])
    assert steps.calls == [("annotate", KEY, ("Image:1", "Image:2"), (("Stain", "DAPI"),), ("confocal",))]
    assert sessions.opened == ["amy"] and sessions.groups == ["lab"] and sessions.closed == [KEY]

    with pytest.raises(AnnotationError) as info:
        OmeroImporter(
            "localhost", 4064, FakeSessions(PermanentImportError("no such user")), "", steps=steps
        ).annotate("amy", plan, ["Image:1"])
    assert info.value.final and "cannot log in as amy" in str(info.value)
