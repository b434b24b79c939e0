"""Importers: argv templates without a shell, exit-status rules, timeouts, OMERO argv."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import pytest

from omero_dropbox.folder_settings import ImportPlan
from omero_dropbox.importers import (
    DEFAULT_PERMANENT_EXIT_CODES,
    END_MARK,
    START_MARK,
    CallableImporter,
    CommandImporter,
    ImporterConfigError,
    ImportRequest,
    ImportResult,
    PermanentImportError,
    as_importer,
)

PYTHON_DIR = str(Path(__file__).resolve().parents[2] / "python")

# Records its argv (as hex bytes) and selected environment as JSON, then behaves as
# told by the environment: write stderr, spawn a grandchild, sleep, exit.
RECORDER = """\
#!{python}
import json, os, signal, subprocess, sys, time
out = os.environ["RECORD_TO"]
with open(out, "w") as f:
    json.dump({{
        "argv": [os.fsencode(a).hex() for a in sys.argv[1:]],
        "session": os.environ.get("{env}"),
    }}, f)
if os.environ.get("STDERR"):
    sys.stderr.write(os.environ["STDERR"])
    sys.stderr.flush()
if os.environ.get("STDERR_BYTES"):
    sys.stderr.buffer.write(bytes.fromhex(os.environ["STDERR_BYTES"]))
    sys.stderr.flush()
if os.environ.get("STDOUT"):
    sys.stdout.write(os.environ["STDOUT"])
if os.environ.get("SPAWN_TO"):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(os.environ["SPAWN_TO"], "w") as f:
        f.write(str(child.pid))
if os.environ.get("SLEEP"):
    time.sleep(float(os.environ["SLEEP"]))
if os.environ.get("SIGNAL"):
    os.kill(os.getpid(), int(os.environ["SIGNAL"]))
