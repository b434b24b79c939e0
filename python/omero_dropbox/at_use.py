"""Checks made on a user's file at the moment it is used, not only when it arrived.

A lab user controls every name under ``DropBox/<user>/``: between the moment a file is
reported and the moment the importer reads it, she can rename a symbolic link or a hard
link over it, or replace a directory on its path by a link to someone else's folder.  So
every use goes through :func:`open_beneath`, which opens the file the way
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` would: component by component from the
user's root, each one opened relative to the one above with ``O_NOFOLLOW``, so no symbolic
link anywhere on the way is followed and no ``..`` leaves the root; the file itself is opened
``O_NONBLOCK`` (a FIFO cannot hang us) and checked with ``fstat``: a regular file with one
link.  Holding directory descriptors makes the walk immune to renames made while it runs.

The user's root (``<watchDir>/<user>``) is checked too: only the watch directory, which the
operator configured, is trusted as it is (it may be a link, e.g. ``/OMERO/DropBox``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from omero_dropbox.journal import display_path

__all__ = ["FileRefused", "Found", "below", "check_beneath", "open_beneath", "open_dir_beneath"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_PATH", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# openat2(2) (Linux 5.6) does the whole walk in one call, refusing any symbolic link
# (RESOLVE_NO_SYMLINKS, magic links included) and any way out of the directory
# (RESOLVE_BENEATH): a file that opens this way is one the walk below would open, and it
# saves the walk's open/close per directory on every use. Anything it refuses is walked
# component by component as before, which says why.
_RESOLVE = 0x02 | 0x04 | 0x08  # RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH
_SYS_OPENAT2 = 437  # one number on every architecture since Linux 5.1 (but alpha)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _find_openat2() -> Callable[..., int] | None:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    return syscall


_openat2 = _find_openat2()
_HOW = _OpenHow(_FILE_FLAGS, 0, _RESOLVE)


def _open_resolved(dir_fd: int, parts: list[str]) -> int | None:
    """The file ``parts`` below ``dir_fd`` opened by one openat2, or None: then walk."""
    global _openat2
    if _openat2 is None:
        return None
    fd = _openat2(
        _SYS_OPENAT2, dir_fd, os.fsencode(os.sep.join(parts)), ctypes.byref(_HOW), ctypes.sizeof(_HOW)
    )
    if fd >= 0:
        return fd
    if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):
        _openat2 = None  # an older kernel, or a seccomp filter that refuses it: walk from now on
    return None


class FileRefused(Exception):
    """The file may not be used; ``str()`` is a reason for the journal and the log."""


@dataclass(frozen=True)
class Found:
    """What :func:`check_beneath` saw: enough to tell the same file from a swapped one."""

    dev: int
    ino: int
    size: int
    mtime_ns: int


def below(top: str, path: str) -> list[str]:
    """The components of ``path`` below ``top``, taken as written: no ``..``, ``.`` or empty one."""
    top = top.rstrip(os.sep) or os.sep
    prefix = top if top.endswith(os.sep) else top + os.sep
    if path == top:
        return []
    if not path.startswith(prefix):
        raise FileRefused(f"{display_path(path)} is not inside {display_path(top)}")
    parts = path[len(prefix) :].split(os.sep)
    if any(p in ("", ".", "..") for p in parts):
        raise FileRefused(f"{display_path(path)} is not a plain path inside {display_path(top)}")
    return parts


@contextlib.contextmanager
def open_beneath(trusted: str, root: str, path: str) -> Iterator[tuple[int, os.stat_result]]:
    """Open ``path``, which must lie in ``root``, without following any link below ``trusted``.

    ``trusted`` is the watch directory, ``root`` the user's folder in it (or the same
    directory for a named user). Yields ``(fd, fstat)`` of a regular file with exactly one
    link; raises :class:`FileRefused` with the reason otherwise (``FileNotFoundError`` and
    other ``OSError`` when it is gone or unreadable).
    """
    below(root, path)  # lexically inside the user's folder: no "..", no other user
    parts = below(trusted, path)
    if not parts:
        raise FileRefused(f"{display_path(path)} is the watch directory itself")
    dir_fd = os.open(trusted, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fd = _open_resolved(dir_fd, parts)
    try:
        for i, part in enumerate(parts[:-1] if fd is None else ()):
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                _refuse_component(exc, trusted, parts[: i + 1], dir_fd, part)
                raise
            os.close(dir_fd)
            dir_fd = next_fd
        if fd is None:
            try:
                fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                _refuse_component(exc, trusted, parts, dir_fd, parts[-1])
                raise
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(f"{display_path(path)} is not a regular file")
        if st.st_nlink != 1:
            raise FileRefused(
                f"{display_path(path)} has {st.st_nlink} hard links (other links may lie outside the "
                "user's folder); copy the file instead"
            )
        yield fd, st
    finally:
        os.close(fd)


def _refuse_component(exc: OSError, trusted: str, parts: list[str], dir_fd: int, name: str) -> None:
    """Turn "a link (or a FIFO, socket...) where a directory or file should be" into :class:`FileRefused`."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return  # gone, or unreadable: the caller's OSError says so
    where = display_path(os.path.join(trusted, *parts))
    if stat.S_ISLNK(st.st_mode):
        raise FileRefused(
            f"{where} is a symbolic link; links are never followed (copy the files instead)"
        ) from exc
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        raise FileRefused(f"{where} is not a regular file") from exc


def check_beneath(trusted: str, root: str, path: str) -> Found:
    """:func:`open_beneath`, keeping only what identifies the file."""
    with open_beneath(trusted, root, path) as (_fd, st):
        return Found(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


# Not O_PATH (unlike the walk above): the caller creates, renames and fsyncs through it.
_DIR_FD_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir_beneath(top: str, parts: Sequence[str], create: bool = False) -> int:
    """A descriptor of ``top/parts...``, walked without following links (created if asked:
    the operator's folders only). A link or non-folder on the way is :class:`FileRefused`
    when not creating, an ``OSError`` when creating."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                nxt = os.open(part, _DIR_FD_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and not create:
                    raise FileRefused(
                        f"{display_path(os.path.join(top, *parts))}: {part} is not a plain folder"
                    ) from exc
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd
