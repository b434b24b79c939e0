"""What a content parser returns: the references a key file makes."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from omero_dropbox.grouping.limits import Budget
from omero_dropbox.grouping.paths import norm_path

__all__ = ["ContentRefs", "Parser"]


@dataclass
class ContentRefs:
    """What a content parser found: required members (each a tuple of alternatives),
    optional members, and a redirect (this file belongs to another key file).

    ``dotdot`` keeps (directory, name as written) for names with a ``..`` component: the
    normalised path hides a symlink the kernel would follow before the ``..``, so those
    are checked step by step. ``cacheable`` is False when the result depends on more
    than the file's own bytes (a regular-expression pattern lists a directory).
    """

    required: list[tuple[str, ...]] = field(default_factory=list)
    optional: list[str] = field(default_factory=list)
    redirect: str | None = None
    dotdot: list[tuple[str, str]] = field(default_factory=list)
    cacheable: bool = True

    def ref(self, where: str, value: str) -> str:
        """The normalised path of ``value`` written in a file of ``where``."""
        if ".." in value and ".." in value.replace("\\", "/").split("/"):
            self.dotdot.append((where, value))
        return norm_path(os.path.join(where, value))

    def size(self) -> int:
        return len(self.required) + len(self.optional)


Parser = Callable[[str, Budget, bool], ContentRefs]
"""(key file, budget, confined) -> references; ``confined`` when a user root is given."""
