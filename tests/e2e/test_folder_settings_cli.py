"""dropbox.toml folder settings through the real CLI: what reaches the importer, a bad file
holding its folder's filesets with the reason where the scientist looks, and the OMERO
importer's group, project/dataset and annotations (server stood in for: ``_omero_standin``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from omero_dropbox.journal import Journal
from tests.support.service import Service, run_cli
from tests.support.waiting import wait_for

# Records each call's argv and $OMERO_DROPBOX_PLAN as a JSON line, then prints an object.
SETTINGS_RECORDER = r"""
import json, os, sys
with open(os.environ["RECORD_FILE"], "a") as fh:
    fh.write(json.dumps({"argv": sys.argv[1:], "plan": json.loads(os.environ["OMERO_DROPBOX_PLAN"])}) + "\n")
print("Image:1")
"""


def recorded(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def settings_service(tmp_path: Path, **props: str) -> Service:
    script = tmp_path / "importer.py"
    script.write_text(SETTINGS_RECORDER)
    s = Service(
        tmp_path,
        tmp_path / "DropBox",
        tmp_path / "state",
        command=f"{sys.executable} {script} {{target_args}} -- {{files}}",
        props={"dirImportWait": "0.5", "ng.userReport": "true", **props},
    )
    (s.dropbox / "amy").mkdir(parents=True)
    return s


def tif(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"II*\0" + os.urandom(500))
    return path


def call_for(calls: list[dict[str, object]], name: str) -> dict[str, object]:
    [call] = [c for c in calls if any(str(a).endswith(name) for a in c["argv"])]  # type: ignore[attr-defined]
    return call


def test_the_nearest_settings_win_and_the_rest_is_inherited(tmp_path: Path) -> None:
    s = settings_service(tmp_path, **{"ng.folderImportArgs": "--skip"})
    amy = s.dropbox / "amy"
    (amy / "dropbox.toml").write_text(
        'tags = ["confocal"]\n[target]\ndataset = "Lab data"\n[key_values]\nStain = "DAPI"\n'
    )
    run = amy / "2026" / "run7"
    run.mkdir(parents=True)
    (run / "dropbox.toml").write_text(
        'import_args = ["--skip=thumbnails"]\n[target]\ntemplate = "Dataset:name:{parent}-{folder}"\n'
        '[key_values]\nStain = "GFP"\n'
    )
    with s:
        tif(amy / "top.tif")
        tif(run / "a.tif")
        assert wait_for(lambda: len(recorded(s.record)) == 2, 60), s.tail()
    calls = recorded(s.record)
    top, deep = call_for(calls, "top.tif"), call_for(calls, "a.tif")
    assert top["argv"][:3] == ["-T", "Dataset:name:Lab data", "--"]  # type: ignore[index]
    assert deep["argv"][:4] == ["-T", "Dataset:name:2026-run7", "--skip=thumbnails", "--"]  # type: ignore[index]
    assert deep["plan"]["key_values"] == [["Stain", "GFP"]]  # type: ignore[index]
    assert deep["plan"]["tags"] == ["confocal"]  # type: ignore[index]
    assert top["plan"]["key_values"] == [["Stain", "DAPI"]]  # type: ignore[index]
    # The settings files themselves are read, never imported.
    assert not any("dropbox.toml" in str(c["argv"]) for c in calls)


BAD_SETTINGS = {
    "malformed": ('[target\ndataset = "D"\n', "dropbox.toml"),
    "option_not_allowed": ('import_args = ["--transfer=ln_rm"]\n', "--transfer"),
    "oversized": ("# padding\n" * 20000, "over the limit"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_a_bad_settings_file_holds_its_folder_with_the_reason_until_it_is_fixed(
    tmp_path: Path, case: str
) -> None:
    text, named = BAD_SETTINGS[case]
    s = settings_service(tmp_path)
    amy = s.dropbox / "amy"
    (amy / "dropbox.toml").write_text(text)
    report = amy / "DROPBOX-STATUS.txt"
    with s:
        data = tif(amy / "run" / "a.tif")
        assert wait_for(lambda: report.exists() and "folder settings" in report.read_text(), 60), s.tail()
        assert named in report.read_text(), report.read_text()
        assert "Not importing" in s.text() and named in s.text()
        assert recorded(s.record) == [] and s.fileset_state(data) is None
        (amy / "dropbox.toml").write_text('[target]\ndataset = "Fixed"\n')
        assert wait_for(lambda: len(recorded(s.record)) == 1, 60), s.tail()
    assert recorded(s.record)[0]["argv"][:2] == ["-T", "Dataset:name:Fixed"]  # type: ignore[index]
    assert s.fileset_state(data) == "imported"


def test_a_settings_file_that_is_a_link_is_refused_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "other-lab.toml"
    secret.write_text('[target]\ndataset = "Stolen"\n')
    s = settings_service(tmp_path)
    amy = s.dropbox / "amy"
    (amy / "dropbox.toml").symlink_to(secret)
    with s:
        tif(amy / "a.tif")
        assert wait_for(lambda: "Not importing" in s.text(), 60), s.tail()
        assert recorded(s.record) == []
        (amy / "dropbox.toml").unlink()
        assert wait_for(lambda: len(recorded(s.record)) == 1, 60), s.tail()
    assert "Stolen" not in json.dumps(recorded(s.record))


def test_folder_settings_can_be_turned_off_and_the_file_is_still_not_imported(tmp_path: Path) -> None:
    s = settings_service(tmp_path, **{"ng.folderSettings": "false"})
    amy = s.dropbox / "amy"
    (amy / "dropbox.toml").write_text("[target\nbroken")
    with s:
        tif(amy / "a.tif")
        assert wait_for(lambda: len(recorded(s.record)) == 1, 60), s.tail()
    [call] = recorded(s.record)
    assert call["argv"] == ["--", str(amy / "a.tif")] and call["plan"] == {}


def standin(tmp_path: Path, props: dict[str, str] | None = None, **env: str) -> Service:
    s = Service(
        tmp_path,
        tmp_path / "DropBox",
        tmp_path / "state",
        importer="omero-standin",
        props={"dirImportWait": "0.5", "ng.userReport": "true", "ng.retryBackoff": "0.2", **(props or {})},
        env=env,
    )
    (s.dropbox / "amy").mkdir(parents=True)
    return s


def test_project_dataset_group_and_annotations_reach_omero_omero_standin(tmp_path: Path) -> None:
    s = standin(tmp_path)
    amy = s.dropbox / "amy"
    (amy / "dropbox.toml").write_text(
        'group = "cell-lab"\ntags = ["confocal"]\n[target]\nproject = "Mitosis"\ndataset = "Day 1"\n'
        '[key_values]\nStain = "DAPI"\n'
    )
    with s:
        tif(amy / "a.tif")
        assert wait_for(lambda: bool(s.omero_calls("annotate")), 60), s.tail()
    sessions = s.omero_calls("open_session")
    assert (
        sessions
        and {c["group"] for c in sessions} == {"cell-lab"}
        and {c["user"] for c in sessions} == {"amy"}
    )
    [resolved] = s.omero_calls("dataset_in_project")
    assert (resolved["project"], resolved["dataset"]) == ("Mitosis", "Day 1")
    [omero] = s.omero_calls("omero")
    argv = omero["argv"]
    assert argv[argv.index("-d") + 1] == str(resolved["id"])  # type: ignore[union-attr]
    assert "-T" not in argv  # type: ignore[operator]
    [annotate] = s.omero_calls("annotate")
    assert annotate["key_values"] == [["Stain", "DAPI"]] and annotate["tags"] == ["confocal"]
    assert annotate["objects"] and str(annotate["objects"][0]).startswith("Image:")  # type: ignore[index]
    # Every session opened was closed.
    assert len(s.omero_calls("close_session")) == len(sessions)


def test_annotations_wait_for_omero_and_the_import_is_not_repeated_omero_standin(tmp_path: Path) -> None:
    s = standin(tmp_path)
    amy = s.dropbox / "amy"
    (amy / "dropbox.toml").write_text('[key_values]\nStain = "DAPI"\n')
    down = Path(str(s.omero_record) + ".down")
    down.touch()
    report = amy / "DROPBOX-STATUS.txt"
    with s:
        data = tif(amy / "a.tif")
        s.wait_state(data, "imported")
        assert wait_for(lambda: report.exists() and "not attached" in report.read_text(), 60), s.tail()
        assert "server is down" in report.read_text()
        down.unlink()
        assert wait_for(lambda: bool(s.omero_calls("annotate")), 60), s.tail()
        assert wait_for(lambda: "not attached" not in report.read_text(), 60), report.read_text()
    assert len(s.omero_calls("omero")) == 1  # imported once; only the annotations were retried


def annotations_state(s: Service, fid: str) -> str | None:
    with Journal(s.state, readonly=True, check=False) as j:
        got = j.annotations_state(fid)
    return None if got is None else got[0]


def test_annotations_that_failed_for_good_are_attached_on_retry_omero_standin(tmp_path: Path) -> None:
    s = standin(tmp_path)
    amy = s.dropbox / "amy"
    (amy / "dropbox.toml").write_text('tags = ["live"]\n')
    refuse = Path(str(s.omero_record) + ".refuse")
    refuse.touch()
    with s:
        data = tif(amy / "a.tif")
        s.wait_state(data, "imported")
        fid = s.fileset_id(data)
        assert wait_for(lambda: annotations_state(s, fid) == "failed", 60), s.tail()
        refuse.unlink()  # the facility fixed the permissions
        assert not wait_for(lambda: bool(s.omero_calls("annotate")), 1.0)  # not retried by itself
        out = run_cli("retry", "--state-dir", str(s.state), "--all-failed")
        assert out.returncode == 0 and "will be attached again" in out.stdout, out.stdout + out.stderr
        assert wait_for(lambda: annotations_state(s, fid) == "done", 60), s.tail()
    [annotate] = s.omero_calls("annotate")
    assert annotate["tags"] == ["live"]
    assert len(s.omero_calls("omero")) == 1


def test_a_group_the_user_is_not_in_fails_with_the_reason_omero_standin(tmp_path: Path) -> None:
    s = standin(tmp_path, OMERO_STANDIN_REFUSED_GROUP="other-lab")
    amy = s.dropbox / "amy"
    (amy / "dropbox.toml").write_text('group = "other-lab"\n')
    with s:
        data = tif(amy / "a.tif")
        s.wait_state(data, "failed")
    assert s.omero_calls("omero") == []  # nothing imported anywhere
    shown = run_cli("status", "--state-dir", str(s.state))
    assert "group 'other-lab'" in shown.stdout and "not a member" in shown.stdout, shown.stdout
