"""After-import actions on real files: move (same and other filesystem), delete, the
changed-file and swapped-file refusals, unsafe settings, and resuming after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from omero_dropbox.after_import import (
    UnsafeCombination,
    apply_after_import,
    check_after_import,
    transfer_of,
)
from omero_dropbox.journal import file_identity

FID = "0123456789abcdef0123456789abcdef"


def dropped(tmp_path: Path, *names: str, size: int = 1000) -> tuple[str, str, list[str]]:
    watch = tmp_path / "DropBox"
    root = watch / "amy"
    paths = []
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
        paths.append(str(p))
    return str(watch), str(root), paths


def test_move_keeps_the_path_below_the_watch_dir_and_leaves_nothing_behind(tmp_path: Path) -> None:
    watch, root, paths = dropped(tmp_path, "run42/a.ics", "run42/a.ids")
    ids = [(p, file_identity(p)) for p in paths]
    area = tmp_path / "Imported"
    out = apply_after_import("move", FID, ids, trusted=watch, root=root, area=str(area))
    assert [o.done for o in out] == [True, True]
    assert sorted(os.listdir(os.path.join(root, "run42"))) == []
    assert (area / "amy" / "run42" / "a.ics").stat().st_size == 1000


def test_move_across_filesystems_copies_durably_then_removes(tmp_path: Path) -> None:
    watch, root, paths = dropped(tmp_path, "big.tif", size=3 << 20)
    original = Path(paths[0]).read_bytes()
    with tempfile.TemporaryDirectory(dir="/dev/shm") as area:
        assert os.stat(area).st_dev != os.stat(root).st_dev
        out = apply_after_import(
            "move", FID, [(paths[0], file_identity(paths[0]))], trusted=watch, root=root, area=area
        )
        assert out[0].done, out
        assert Path(area, "amy", "big.tif").read_bytes() == original
        assert os.listdir(root) == []
        assert not any(n.endswith(".partial") for n in os.listdir(Path(area, "amy")))


def test_delete_removes_only_the_imported_files(tmp_path: Path) -> None:
    watch, root, paths = dropped(tmp_path, "a.tif", "b.tif")
    out = apply_after_import("delete", FID, [(paths[0], file_identity(paths[0]))], trusted=watch, root=root)
    assert out[0].done
    assert os.listdir(root) == ["b.tif"]


def test_a_file_changed_since_the_import_is_left_in_place(tmp_path: Path) -> None:
    watch, root, paths = dropped(tmp_path, "a.tif")
    identity = file_identity(paths[0])
    Path(paths[0]).write_bytes(os.urandom(1000))  # rewritten after the import
    out = apply_after_import("delete", FID, [(paths[0], identity)], trusted=watch, root=root)
    assert not out[0].done and "changed since it was imported" in out[0].detail
    assert os.listdir(root) == ["a.tif"]


def test_a_different_file_swapped_in_under_the_name_is_not_deleted(tmp_path: Path) -> None:
    watch, root, paths = dropped(tmp_path, "a.tif", "other.tif")
    identity = file_identity(paths[0])
    os.rename(paths[1], paths[0])  # same name, another file
    out = apply_after_import("delete", FID, [(paths[0], identity)], trusted=watch, root=root)
    assert not out[0].done
    assert os.listdir(root) == ["a.tif"]


def test_a_link_to_another_users_file_is_never_moved_or_followed(tmp_path: Path) -> None:
    watch, root, paths = dropped(tmp_path, "a.tif")
    identity = file_identity(paths[0])
    zak = Path(watch, "zak")
    zak.mkdir()
    secret = zak / "secret.tif"
    secret.write_bytes(b"zak")
    os.unlink(paths[0])
    os.symlink(secret, paths[0])
    out = apply_after_import("delete", FID, [(paths[0], identity)], trusted=watch, root=root)
    assert not out[0].done and "symbolic link" in out[0].detail
    assert secret.read_bytes() == b"zak" and os.path.islink(paths[0])


def test_a_folder_replaced_by_a_link_is_refused(tmp_path: Path) -> None:
    watch, root, paths = dropped(tmp_path, "run/a.tif")
    identity = file_identity(paths[0])
    elsewhere = tmp_path / "elsewhere"
    os.rename(os.path.join(root, "run"), elsewhere)
    os.symlink(elsewhere, os.path.join(root, "run"))
    out = apply_after_import("delete", FID, [(paths[0], identity)], trusted=watch, root=root)
    assert not out[0].done and "not a plain folder" in out[0].detail
    assert (elsewhere / "a.tif").exists()


def test_running_again_after_it_finished_counts_the_files_as_done(tmp_path: Path) -> None:
    watch, root, paths = dropped(tmp_path, "a.tif")
    ids = [(paths[0], file_identity(paths[0]))]
    area = str(tmp_path / "Imported")
    apply_after_import("move", FID, ids, trusted=watch, root=root, area=area)
    again = apply_after_import("move", FID, ids, trusted=watch, root=root, area=area)
    assert again[0].done


_MOVER = """
import os, sys
from omero_dropbox import after_import
from omero_dropbox.journal import file_identity
watch, root, area, path = sys.argv[1:5]
ident = file_identity(path)
real_write = os.write
def slow_write(fd, data):
    n = real_write(fd, data[: 64 << 10])
    if fd > 2:
        sys.stdout.write("copying\\n"); sys.stdout.flush()
        import time; time.sleep(0.05)
    return n
after_import.os.write = slow_write
sys.stdout.write(repr(ident) + "\\n"); sys.stdout.flush()
after_import.apply_after_import("move", "%s", [(path, ident)], trusted=watch, root=root, area=area)
"""


def test_a_move_killed_mid_copy_resumes_and_loses_nothing(tmp_path: Path) -> None:
    watch, root, paths = dropped(tmp_path, "run/big.tif", size=4 << 20)
    original = Path(paths[0]).read_bytes()
    identity = file_identity(paths[0])
    with tempfile.TemporaryDirectory(dir="/dev/shm") as area:
        proc = subprocess.Popen(
            [sys.executable, "-c", _MOVER % FID, watch, root, area, paths[0]],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        copying = 0
        for line in proc.stdout:
            copying += line == "copying\n"
            if copying >= 3 or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert copying >= 3, "the mover never started copying"
        # Cut off mid-copy: the original is still there (under its held name), the area has
        # only a partial file.
        assert not Path(area, "amy", "run", "big.tif").exists()
        out = apply_after_import("move", FID, [(paths[0], identity)], trusted=watch, root=root, area=area)
        assert out[0].done, out
        assert Path(area, "amy", "run", "big.tif").read_bytes() == original
        assert os.listdir(os.path.join(root, "run")) == []


@pytest.mark.parametrize(
    ("action", "args", "area", "message"),
    [
        ("delete", "--transfer=ln_s", None, "would break the image in OMERO"),
        ("move", ["--transfer", "ln_s"], "/srv/Imported", "would break the image in OMERO"),
        ("delete", "--transfer=ln_rm", None, "already removes"),
        ("move", "", None, "needs omero.fs.ng.importedArea"),
        ("move", "", "/srv/DropBox/Imported", "inside the watched folder"),
    ],
)
def test_unsafe_combinations_are_refused_at_start_up(
    action: str, args: str | list[str], area: str | None, message: str
) -> None:
    with pytest.raises(UnsafeCombination, match=message):
        check_after_import(action, args, area, ["/srv/DropBox"])  # type: ignore[arg-type]


def test_safe_combinations_pass() -> None:
    check_after_import("delete", "--transfer=ln", None, ["/srv/DropBox"])
    check_after_import("move", "", "/srv/Imported", ["/srv/DropBox"])
    check_after_import("keep", "--transfer=ln_s", None, ["/srv/DropBox"])
    assert transfer_of("-T Dataset:name:x --transfer ln_s") == "ln_s"
    assert transfer_of([]) is None


def test_an_area_that_cannot_be_written_leaves_the_file_visible_under_its_name(tmp_path: Path) -> None:
    watch, root, paths = dropped(tmp_path, "a.tif")
    area = tmp_path / "Imported"
    area.mkdir()
    (area / "amy").write_text("a file where the user's folder in the area should be")
    with pytest.raises(OSError):
        apply_after_import(
            "move", FID, [(paths[0], file_identity(paths[0]))], trusted=watch, root=root, area=str(area)
        )
    assert os.listdir(root) == ["a.tif"]
