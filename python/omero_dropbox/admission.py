"""Admission: whether a reported file joins its user's waiting pool, and why not.

For every READY event the engine asks :meth:`Admission.admit`, which decides in this order:

1. what the event makes stale (a deleted or moved-away path leaves the pools);
2. whether the monitor's ``eventTypes`` take this kind of event;
3. who owns the path (:mod:`omero_dropbox.ownership`); a path nobody owns is skipped;
4. whether the journal already has this very content (imported, failed, queued or importing),
   or an operator forgot it and it was not written since: then nothing is done;
5. the acceptance checks on the file itself: a regular file with one link, reached from the
   watch directory without a link on the way, owned as ``requireOwner`` wants;
6. whether it arrives after its fileset was queued without it (a late member).

Skips are journaled with a reason through the :class:`~omero_dropbox.skip_log.SkipLog`.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from omero_dropbox.at_use import FileRefused, check_beneath
from omero_dropbox.folder_settings import is_settings_file
from omero_dropbox.identity import file_identity
from omero_dropbox.journal import Journal
from omero_dropbox.ownership import NotOwned, Owner, Ownership
from omero_dropbox.skip_log import SkipLog
from omero_dropbox.states import FileState
from omero_dropbox.text import printable as display_path
from omero_dropbox.user_report import is_report
from omero_dropbox.watcher import ReadyEvent

__all__ = ["Admission", "Admitted", "Verdict"]

log = logging.getLogger("omero_dropbox.dropbox")

_EVENT_TYPE = {"created": "creation", "modified": "modification", "moved": "creation"}


@dataclass(frozen=True)
class Admitted:
    """A file that waits in ``owner``'s pool for its fileset to be due."""

    path: str
    owner: Owner


@dataclass(frozen=True)
class Verdict:
    """What one event does: paths that leave the pools, and the file that joins one."""

    gone: tuple[str, ...] = ()
    admitted: Admitted | None = None
    #: A folder settings file (dropbox.toml) of this owner changed, appeared or went away
    #: (``settings_path``): read, never imported.
    settings_of: Owner | None = None
    settings_path: str = ""


_NOTHING = Verdict()


