"""Whether a key file's references stay in the user's tree (see ``group(..., root=)``)."""

from __future__ import annotations

import os
import stat

from omero_dropbox.grouping.paths import shown

__all__ = ["Confinement", "outside_reason", "through_link_reason"]


class Confinement:
    """Whether a reference stays in the user's tree: lexically inside ``root``, and no
    symbolic link on any component below it (lstat each, cached for one grouping)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.normpath(os.path.abspath(root))
        self._prefix = self.root.rstrip(os.sep) + os.sep
        self._links: dict[str, str | None] = {self.root: None}

    def inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self._prefix)

    def is_link(self, path: str) -> bool:
        try:
            return stat.S_ISLNK(os.lstat(path).st_mode)
        except (OSError, ValueError):
            return False

    def link_on_way(self, directory: str) -> str | None:
        """The first symlink from root down to ``directory`` (included), or None."""
        chain: list[str] = []
        d = directory
        while d not in self._links and self.inside(d):
            chain.append(d)
            d = os.path.dirname(d)
        found = self._links.get(d)
        for d in reversed(chain):
            if found is None and self.is_link(d):
                found = d
            self._links[d] = found
        return found

    def problem(self, key_dir: str, ref: str) -> str | None:
        """Why ``ref`` (normalised) escapes the tree, or None."""
        if not self.inside(ref):
            return outside_reason(key_dir, ref)
        link = self.link_on_way(os.path.dirname(ref))
        return None if link is None else through_link_reason(key_dir, ref, link)

    def stepwise(self, where: str, value: str, shown: str) -> str | None:
        """Walk ``value`` (with ``..``) from ``where`` as the kernel would, component by
        component: every step must stay inside and not be a symlink (``shown``: the name
        as the key file wrote it, for the reason)."""
        ref = os.path.normpath(os.path.join(where, shown))
        cur = os.sep if value.startswith(os.sep) else where
        for part in value.split(os.sep):
            if part in ("", "."):
                continue
            cur = os.path.dirname(cur) if part == ".." else os.path.join(cur, part)
            if not self.inside(cur):
                return outside_reason(where, ref)
            if self.is_link(cur):
                return through_link_reason(where, ref, cur)
        return None


def outside_reason(key_dir: str, ref: str) -> str:
    rel = os.path.relpath(ref, key_dir)
    name = shown(rel if rel.count(".." + os.sep) <= 2 else ref)  # far away: absolute reads better
    return f"key file refers to {name}, outside the user's folder; not importing it"


def through_link_reason(key_dir: str, ref: str, link: str) -> str:
    return (
        f"key file refers to {shown(os.path.relpath(ref, key_dir))} through the symbolic link "
        f"{shown(os.path.relpath(link, key_dir))}, which may lead outside the user's folder; "
        "not importing it"
    )