sys.exit(int(os.environ.get("EXIT", "0")))
"""


@pytest.fixture
def recorder(tmp_path: Path) -> Path:
    script = tmp_path / "bin" / "recorder"
    script.parent.mkdir()
    script.write_text(RECORDER.format(python=sys.executable, env="OMERO_SESSIONDIR"))
    script.chmod(0o755)
    return script


@pytest.fixture
def record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "record.json"
    monkeypatch.setenv("RECORD_TO", str(out))
    return out


def _argv(record: Path) -> list[bytes]:
    return [bytes.fromhex(a) for a in json.loads(record.read_text())["argv"]]


def _req(files: list[str], key: str | None = None, user: str = "amy") -> ImportRequest:
    return ImportRequest(
        user=user, key=key or files[0], files=tuple(files), fileset_id="0123abcd", format="Fake"
    )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- command importer: argv ---------------------------------------------------------


HOSTILE = [
    b"with space.tif",
    b"quote'single.tif",
    b'quote"double.tif',
    b"new\nline.tif",
    b"$(touch pwned1).tif",
    b"`touch pwned2`.tif",
    b"semi;touch pwned3.tif",
    b"-leading-dash.tif",
    b"caf\xe9-\xff\xfe.tif",
    b"*glob?.tif",
    b"back\\slash.tif",
]


def test_hostile_names_arrive_as_exact_single_arguments(tmp_path: Path, recorder: Path, record: Path) -> None:
    d = os.fsencode(tmp_path / "drop")
    os.mkdir(d)
    paths = []
    for name in HOSTILE:
        p = d + b"/" + name
        open(p, "wb").close()
        paths.append(os.fsdecode(p))
    imp = CommandImporter(f"{shlex.quote(str(recorder))} --user={{user}} -- {{files}}")
    result = imp(_req(paths))
    assert result.ok, result.reason
    assert _argv(record) == [b"--user=amy", b"--", *[d + b"/" + n for n in HOSTILE]]
    assert not any(tmp_path.rglob("pwned*"))
    assert not any(Path.cwd().glob("pwned*"))


def test_placeholders_inside_arguments(recorder: Path, record: Path) -> None:
    imp = CommandImporter(
        f"{shlex.quote(str(recorder))} 'literal {{1,2}} {{}}' --key={{key}} "
        "--as={user}@{fileset} -- {key}"
    )
    key = os.fsdecode(b"/data/amy/x\xff y.ics")
    assert imp(_req([key, "/data/amy/x.ids"], key=key, user="amy{key}")).ok
    assert _argv(record) == [
        b"literal {1,2} {}",
        b"--key=/data/amy/x\xff y.ics",
        b"--as=amy{key}@0123abcd",  # values are not re-expanded
        b"--",
        b"/data/amy/x\xff y.ics",
    ]


def test_build_argv_is_a_byte_list(recorder: Path) -> None:
    imp = CommandImporter(["imp", "{user}", "{files}"])
    assert imp.build_argv(_req(["/a", "/b c"])) == [b"imp", b"amy", b"/a", b"/b c"]


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("imp 'unbalanced", "cannot be parsed"),
        ("imp {user} {bogus} {other}", r"unknown placeholder\(s\) \{bogus\}, \{other\}"),
        ("imp --files={files}", "must be an argument of its own"),
        ("{user} x", "program name cannot be a placeholder"),
    ],
)
def test_bad_templates_name_the_problem(template: str, match: str) -> None:
    with pytest.raises(ImporterConfigError, match=match) as ei:
        CommandImporter(template)
    assert repr(template) in str(ei.value)


def test_relative_paths_are_refused() -> None:
    imp = CommandImporter("imp -- {files}")
    with pytest.raises(ValueError, match="must be absolute"):
        imp(_req(["-rf.tif"]))
    with pytest.raises(ValueError, match="must be absolute"):
        imp(_req(["/ok.tif"], key="relative.tif"))


# --- command importer: outcomes -------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "ok", "transient"),
    [(0, True, False), (1, False, True), (2, False, True), (75, False, True)]
    + [(c, False, False) for c in (64, 65, 66, 69, 70, 74, 78)],
)
def test_exit_status_rules(
    recorder: Path,
    record: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    ok: bool,
    transient: bool,
) -> None:
    monkeypatch.setenv("EXIT", str(code))
    result = CommandImporter([str(recorder), "{files}"])(_req(["/a.tif"]))
    assert (result.ok, result.transient, result.returncode) == (ok, transient, code)
    if not ok:
        assert f"exited with status {code}" in result.reason


def test_permanent_exit_codes_are_configurable(
    recorder: Path, record: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXIT", "1")
    imp = CommandImporter([str(recorder)], permanent_exit_codes={1})
    assert imp.permanent_exit_codes == frozenset({1})
    assert not imp(_req(["/a"])).transient
    monkeypatch.setenv("EXIT", "65")
    assert imp(_req(["/a"])).transient
    assert 75 not in DEFAULT_PERMANENT_EXIT_CODES and 65 in DEFAULT_PERMANENT_EXIT_CODES


def test_killed_by_signal_is_transient(recorder: Path, record: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNAL", "9")
    result = CommandImporter([str(recorder)])(_req(["/a"]))
    assert not result.ok and result.transient and result.returncode == -9
    assert "SIGKILL" in result.reason


def test_timeout_kills_the_process_group_and_is_transient(
    tmp_path: Path, recorder: Path, record: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    monkeypatch.setenv("SPAWN_TO", str(pidfile))
    monkeypatch.setenv("SLEEP", "120")
    imp = CommandImporter([str(recorder)], timeout=1.0, kill_grace=1.0)
    t0 = time.monotonic()
    result = imp(_req(["/a"]))
    assert time.monotonic() - t0 < 30
    assert not result.ok and result.transient
    assert "timed out after 1 s" in result.reason
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the importer's child survived the timeout"


def test_missing_or_unrunnable_program_is_permanent(tmp_path: Path) -> None:
    result = CommandImporter("/nonexistent/importer {files}")(_req(["/a"]))
    assert not result.ok and not result.transient
    assert "'/nonexistent/importer'" in result.reason and "not found" in result.reason
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    result = CommandImporter([str(plain)])(_req(["/a"]))
    assert not result.ok and not result.transient and "permission denied" in result.reason


def test_stderr_tail_is_the_reason_and_is_logged(
    recorder: Path,
    record: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    noise = "".join(f"line {i} of noise\n" for i in range(2000))
    monkeypatch.setenv("STDERR", noise + "java.io.IOException: the real cause\n")
    monkeypatch.setenv("STDOUT", "Image:1\nImage:2\n")
    monkeypatch.setenv("EXIT", "1")
    caplog.set_level(logging.INFO, logger="omero_dropbox.importer")
    key = os.fsdecode(b"/drop/amy/\xff.tif")
    result = CommandImporter([str(recorder)])(_req([key]))
    assert not result.ok and result.returncode == 1
    assert result.reason.endswith("java.io.IOException: the real cause")
    assert len(result.reason) < 4096 + 200
    assert result.output == "Image:1\nImage:2"
    msgs = [r.getMessage() for r in caplog.records if r.name == "omero_dropbox.importer"]
    assert msgs[0] == "Importing /drop/amy/\\xff.tif as amy (fileset=0123abcd)"
    assert msgs[1].startswith("Import of /drop/amy/\\xff.tif failed=1 (transient")
    assert msgs[2] == START_MARK and msgs[-1] == END_MARK
    assert "java.io.IOException: the real cause" in msgs[-2]


def test_success_log_and_undecodable_stderr(
    recorder: Path,
    record: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("STDERR_BYTES", b"bad \xff\xfe bytes\n".hex())
    caplog.set_level(logging.INFO, logger="omero_dropbox.importer")
    assert CommandImporter([str(recorder)])(_req(["/k.tif"])).ok
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["Importing /k.tif as amy (fileset=0123abcd)", "Import of /k.tif completed"]
    monkeypatch.setenv("EXIT", "3")
    result = CommandImporter([str(recorder)])(_req(["/k.tif"]))
    assert "bad \\xff\\xfe bytes" in result.reason


# --- callable importer -------------------------------------------------------------


def test_callable_importer_return_values_and_exceptions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="omero_dropbox.importer")
    req = _req(["/a.tif"])
    assert CallableImporter(lambda r: None)(req).ok
    assert CallableImporter(lambda r: True)(req).ok
    false = CallableImporter(lambda r: False)(req)
    assert not false.ok and false.transient
    custom = ImportResult.failure("nope", transient=False, returncode=7)
    assert CallableImporter(lambda r: custom)(req) is custom

    def boom(r: ImportRequest) -> None:
        raise ConnectionError("server down")

    res = CallableImporter(boom)(req)
    assert not res.ok and res.transient and res.reason == "ConnectionError: server down"

    def bad(r: ImportRequest) -> None:
        raise PermanentImportError("corrupt file")

    res = CallableImporter(bad)(req)
    assert not res.ok and not res.transient and "corrupt file" in res.reason
    assert not CallableImporter(lambda r: 42)(req).ok  # type: ignore[arg-type,return-value]
    assert any("Traceback" in r.getMessage() for r in caplog.records)
    assert "Import of /a.tif completed" in [r.getMessage() for r in caplog.records]


def test_as_importer() -> None:
    imp = CommandImporter("x {files}")
    assert as_importer(imp) is imp
    assert isinstance(as_importer(lambda r: True), CallableImporter)
    with pytest.raises(ImporterConfigError):
        as_importer(42)


# The OMERO importer is tested in test_omero_importer.py.


# --- command importer: folder settings ------------------------------------------------


def test_target_args_expand_to_the_folder_targets_and_the_plan_reaches_the_environment(
    tmp_path: Path,
) -> None:
    plan = ImportPlan(
        dataset="Mitosis",
        target="Dataset:name:Mitosis",
        group="lab",
        key_values=(("Stain", "DAPI"),),
        import_args=("--skip=thumbnails",),
    )
    req = dataclasses.replace(_req(["/d/amy/a.tif"]), plan=plan)
    imp = CommandImporter(["imp", "{target_args}", "--", "{files}"])
    assert imp.build_argv(req) == [
        b"imp",
        b"-T",
        b"Dataset:name:Mitosis",
        b"--skip=thumbnails",
        b"--",
        b"/d/amy/a.tif",
    ]
    assert imp.build_argv(_req(["/d/amy/a.tif"])) == [b"imp", b"--", b"/d/amy/a.tif"]  # no settings

    out = tmp_path / "plan.json"
    script = tmp_path / "show-plan"
    script.write_text(
        f"#!{sys.executable}\nimport os\nopen({str(out)!r}, 'w').write(os.environ['OMERO_DROPBOX_PLAN'])\n"
    )
    script.chmod(0o755)
    assert CommandImporter([str(script)])(req).ok
    got = json.loads(out.read_text())
    assert got["group"] == "lab" and got["key_values"] == [["Stain", "DAPI"]]
    assert ImportPlan.from_json(out.read_text()) == plan


def test_target_args_cannot_name_a_dataset_in_a_project_and_say_what_to_use() -> None:
    req = dataclasses.replace(_req(["/d/amy/a.tif"]), plan=ImportPlan(project="Cells", dataset="Day 1"))
    with pytest.raises(PermanentImportError, match=r"OMERO_DROPBOX_PLAN.*--importer omero"):
        CommandImporter(["imp", "{target_args}", "{files}"]).build_argv(req)
    # Without {target_args} the program reads the plan itself: nothing is refused.
    assert CommandImporter(["imp", "{files}"]).build_argv(req) == [b"imp", b"/d/amy/a.tif"]


def test_target_args_must_be_an_argument_of_its_own() -> None:
    with pytest.raises(ImporterConfigError, match="must be an argument of its own"):
        CommandImporter("imp --x={target_args} {files}")
