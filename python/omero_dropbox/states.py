"""The states a file and a fileset go through, and the fileset state machine.

Values are the strings stored in the journal (``filesets.state``, ``files.state``, the
history), so they never change; the enums only give them one spelling in the code.
"""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, Enum):
        """``enum.StrEnum`` of Python 3.11: members are their values, ``str()`` included."""

        def __str__(self) -> str:
            return str(self.value)


__all__ = [
    "FILESET_STATES",
    "FILE_STATES",
    "TERMINAL_FILE_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "FileState",
    "FilesetState",
    "sql_list",
]


class FilesetState(StrEnum):
    """Where a fileset is: being debounced, in the queue, importing, or done one way or another."""

    WAITING = "waiting"
    QUEUED = "queued"
    IMPORTING = "importing"
    IMPORTED = "imported"
    FAILED = "failed"
    SKIPPED = "skipped"


class FileState(StrEnum):
    """A file's state: ``seen`` until it joins a fileset, then its fileset's state."""

    SEEN = "seen"
    WAITING = "waiting"
    QUEUED = "queued"
    IMPORTING = "importing"
    IMPORTED = "imported"
    FAILED = "failed"
    SKIPPED = "skipped"


FILE_STATES: tuple[FileState, ...] = tuple(FileState)
FILESET_STATES: tuple[FilesetState, ...] = tuple(FilesetState)
TERMINAL_STATES = frozenset({FilesetState.IMPORTED, FilesetState.FAILED, FilesetState.SKIPPED})
TERMINAL_FILE_STATES = frozenset({FileState.IMPORTED, FileState.FAILED, FileState.SKIPPED})

_W, _Q, _I = FilesetState.WAITING, FilesetState.QUEUED, FilesetState.IMPORTING
_OK, _F, _S = FilesetState.IMPORTED, FilesetState.FAILED, FilesetState.SKIPPED

#: Allowed fileset transitions.  ``imported`` is final: nothing moves a fileset
#: out of it, which is what guarantees "imported once".  ``failed``/``skipped`` may
#: be re-queued by an operator.  Self-transitions are allowed for ``waiting`` (the
#: debounce was revised) and ``queued`` (re-scheduled).
TRANSITIONS: dict[FilesetState, frozenset[FilesetState]] = {
    _W: frozenset({_W, _Q, _S, _F}),
    _Q: frozenset({_Q, _W, _I, _S, _F}),
    _I: frozenset({_OK, _Q, _F}),
    _OK: frozenset(),
    _F: frozenset({_Q}),
    _S: frozenset({_Q}),
}


def sql_list(states: tuple[str, ...]) -> str:
    """``('a', 'b')``: the states as an SQL list, for CHECK constraints and ``IN``."""
    return "(" + ", ".join(f"'{s!s}'" for s in states) + ")"
