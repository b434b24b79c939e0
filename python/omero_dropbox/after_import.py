"""What happens to a user's files once OMERO has them: ``keep``, ``move`` to an area, ``delete``.

Acquisition shares fill up, so a facility may have the dropped files moved to an
``Imported/`` area (keeping their path below the user's folder) or deleted, but only after a
successful import is journaled, and never a file that changed since it was imported. The
files sit in a folder the lab user controls, and the service may run as root, so each file
is acted on through a descriptor of its folder opened beneath the watch directory with no
link followed; the file is first renamed to a private dot-name in that folder (the watcher
never reports dot-files), its identity is checked through that name, and only then is it
moved or deleted, so a file swapped in under the old name is never taken for the imported
one. Every step is idempotent, so an action cut off (``kill -9``, power cut) is simply run
again: a file already moved or deleted is recognised and counted as done.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from omero_dropbox.at_use import FileRefused, below, open_dir_beneath
from omero_dropbox.choices import AfterImport
from omero_dropbox.journal import FileIdentity, display_path, fd_identity

__all__ = [
    "AfterImport",
    "FileOutcome",
    "UnsafeCombination",
    "apply_after_import",
    "check_after_import",
    "transfer_of",
]

_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20


class UnsafeCombination(ValueError):
    """Settings under which the after-import action would lose data or do nothing."""


def transfer_of(import_args: Sequence[str] | str) -> str | None:
    """The ``--transfer`` method in importer arguments (``None`` = upload, the default)."""
    args = shlex.split(import_args) if isinstance(import_args, str) else list(import_args)
    for i, arg in enumerate(args):
        if arg.startswith("--transfer="):
            return arg.split("=", 1)[1]
        if arg == "--transfer" and i + 1 < len(args):
            return args[i + 1]
    return None


def check_after_import(
    action: AfterImport, import_args: Sequence[str] | str, area: str | None, watch_dirs: Iterable[str]
) -> None:
    """Refuse, at start-up, an action that would lose data or conflict with the importer."""
    if action == "keep":
        return
    transfer = transfer_of(import_args)
    if transfer == "ln_s":
        raise UnsafeCombination(
            f"omero.fs.ng.afterImport={action} with --transfer=ln_s: OMERO keeps only a symbolic link "
            "to each dropped file, so moving or deleting it would break the image in OMERO; use "
            "--transfer=ln (hard link), cp or the default upload, or afterImport=keep"
        )
    if transfer in ("ln_rm", "cp_rm", "upload_rm"):
        raise UnsafeCombination(
            f"omero.fs.ng.afterImport={action} with --transfer={transfer}: the importer already removes "
            "the dropped files; set afterImport=keep"
        )
    if action == "move":
        if not area:
            raise UnsafeCombination(
                "omero.fs.ng.afterImport=move needs omero.fs.ng.importedArea, the folder the "
                "imported files are moved to"
            )
        real = os.path.realpath(area)
        for watch in watch_dirs:
            top = os.path.realpath(watch)
            if real == top or real.startswith(top.rstrip(os.sep) + os.sep):
                raise UnsafeCombination(
                    f"omero.fs.ng.importedArea={area} is inside the watched folder {watch}; "
                    "choose a folder outside every DropBox"
                )


@dataclass(frozen=True)
class FileOutcome:
    """What the action did to one file; ``done`` is False when the file was left in place."""

    path: str
    done: bool
    detail: str


def _held_name(fileset_id: str, name: str) -> str:
    # A dot-name the watcher never reports, unique per fileset and file name.
    return f".dropbox-after-import.{fileset_id[:16]}.{name}"[:255]


def _same(identity: FileIdentity, fd: int) -> bool:
    st = os.fstat(fd)
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and fd_identity(fd, st) == identity


def _act_on_one(
    action: AfterImport,
    fileset_id: str,
    path: str,
    identity: FileIdentity,
    trusted: str,
    root: str,
    area: str | None,
) -> FileOutcome:
    parts = below(trusted, path)
    below(root, path)  # and inside this user's folder
    dir_fd = open_dir_beneath(trusted, parts[:-1])
    name, held = parts[-1], _held_name(fileset_id, parts[-1])
    try:
        # 1. Take the file out of the user's way, under a private name (idempotent: a run
        #    cut off after this step finds it there).
        try:
            os.rename(name, held, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        # 2. Is the held file the one that was imported?
        try:
            fd = os.open(held, _FILE, dir_fd=dir_fd)
        except FileNotFoundError:
            return _already_done(action, path, identity, trusted, root, area)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                os.rename(held, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                return FileOutcome(path, False, "is now a symbolic link; left in place")
            raise
        try:
            if not _same(identity, fd):
                os.rename(held, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                return FileOutcome(path, False, "changed since it was imported; left in place")
            if action == "delete":
                os.unlink(held, dir_fd=dir_fd)
                return FileOutcome(path, True, "deleted")
            assert area is not None
            try:
                _move_into_area(fd, dir_fd, held, area, parts)
            except OSError:
                # Disk full or unwritable area: the file goes back under its own name, so
                # the scientist still sees it, and the caller retries the action later.
                with contextlib.suppress(FileNotFoundError):
                    os.rename(held, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                raise
            dest = os.path.join(area, *parts)
            return FileOutcome(path, True, f"moved to {display_path(dest)}")
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def _already_done(
    action: AfterImport, path: str, identity: FileIdentity, trusted: str, root: str, area: str | None
) -> FileOutcome:
    """Neither the name nor the held name is there: done before, or removed by the user."""
    if action == "move" and area is not None:
        dest = os.path.join(area, *below(trusted, path))
        try:
            st = os.stat(dest, follow_symlinks=False)
        except FileNotFoundError:
            return FileOutcome(path, False, "is gone (removed before the action ran)")
        if stat.S_ISREG(st.st_mode) and st.st_size == identity.size:
            return FileOutcome(path, True, f"moved to {display_path(dest)}")
    if action == "delete":
        return FileOutcome(path, True, "deleted")
    return FileOutcome(path, False, "is gone (removed before the action ran)")


def _move_into_area(src_fd: int, dir_fd: int, held: str, area: str, rel: Sequence[str]) -> None:
    """Move the held file to ``area/rel``: a rename, or a durable copy then unlink across devices."""
    dest_dir = open_dir_beneath(area, rel[:-1], create=True)
    try:
        try:
            os.rename(held, rel[-1], src_dir_fd=dir_fd, dst_dir_fd=dest_dir)
            os.fsync(dest_dir)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        tmp = f".{rel[-1]}.partial"[:255]
        out = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dest_dir
        )
        try:
            os.lseek(src_fd, 0, os.SEEK_SET)
            while chunk := os.read(src_fd, _COPY_CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
            os.fsync(out)
        finally:
            os.close(out)
        os.rename(tmp, rel[-1], src_dir_fd=dest_dir, dst_dir_fd=dest_dir)
        os.fsync(dest_dir)
        # Only now, with the copy durable in the area, does the original go.
        os.unlink(held, dir_fd=dir_fd)
    finally:
        os.close(dest_dir)


def apply_after_import(
    action: AfterImport,
    fileset_id: str,
    files: Sequence[tuple[str, FileIdentity]],
    *,
    trusted: str,
    root: str,
    area: str | None = None,
) -> list[FileOutcome]:
    """Apply ``action`` to an imported fileset's files (their journaled identities given).

    Safe to call again after an interruption. Per-file problems are outcomes, not
    exceptions; an ``OSError`` (disk full in the area, permissions) propagates so the caller
    can journal the action as failed and retry it.
    """
    if action == "keep":
        return [FileOutcome(p, False, "kept") for p, _ in files]
    if action == "move" and not area:
        raise UnsafeCombination("afterImport=move needs an area to move the files to")
    if action == "move" and area:
        os.makedirs(area, mode=0o755, exist_ok=True)  # the operator's folder, trusted
    out = []
    for path, identity in files:
        try:
            out.append(_act_on_one(action, fileset_id, path, identity, trusted, root, area))
        except FileRefused as exc:
            out.append(FileOutcome(path, False, f"{exc}; left in place"))
    return out
