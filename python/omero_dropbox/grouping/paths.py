"""Small path helpers of the grouper (hot: called for every given file)."""

from __future__ import annotations

import os

from omero_dropbox.journal import display_path


def norm_path(path: str) -> str:
    if os.sep == "/" and "//" not in path and "/." not in path and not path.endswith("/"):
        return path  # already normal (the common case: absolute paths from a walk)
    return os.path.normpath(path)


def last_token(name: str) -> str:
    """Lower-cased text after the last dot ("" without a dot): the suffix index key."""
    dot = name.rfind(".")
    return name[dot + 1 :].lower() if dot >= 0 else ""


def parent_dir(path: str) -> str:
    """``os.path.dirname`` of a normalised absolute path, without its generality (hot)."""
    at = path.rfind(os.sep)
    return path[:at] if at > 0 else (os.sep if at == 0 else "")


def shown(path: str) -> str:
    """A user's name for a reason: escaped, and never reading as "waiting" (a refused key
    file's reason is not to look like a held file's to operators grepping the log)."""
    return display_path(path).replace("waiting", "waitin\\x67")
