"""The scientist's report in her folder: content, privacy, size bound, and safe writing
into a folder she controls (real files; the service may run as root)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from omero_dropbox.at_use import FileRefused
from omero_dropbox.user_report import REPORT_JSON, REPORT_TEXT, ReportEntry, is_report, render, write_report

NOW = 1_780_000_000.0


def folders(tmp_path: Path) -> tuple[str, str]:
    watch = tmp_path / "DropBox"
    (watch / "amy" / "run42").mkdir(parents=True)
    (watch / "zak").mkdir()
    return str(watch), str(watch / "amy")


def entries(root: str, watch: str) -> list[ReportEntry]:
    return [
        ReportEntry(
            "imported",
            f"{root}/run41/a.tif",
            1,
            NOW - 3600,
            link="https://omero.example/webclient/?show=image-7",
        ),
        ReportEntry(
            "waiting", f"{root}/run42/cells.ics", 1, NOW - 60, "waiting for cells.ids", until=NOW + 540
        ),
        ReportEntry(
            "failed",
            f"{root}/run40/bad.tif",
            1,
            NOW - 7200,
            f"same content as {watch}/zak/private/secret.tif, which is already imported",
        ),
    ]


def test_report_lists_each_state_with_what_the_scientist_needs(tmp_path: Path) -> None:
    watch, root = folders(tmp_path)
    write_report("amy", entries(root, watch), trusted=watch, root=root, now=NOW)
    text = Path(root, REPORT_TEXT).read_text()
    doc = json.loads(Path(root, REPORT_JSON).read_text())
    # Most urgent first: failed, then waiting, then imported.
    assert [r["state"] for r in doc["filesets"]] == ["failed", "waiting", "imported"]
    assert (
        text.index("[FAILED] run40/bad.tif")
        < text.index("[WAITING] run42/cells.ics")
        < text.index("[IMPORTED]")
    )
    assert "waiting for cells.ids" in text and "waits until" in text
    assert "in OMERO: https://omero.example/webclient/?show=image-7" in text
    assert "what to do: fix what the reason says" in text
    assert doc["counts"] == {"failed": 1, "waiting": 1, "importing": 0, "queued": 0, "imported": 1}


def test_no_other_users_names_appear_in_the_report(tmp_path: Path) -> None:
    watch, root = folders(tmp_path)
    write_report("amy", entries(root, watch), trusted=watch, root=root, now=NOW)
    for name in (REPORT_TEXT, REPORT_JSON):
        body = Path(root, name).read_text()
        assert "zak" not in body and "secret" not in body and watch not in body
        assert "<another folder>" in body


def test_report_is_bounded_in_size_and_says_what_it_left_out(tmp_path: Path) -> None:
    watch, root = folders(tmp_path)
    many = [ReportEntry("imported", f"{root}/r/{i:06}.tif", 1, NOW - i, "x" * 200) for i in range(5000)]
    text, data = render("amy", many, trusted=watch, root=root, now=NOW, max_bytes=64 << 10)
    assert len(text.encode()) <= 64 << 10 and len(data.encode()) <= 64 << 10
    assert "older filesets not listed" in text
    assert "r/000000.tif" in text  # the newest are kept


def test_a_link_planted_under_the_report_name_is_replaced_not_written_through(tmp_path: Path) -> None:
    watch, root = folders(tmp_path)
    victim = tmp_path / "etc-passwd"
    victim.write_text("root:x:0:0\n")
    os.symlink(victim, os.path.join(root, REPORT_TEXT))
    write_report("amy", entries(root, watch), trusted=watch, root=root, now=NOW)
    assert victim.read_text() == "root:x:0:0\n"
    assert not os.path.islink(os.path.join(root, REPORT_TEXT))
    assert "[FAILED]" in Path(root, REPORT_TEXT).read_text()


def test_a_user_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    watch = tmp_path / "DropBox"
    watch.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, watch / "amy")
    with pytest.raises(FileRefused, match="plain folder"):
        write_report("amy", [], trusted=str(watch), root=str(watch / "amy"), now=NOW)
    assert list(elsewhere.iterdir()) == []


def test_a_directory_under_the_report_name_fails_cleanly_and_leaves_no_temp_file(tmp_path: Path) -> None:
    watch, root = folders(tmp_path)
    os.mkdir(os.path.join(root, REPORT_TEXT))
    with pytest.raises(OSError):
        write_report("amy", entries(root, watch), trusted=watch, root=root, now=NOW)
    assert sorted(os.listdir(root)) == [REPORT_TEXT, "run42"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the folder another owner")
def test_the_report_belongs_to_the_folders_owner(tmp_path: Path) -> None:
    watch, root = folders(tmp_path)
    os.chown(root, 12345, 12345)
    write_report("amy", [], trusted=watch, root=root, now=NOW)
    for name in (REPORT_TEXT, REPORT_JSON):
        st = os.stat(os.path.join(root, name))
        assert (st.st_uid, st.st_gid) == (12345, 12345)


def test_is_report_matches_only_the_top_folder() -> None:
    assert is_report("/d/amy", "/d/amy/DROPBOX-STATUS.txt")
    assert is_report("/d/amy/", "/d/amy/DROPBOX-STATUS.json")
    assert not is_report("/d/amy", "/d/amy/run/DROPBOX-STATUS.txt")
    assert not is_report("/d/amy", "/d/amy/scan.tif")