class Admission:
    def __init__(
        self,
        journal: Journal,
        ownership: Ownership,
        skips: SkipLog,
        *,
        require_owner: bool,
        retry_rewritten: Callable[[str, str], None],
    ) -> None:
        self.journal = journal
        self.ownership = ownership
        self._skips = skips
        self._require_owner = require_owner
        self._retry_rewritten = retry_rewritten  # (path, fileset id): a failed file copied again
        self._forgotten_seen = 0  # forgotten files found unchanged in this run

    def admit(self, event: ReadyEvent) -> Verdict:
        if event.is_dir:
            return _NOTHING
        path = event.path
        if event.kind == "deleted":
            self._skips.forget(path)
            return self._settings_gone(path, Verdict(gone=(path,)))
        gone: tuple[str, ...] = ()
        if event.kind == "moved" and event.src_path is not None:
            self._skips.forget(event.src_path)
            gone = (event.src_path,)
            if is_settings_file(event.src_path) and not is_settings_file(path):
                return self._settings_gone(event.src_path, Verdict(gone=gone))
        monitor = self.ownership.monitor_of(path)
        if monitor is None or _EVENT_TYPE.get(event.kind) not in monitor.event_types:
            return Verdict(gone=gone)
        found = self.ownership.owner(path)
        if isinstance(found, NotOwned):
            self.skip(path, found.user, found.reason)
            return Verdict(gone=gone)
        if is_report(found.root, path):
            return Verdict(gone=gone)  # the service's own report to the user, never data
        if is_settings_file(path):
            return Verdict(gone=gone, settings_of=found, settings_path=path)
        if self.already_done(path):
            return Verdict(gone=gone)
        if not self.acceptable(found, path):
            # It may have been waiting as a good file that a link or FIFO was renamed over.
            return Verdict(gone=(*gone, path))
        late = self.journal.late_member_of(path)
        if late is not None:
            self.skip(
                path,
                found.user,
                f"arrived after its fileset {display_path(late.key)} (fileset={late.id}) was queued "
                f"without it and is now {late.state}; to import the whole fileset, `omero-dropbox "
                "forget` its key file and copy every file of it again",
            )
            return Verdict(gone=gone)
        return Verdict(gone=gone, admitted=Admitted(path, found))

    def _settings_gone(self, path: str, verdict: Verdict) -> Verdict:
        """A settings file deleted or renamed away: its folder's filesets are asked again."""
        if not is_settings_file(path):
            return verdict
        found = self.ownership.owner(path)
        if isinstance(found, NotOwned):
            return verdict
        return Verdict(gone=verdict.gone, settings_of=found, settings_path=path)

    def skip(self, path: str, user: str | None, reason: str) -> None:
        # The summary line counts by the reason's kind: the text before a file name in brackets.
        self._skips.skip(path, user, reason, summary=reason.split(" (", 1)[0])

    def forget(self, path: str) -> None:
        self._skips.forget(path)

    # ------------------------------------------------------------ already done

    def already_done(self, path: str) -> bool:
        """Whether the file at ``path`` needs nothing: the journal has it (imported, failed,
        queued or importing) with the same content, or an operator forgot it and it was not
        written again since.

        What keeps restarts, rescans, ``touch`` and ``chmod`` from importing twice: a file whose
        inode, size and mtime are as journaled is not read at all; one whose mtime changed is
        fingerprinted again, so a same-size rewrite with new content is a new version (imported),
        while a ``touch`` is not. A failed file written again (a new copy, same content) is
        retried at once.
        """
        rec = self.journal.file_state(path)
        if rec is None or rec.identity is None:
            tomb = self.journal.forgotten_as(path)  # a new file: no system call unless forgotten
            if tomb is None:
                return False
            try:
                st = os.lstat(path)
            except OSError:
                return False
            if (st.st_ino, st.st_size, st.st_mtime_ns) == tomb:
                self._forgotten_seen += 1
                # A restart finds every forgotten file again: a few lines, not one per file.
                log.log(
                    logging.INFO if self._forgotten_seen <= 20 else logging.DEBUG,
                    "Not importing %s: forgotten by an operator and not written since; "
                    "copy it again to import it",
                    display_path(path),
                )
                return True
            return False
        if rec.state not in (FileState.IMPORTED, FileState.FAILED, FileState.IMPORTING, FileState.QUEUED):
            return False
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if (st.st_ino, st.st_size) != (rec.identity.ino, rec.identity.size):
            return False
        seen = self.journal.seen_mtime(rec.id)
        if seen == st.st_mtime_ns:
            return True  # a rescan or restart: not even read
        try:
            now_fp = file_identity(path).fingerprint
        except (OSError, ValueError):
            return False  # the arrival checks say what is wrong with it
        if now_fp != rec.identity.fingerprint:
            log.info(
                "%s was rewritten in place with new content since it was %s; importing the new version",
                display_path(path),
                rec.state,
            )
            return False
        self.journal.set_seen_mtime(rec.id, st.st_mtime_ns)
        if rec.state == FileState.FAILED and seen is not None and rec.fileset_id is not None:
            self._retry_rewritten(path, rec.fileset_id)
        else:
            log.info(
                "%s is already %s with the same content; not importing it again",
                display_path(path),
                rec.state,
            )
        return True

    # ---------------------------------------------------------- the file itself

    def acceptable(self, owner: Owner, path: str) -> bool:
        """Security and sanity checks: never import through links or from another user's tree."""
        user = owner.user
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            self.skip(path, user, f"cannot stat: {exc.strerror}")
            return False
        if stat.S_ISLNK(st.st_mode):
            target = os.path.realpath(path)
            root = os.path.realpath(owner.root)
            where = "outside" if os.path.commonpath([target, root]) != root else "inside"
            self.skip(
                path,
                user,
                f"symbolic link to {display_path(target)} ({where} {user}'s DropBox); "
                "links are never imported, copy the file instead",
            )
            return False
        if not stat.S_ISREG(st.st_mode):
            self.skip(path, user, "not a regular file")
            return False
        if st.st_nlink > 1:
            self.skip(
                path,
                user,
                f"hard link ({st.st_nlink} links): other links may lie outside {user}'s DropBox; "
                "copy the file instead",
            )
            return False
        try:
            # No link on the way either: a directory above may be a link into another user's tree.
            check_beneath(str(owner.monitor.watch_dir), owner.root, path)
        except FileRefused as exc:
            self.skip(path, user, str(exc))
            return False
        except FileNotFoundError:
            return False
        except PermissionError:
            self.skip(path, user, "unreadable by the DropBox service (check permissions)")
            return False
        except OSError as exc:
            self.skip(path, user, f"cannot open: {exc.strerror}")
            return False
        if self._require_owner:
            try:
                dir_uid = os.stat(owner.root).st_uid
            except OSError:
                dir_uid = -1
            if st.st_uid != dir_uid:
                self.skip(
                    path, user, f"owner uid {st.st_uid} is not the owner of {owner.root} (requireOwner)"
                )
                return False
        return True

    def still_acceptable(self, user: str, path: str) -> bool:
        """Whether a waiting file is still there and still a plain file (one ``lstat``).

        A link or FIFO renamed over a waiting file leaves the pool with a journaled reason;
        a file that is gone leaves it silently. The full walk from the watch directory is
        made again when the fileset is submitted and right before and after its import.
        """
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            return True
        if stat.S_ISLNK(st.st_mode):
            what = "a symbolic link"
        elif stat.S_ISREG(st.st_mode):
            what = f"a file with {st.st_nlink} hard links"
        else:
            what = "something that is not a regular file"
        self._skips.forget(path)  # it was reported as waiting; this is news
        self.skip(path, user, f"replaced by {what} while it waited for import; links are never imported")
        return False
