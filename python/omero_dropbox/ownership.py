"""Who owns a path: the OMERO user a file under a DropBox is imported as, and her folder.

The one place that answers it, for the engine, the Ice DropBox and the tools:

* the deepest configured watch directory holding the path decides (a named user's directory
  inside the all-users DropBox belongs to that named user);
* in all-users mode (``importUsers=default``) the first path component below the watch
  directory names the user, and a file directly in the watch directory is nobody's;
* a named user owns everything below her watch directory;
* a folder name that is no well-formed user name, or names no OMERO user, owns nothing.

Purely lexical and cheap (string work only, run for every event): links, file types and
file owners are checked at use (:mod:`omero_dropbox.at_use`, :mod:`omero_dropbox.admission`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from omero_dropbox._native import PathPolicy
from omero_dropbox.config import DropBoxConfig, UserMonitorConfig
from omero_dropbox.text import printable as display_path

__all__ = [
    "AnyUser",
    "NotOwned",
    "Owner",
    "Ownership",
    "UserDirectory",
    "UserList",
    "policy_for",
]

# A leading "-" would reach an importer command line (``--user {user}``) as an option.
_BAD_USER_NAME = re.compile(r"[\x00-\x1f\x7f/\\]|^[.\-]|^\s|\s$")


class UserDirectory:
    """Which OMERO user names exist. The default accepts every well-formed name."""

    def exists(self, name: str) -> bool:
        return True


class AnyUser(UserDirectory):
    pass


class UserList(UserDirectory):
    """A fixed set of user names (``--users amy,zak`` or a file with one name per line)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(n.strip() for n in names if n.strip())

    def exists(self, name: str) -> bool:
        return name in self.names


def policy_for(monitor: UserMonitorConfig) -> PathPolicy:
    """The path policy of one monitor: which files below its watch directory are reported."""
    return PathPolicy(
        monitor.watch_dir,
        mode=monitor.path_mode,
        ignore_sys_files=monitor.ignore_sys_files,
        whitelist=list(monitor.whitelist),
        blacklist=[Path(b) for b in monitor.blacklist],
    )


@dataclass(frozen=True)
class Owner:
    """The user a path is imported as, the monitor whose settings apply, and her folder."""

    user: str
    monitor: UserMonitorConfig
    root: str  # the user's folder: <watch dir>/<user> in all-users mode, else the watch dir
    policy: PathPolicy


@dataclass(frozen=True)
class NotOwned:
    """Why a path belongs to no user; ``user`` is the folder's name when it is a user name
    that does not exist (the skip is journaled against it)."""

    reason: str
    user: str | None = None


class Ownership:
    """Answers "who owns this path" for one configuration."""

    def __init__(self, config: DropBoxConfig, users: UserDirectory | None = None) -> None:
        self.config = config
        self.users = users or AnyUser()
        # Deepest watch directory first, as "dir/" strings: the first prefix that matches wins.
        deepest_first = sorted(config.users, key=lambda m: len(Path(m.watch_dir).parts), reverse=True)
        self._prefixes = [(str(m.watch_dir).rstrip(os.sep) + os.sep, m) for m in deepest_first]
        self._policies = {id(m): policy_for(m) for m in config.users}
        self._owners: dict[tuple[int, str], Owner] = {}

    def _below(self, path: str) -> tuple[UserMonitorConfig, str] | None:
        """The monitor whose watch directory holds ``path`` (the deepest), and the rest of the
        path below that directory; None outside every watch directory."""
        for prefix, monitor in self._prefixes:
            if path.startswith(prefix):
                return monitor, path[len(prefix) :]
        return None

    def monitor_of(self, path: str) -> UserMonitorConfig | None:
        """The monitor whose watch directory holds ``path`` (the deepest), or None."""
        found = self._below(path)
        return None if found is None else found[0]

    def owner(self, path: str) -> Owner | NotOwned:
        """Who owns the file at ``path`` (absolute, as the watchers report it)."""
        found = self._below(path)
        if found is None:
            return NotOwned("file outside every watched directory")
        monitor, rest = found
        if rest == ".." or rest.startswith(".." + os.sep) or (os.sep + ".." + os.sep) in rest:
            return NotOwned("path climbs out of the DropBox ('..')")
        if not monitor.is_default:
            return self._owner(monitor, monitor.import_user)
        name, sep, _below = rest.partition(os.sep)
        if not sep or not name:
            return NotOwned("file added outside user directories (directly in the DropBox root)")
        if _BAD_USER_NAME.search(name):
            return NotOwned(f"directory name '{display_path(name)}' is not a valid OMERO user name")
        if not self.users.exists(name):
            return NotOwned(f"user unknown: no OMERO user named '{display_path(name)}'", user=name)
        return self._owner(monitor, name)

    def _owner(self, monitor: UserMonitorConfig, user: str) -> Owner:
        found = self._owners.get((id(monitor), user))
        if found is None:
            watch_dir = str(monitor.watch_dir)
            root = os.path.join(watch_dir, user) if monitor.is_default else watch_dir
            found = Owner(user, monitor, root, self._policies[id(monitor)])
            self._owners[(id(monitor), user)] = found
        return found

    def of_user(self, user: str) -> Owner:
        """A user's folder and settings, by name: her own monitor if one names her, else the
        all-users one (for a queued import, whose files were owned when they were grouped)."""
        named = [m for m in self.config.users if m.import_user == user]
        default = [m for m in self.config.users if m.is_default]
        monitor = (named or default or list(self.config.users))[0]
        return self._owner(monitor, user)

    def policies(self) -> list[PathPolicy]:
        return list(self._policies.values())

    def reported(self, path: str) -> bool:
        """Whether a watcher reports a file at ``path`` once complete, by its path alone."""
        monitor = self.monitor_of(path)
        return monitor is not None and self._policies[id(monitor)].reports(path)

    def backlog_key(self, path: str) -> str:
        """Whose turn an event at ``path`` waits for: its user folder's name (string work)."""
        found = self._below(path)
        if found is None:
            return ""
        monitor, rest = found
        return monitor.import_user if not monitor.is_default else rest.split(os.sep, 1)[0]
