"""What a file and a fileset *are*, independent of their names, times and permissions.

File identity
    ``(st_dev, st_ino, size, fingerprint)`` where the fingerprint is a BLAKE2b
    digest of the size, the first 64 KiB and the last 64 KiB.  ``touch`` and
    ``chmod`` change none of these; a rename keeps the inode and the content.
    A file rewritten with different content gets a new fingerprint and so is a
    new version.

Fileset identity
    :func:`fileset_id` hashes the sorted identities of the members, so a renamed
    fileset keeps its id and is imported once.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from omero_dropbox.text import printable

__all__ = ["FINGERPRINT_CHUNK", "FileIdentity", "fd_identity", "file_identity", "fileset_id"]

FINGERPRINT_CHUNK = 64 * 1024


@dataclass(frozen=True)
class FileIdentity:
    """What a file *is*, independent of its name, mtime and permissions."""

    dev: int
    ino: int
    size: int
    fingerprint: str

    @property
    def key(self) -> str:
        """Stable text form, stored in the journal and hashed into fileset ids."""
        return f"{self.dev}:{self.ino}:{self.size}:{self.fingerprint}"


def file_identity(path: str) -> FileIdentity:
    """Stat and fingerprint ``path``, never through a link.

    Reads at most 128 KiB.  ``FileNotFoundError`` and ``PermissionError`` propagate
    unchanged; a path that is not a regular file (a symbolic link included) raises
    ``ValueError``.
    """
    # O_NONBLOCK so that a FIFO dropped into the tree cannot hang us in open(); O_NOFOLLOW so
    # that a link renamed over a file is never fingerprinted as its target (another user's file).
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{printable(path)} is a symbolic link") from e
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{printable(path)} is not a regular file")
        return fd_identity(fd, st)
    finally:
        os.close(fd)


def fd_identity(fd: int, st: os.stat_result) -> FileIdentity:
    """The identity of the regular file open at ``fd`` (``st`` is its ``fstat``)."""
    size = st.st_size
    h = hashlib.blake2b(digest_size=16)
    h.update(size.to_bytes(8, "little"))
    h.update(_read_at(fd, 0, FINGERPRINT_CHUNK))
    if size > FINGERPRINT_CHUNK:
        tail_at = max(FINGERPRINT_CHUNK, size - FINGERPRINT_CHUNK)
        h.update(_read_at(fd, tail_at, FINGERPRINT_CHUNK))
    return FileIdentity(st.st_dev, st.st_ino, size, h.hexdigest())


def _read_at(fd: int, offset: int, n: int) -> bytes:
    """Up to ``n`` bytes at ``offset`` (lseek + read: portable, unlike ``os.pread``)."""
    os.lseek(fd, offset, os.SEEK_SET)
    chunks = []
    while n > 0:
        b = os.read(fd, n)
        if not b:
            break
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def fileset_id(identities: Iterable[FileIdentity]) -> str:
    """Stable fileset id: a hash of the members' identities, order-independent.

    Only ``[0-9a-f]`` characters, so it is safe in command templates (``{fileset}``).
    """
    keys = sorted(i.key for i in identities)
    if not keys:
        raise ValueError("a fileset needs at least one member")
    return hashlib.blake2b("\n".join(keys).encode("ascii"), digest_size=16).hexdigest()
